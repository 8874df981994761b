"""The extractive answer a RAG gives without a capable model (serving/rag_extract.py), with the RAG's real
embedding model over the demo's passages: the question gets the sentence that answers it, cited with the
passage it comes from, and no passage it did not draw on."""

from __future__ import annotations

import re

import pytest

from mlyard.core.specs.rag import RagSpec
from mlyard.serving.rag_extract import NOTE, extract, sentences

PASSAGES = [  # as the demo's handbook retrieves them for "How long are backups kept?" (best first)
    "Yardstick security overview.\nBackups of Yardstick are encrypted with AES-256 and kept for 35 days.",
    "An API token of Yardstick expires after 90 days. Rotate a token with the `yard token rotate` command; the old "
    "token keeps working for one hour.",
    "Yardstick release notes. Version 4.2 added streaming answers. Version 4.1 made uploads resumable.",
]


@pytest.fixture(scope="module")
def encode():
    from mlyard.tasks.embeddings import embedder

    return embedder(RagSpec.model_validate({"name": "r", "path": "/tmp"}).embedding).encode


def test_the_demos_question_gets_the_sentence_that_answers_it(encode):
    answer = extract("How long are backups kept?", PASSAGES, encode)
    first = answer.split(" [")[0]
    assert first == "Backups of Yardstick are encrypted with AES-256 and kept for 35 days.", answer
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", answer)}
    assert 1 in cited and cited <= {1, 2, 3} and answer.endswith(NOTE)
    token = extract("How do I rotate a token?", PASSAGES, encode)
    assert token.startswith("Rotate a token with the `yard token rotate` command") and "[2]" in token, token


def test_nothing_close_enough_is_said_so_and_cites_nothing(encode):
    answer = extract("What is the capital of France?", PASSAGES[2:], encode)
    assert answer.startswith("None of the retrieved passages") and not re.search(r"\[\d+\]", answer)
    assert sentences("One. Two!\nThree? ") == ["One.", "Two!", "Three?"]


def test_a_sentence_far_behind_the_best_is_not_quoted(encode):
    """The demo once quoted the token's expiry after the backups' 35 days: close to nothing asked."""
    answer = extract("How long are backups kept?", PASSAGES, encode)
    assert "[2]" not in answer and "90 days" not in answer, answer
