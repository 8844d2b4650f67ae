"""Splitting a question's exclusions off its retrieval query."""

from __future__ import annotations

import pytest

from rag_service.retrieve.exclusions import Exclusions, split_exclusions


@pytest.mark.parametrize(
    ("question", "positive", "excluded"),
    [
        ("Aaron's profile, but don't mention Moses.", "Aaron's profile.", ("Moses",)),
        (
            "Provide an introduction to Aalborg Municipality without Denmark.",
            "Provide an introduction to Aalborg Municipality.",
            ("Denmark",),
        ),
        (
            "Examine justice in To Kill a Mockingbird, excluding the trial of Tom Robinson.",
            "Examine justice in To Kill a Mockingbird.",
            ("the trial of Tom Robinson",),
        ),
        (
            "How did Kanojo (excluding its OVA adaptations) gain recognition?",
            "How did Kanojo gain recognition?",
            ("its OVA adaptations",),
        ),
        (
            "Excluding the Nobel Prize, what is Alexis Carrel known for?",
            "what is Alexis Carrel known for?",
            ("the Nobel Prize",),
        ),
        (
            "Tell me about Rome, not including the Vatican, and how did it grow?",
            "Tell me about Rome, and how did it grow?",
            ("the Vatican",),
        ),
        (
            "Summarise the war without mentioning casualties; then list the treaties.",
            "Summarise the war; then list the treaties.",
            ("casualties",),
        ),
        (
            "What is X other than Y? Apart from Z, what else?",
            "What is X? what else?",
            ("Y", "Z"),
        ),
        ("Describe Rome, except the Vatican.", "Describe Rome.", ("the Vatican",)),
    ],
)
def test_exclusions_are_cut_from_the_retrieval_query(
    question: str, positive: str, excluded: tuple[str, ...]
) -> None:
    assert split_exclusions(question) == Exclusions(positive, excluded)


@pytest.mark.parametrize(
    "question",
    [
        "How does try except work in Python?",  # bare "except" is Python's
        "Why don't people use COBOL any more?",  # "don't" without a cue verb
        "Without Moses",  # nothing would be left to search for
        "What is the capital of France?",
        "without",
    ],
)
def test_questions_without_a_usable_exclusion_are_searched_as_asked(question: str) -> None:
    assert split_exclusions(question) == Exclusions(question)
