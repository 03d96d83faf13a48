"""Answer extractors and split helpers shared by several tasks (not a task itself)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.tasks.base import DataError, Split
from methods.base import Example
from methods.registry import BenchError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# A choice letter at the start: "B", "B.", "(B)", "B) ...", "Answer: B", "The answer is (B).".
# The letter must be upper case and stand alone, so "A lot of ..." or "E.T. is ..." is no letter.
_LETTER = re.compile(
    r"(?i:(?:the\s+)?(?:correct\s+|best\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?\s*:?\s*)?"
    r"\(?([A-Z])(?:\)|[.:,](?=\s|$)|(?=\s*$)|(?=\s*\n))"
)


def hash_split(key: str, *, train: float = 0.6, dev: float = 0.1) -> Split:
    """The split of an example by a stable hash of ``key``: train, dev or test (the rest)."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12
    return "train" if bucket < train else "dev" if bucket < train + dev else "test"


def extract_choice(text: str, choices: Sequence[str]) -> str | None:
    """The letter of the choice that ``text`` answers with, or None.

    ``text`` may start with a choice's own text (the longest match wins, matched case-sensitively
    first since choices like "Aa"/"aa" differ only in case) or with a letter, in forms such as
    "B", "B.", "(B)", "Answer: B". Letters beyond the last choice do not count.
    """
    text = text.strip().strip("*").strip()
    for fold in (False, True):
        index = _match_choice_text(text, choices, fold=fold)
        if index is not None:
            return LETTERS[index]
    match = _LETTER.match(text)
    if match and LETTERS.index(match.group(1)) < len(choices):
        return match.group(1)
    return None


def _match_choice_text(text: str, choices: Sequence[str], *, fold: bool) -> int | None:
    def norm(s: str) -> str:
        s = " ".join(s.split())
        return s.casefold() if fold else s

    out = norm(text)
    best: list[tuple[int, int]] = []  # (length, index) of choices that ``text`` starts with
    for i, choice in enumerate(choices):
        c = norm(choice).rstrip(".")
        if c and out.startswith(c) and (len(out) == len(c) or not out[len(c)].isalnum()):
            best.append((len(c), i))
    if not best:
        return None
    longest = max(best)[0]
    winners = {i for n, i in best if n == longest}
    return winners.pop() if len(winners) == 1 else None


#: the seeds of the LM-BFF / RLPrompt 16-shot splits.
FEWSHOT_SEEDS = (13, 21, 42, 87, 100)
#: `Task.options` entry of the tasks with LM-BFF / RLPrompt 16-shot splits.
FEWSHOT_SEED_OPTION = "which 16-shot train/dev split: 13, 21, 42 (default), 87 or 100"
_WORD = re.compile(r"[a-z]+")


def fewshot_seed(task: str, options: Mapping[str, Any]) -> int:
    """The validated ``fewshot_seed`` option (default 42)."""
    seed = options.get("fewshot_seed", 42)
    if str(seed) not in {str(s) for s in FEWSHOT_SEEDS}:
        valid = ", ".join(map(str, FEWSHOT_SEEDS))
        raise BenchError(f"task {task}: option fewshot_seed must be one of {valid}, got {seed!r}")
    return int(seed)


def first_label_word(text: str, words: Mapping[str, str]) -> str | None:
    """``words[w]`` for the first word ``w`` of the lower-cased ``text`` that is a key of
    ``words``; None if there is none."""
    for word in _WORD.findall(text.lower()):
        if word in words:
            return words[word]
    return None


def labelled_examples(
    rows: list[dict[str, Any]], path: str, labels: tuple[str, ...], split: str
) -> list[Example]:
    """Examples from ``<text column>, label`` rows whose text column is ``text`` or
    ``sentence`` (RLPrompt's files use both, as do the hub's glue/sst2 and ag_news)."""
    column = next((c for c in ("text", "sentence") if rows and c in rows[0]), "sentence")
    examples = []
    for i, row in enumerate(rows):
        text, label = row.get(column), row["label"]
        if text is None or str(label) not in {str(j) for j in range(len(labels))}:
            raise DataError(f"{path}:line {i + 2}: no {column} or a bad label {label!r}")
        examples.append(
            Example(
                id=f"{split}-{i}",
                input=str(text).strip(),
                target=labels[int(label)],
                meta={"label": int(label)},
            )
        )
    return examples
