"""Shared fixtures and fakes of the method tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarks.backends.zoo import resolve_model_dir
from methods import BenchError, Completion


@pytest.fixture(scope="module")
def small_dir() -> Path:
    try:
        return resolve_model_dir("zoo-small")
    except BenchError:
        pytest.skip("zoo-small weights are not present")


class VocabBox:
    """A black box that only lists a vocabulary (fit makes no calls)."""

    model = "vocab-box"
    context_length = 192

    def __init__(self, vocab: list[str], capabilities: Sequence[str] = ("next_token_logits",)):
        self._vocab = vocab
        self.capabilities = frozenset(capabilities)

    def vocabulary(self) -> list[str]:
        return self._vocab

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"fit called the black box's {name}")


def as_an_api_answers(text: str, *, max_tokens: int, stop: Sequence[str] | None) -> Completion:
    """``text`` as an API returns it under ``max_tokens`` (a token a word here) and ``stop``:
    cut before the earliest stop sequence (which is not returned), else at the length."""
    ends = [i for i in (text.find(s) for s in stop or ()) if i >= 0]
    if ends:
        return Completion(text[: min(ends)], finish_reason="stop")
    words = text.split(" ")
    if len(words) > max_tokens:
        return Completion(" ".join(words[:max_tokens]), finish_reason="length")
    return Completion(text)
