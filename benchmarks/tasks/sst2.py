"""SST-2: binary sentiment of movie-review sentences, in the few-shot setting of Black-Box
Tuning (Sun et al. 2022).

Files (TSV, header ``sentence<TAB>label``, label 0 negative / 1 positive):
``sst2/rlprompt/16-<seed>/{train,dev}.tsv``, the LM-BFF-style 16-shot-per-class splits of
RLPrompt (32 rows each), and ``sst2/alps/test.tsv``, the GLUE SST-2 validation set (872 rows),
which is the set BBT evaluates on.

Splits: train/dev are the 16-shot files of option ``fewshot_seed`` (13, 21, 42, 87 or 100;
default 42); test is the GLUE validation set. Ids are ``<split>-<row>``.

Target: the label word, "negative" or "positive" (BBT's verbalizer is "bad"/"great").

Metric: accuracy. The answer is the first word of the lower-cased output that is a label word,
or one of BBT's verbalizer words "bad"/"great" taken as "negative"/"positive".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.tasks.base import DataError, Split, Task, read_rows, register_task
from methods.base import Example
from methods.registry import BenchError

#: the seeds of the LM-BFF / RLPrompt 16-shot splits.
FEWSHOT_SEEDS = (13, 21, 42, 87, 100)
_WORD = re.compile(r"[a-z]+")
#: the label words, plus BBT's verbalizer words "bad"/"great" as synonyms.
_ANSWER_WORDS = {
    "negative": "negative",
    "positive": "positive",
    "bad": "negative",
    "great": "positive",
}


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


def read_labelled(path: Path, labels: tuple[str, ...], split: str) -> list[Example]:
    """Examples from a ``<text column><TAB>label`` file whose text column is ``text`` or
    ``sentence`` (RLPrompt uses both)."""
    rows = read_rows(path, required=("label",))
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


@register_task("sst2")
class SST2(Task):
    """SST-2 sentiment, 16 shots per class for train/dev, GLUE validation as test."""

    kind = "classification"
    labels = ("negative", "positive")
    description = "movie-review sentiment (BBT few-shot setting: 16 shots/class, GLUE dev test)"
    max_tokens = 5
    stop = ("\n",)
    input_prefix = "Review: "
    output_prefix = "Sentiment:"
    instructions = (
        "Classify the sentiment of the movie review as positive or negative.",
        "Is this movie review positive or negative? Answer with one word.",
        "Read the review and decide whether the critic liked the film (positive) or disliked "
        "it (negative).",
        "Sentiment analysis: label each review 'positive' or 'negative'.",
        "You help a film studio track critics. Tell me whether the opinion below is favorable "
        "(answer: positive) or unfavorable (answer: negative).",
    )

    def __init__(self, data_dir: Path | str | None = None, **options: Any):
        super().__init__(data_dir, **options)
        self.fewshot_seed = fewshot_seed(self.name, options)

    def load_split(self, split: Split) -> list[Example]:
        if split == "test":
            path = self.find_file("sst2", "alps", "test.tsv")
        else:
            path = self.find_file("sst2", "rlprompt", f"16-{self.fewshot_seed}", f"{split}.tsv")
        return read_labelled(path, self.labels or (), split)

    def extract(self, text: str, example: Example) -> str | None:
        return first_label_word(text, _ANSWER_WORDS)
