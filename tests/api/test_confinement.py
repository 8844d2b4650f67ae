"""A token holder cannot turn the server's files against it: folder sources only under the
operator's roots (symlinks resolved, never the data dir), uploads only into managed storage,
downloads only of indexed items, no control characters in keys or ids."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import unquote

import httpx

from rag_service.config import Settings
from tests.api.test_legacy import AUTH, assert_error, client, database_url  # noqa: F401

API = "/accounts/acc/ai-search/instances"


async def create(http: httpx.AsyncClient, body: dict[str, object]) -> httpx.Response:
    return await http.post(API, json=body, headers=AUTH)


async def test_folders_outside_the_roots_and_the_data_dir_are_refused(
    client: httpx.AsyncClient,  # noqa: F811
    settings: Settings,
    tmp_path: Path,
) -> None:
    outside = {"id": "etc", "source": "/etc", "source_params": {"include_items": ["passwd"]}}
    assert_error(await create(client, outside), 400, "not one this server may read")
    assert_error(await create(client, {"id": "d", "source": str(settings.data_dir)}), 400, "RAGD")
    inner = settings.data_dir / "instances"
    assert_error(await create(client, {"id": "i", "source": str(inner)}), 400, "may read")
    # A root that holds the data dir: the folder above it would index the token and database.
    assert_error(await create(client, {"id": "p", "source": str(tmp_path)}), 400, "may read")
    link = tmp_path / "innocent"
    link.symlink_to("/etc")
    assert_error(await create(client, {"id": "l", "source": str(link)}), 400, "may read")
    listed = (await client.get(API, headers=AUTH)).json()["result"]
    assert {i["id"] for i in listed} == {"default"}
    put = await client.put(f"{API}/default", json={"source": "/etc"}, headers=AUTH)
    assert_error(put, 400, "may read")
    # Inside a root it is fine; a bucket name with type r2 stays a bucket name.
    (tmp_path / "docs").mkdir()
    assert (await create(client, {"id": "ok", "source": str(tmp_path / "docs")})).status_code == 200
    r2 = await create(client, {"id": "bucket", "source": "my-bucket", "type": "r2"})
    assert r2.status_code == 200 and r2.json()["result"]["source"] == "my-bucket"


async def test_a_symlink_out_of_a_source_folder_is_not_read(
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    docs = tmp_path / "linked"
    docs.mkdir()
    (docs / "notes.md").write_text("Notes about the harvest.")
    (docs / "passwd.txt").symlink_to("/etc/passwd")
    assert (await create(client, {"id": "linked", "source": str(docs)})).status_code == 200
    job = await client.post(f"{API}/linked/jobs", headers=AUTH)
    assert job.status_code == 200, job.text
    for _ in range(600):  # up to 30 s
        items = (await client.get(f"{API}/linked/items", headers=AUTH)).json()["result"]
        if items and all(i["status"] == "completed" for i in items):
            break
        await asyncio.sleep(0.05)
    assert [i["key"] for i in items] == ["notes.md"]


async def test_uploads_go_only_to_managed_storage(
    client: httpx.AsyncClient,  # noqa: F811
    settings: Settings,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "users-folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    assert (await create(client, {"id": "mine", "source": str(folder)})).status_code == 200
    upload = await client.post(
        f"{API}/mine/items", files={"file": ("keep.txt", b"overwritten")}, headers=AUTH
    )
    assert_error(upload, 400, "uploads go to instances created without a source")
    assert (folder / "keep.txt").read_text() == "mine" and sorted(os.listdir(folder)) == [
        "keep.txt"
    ]
    # A managed instance: a key through a symlinked folder in its area is refused.
    assert (await create(client, {"id": "managed"})).status_code == 200
    area = settings.instance_dir("managed") / "uploads"
    (area / "out").symlink_to(tmp_path)
    sneaky = await client.post(
        f"{API}/managed/items", files={"file": ("out/evil.txt", b"x")}, headers=AUTH
    )
    assert_error(sneaky, 400, "out of the upload area")
    assert not (tmp_path / "evil.txt").exists()
    for name in ("a\nb.txt", "tab\there.txt", "rtl\u202egnp.txt", "nul\x00.txt"):
        # The part header written by hand: clients percent-encode such names, attackers not.
        body = (
            f'--b\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: text/plain\r\n\r\nx\r\n--b--\r\n"
        ).encode()
        headers = {**AUTH, "content-type": "multipart/form-data; boundary=b"}
        bad = await client.post(f"{API}/managed/items", content=body, headers=headers)
        assert_error(bad, 400, "control and format characters")


async def test_downloads_name_the_file_exactly_and_only_indexed_items(
    client: httpx.AsyncClient,  # noqa: F811
) -> None:
    assert (await create(client, {"id": "reports"})).status_code == 200
    items = f"{API}/reports/items"
    done = await client.post(
        items,
        files={"file": ("報告.txt", "年次報告: 売上は増えた。".encode())},
        data={"wait_for_completion": "true"},
        headers=AUTH,
    )
    assert done.status_code == 200, done.text
    item = done.json()["result"]
    download = await client.get(f"{items}/{item['id']}/download", headers=AUTH)
    assert download.status_code == 200, download.text
    assert download.headers["content-type"].startswith("text/plain")
    disposition = download.headers["content-disposition"]
    assert unquote(disposition.split("filename*=UTF-8''")[1]) == "報告.txt"
    broken = await client.post(
        items,
        files={"file": ("broken.pdf", b"not a pdf")},
        data={"wait_for_completion": "true"},
        headers=AUTH,
    )
    assert broken.json()["result"]["status"] == "error"
    refused = await client.get(f"{items}/{broken.json()['result']['id']}/download", headers=AUTH)
    assert_error(refused, 400, "only indexed items")


async def test_instance_ids_are_matched_whole(client: httpx.AsyncClient) -> None:  # noqa: F811
    assert_error(await create(client, {"id": "auditnl\n"}), 400, "instance id")
    assert_error(await create(client, {"id": "a\u0000b"}), 400, "instance id")
