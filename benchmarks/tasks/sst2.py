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

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from benchmarks.tasks._common import (
    FEWSHOT_SEED_OPTION,
    fewshot_seed,
    first_label_word,
    labelled_examples,
)
from benchmarks.tasks.base import HubSource, Split, Task, register_task
from methods.base import Example

#: the label words, plus BBT's verbalizer words "bad"/"great" as synonyms.
_ANSWER_WORDS = {
    "negative": "negative",
    "positive": "positive",
    "bad": "negative",
    "great": "positive",
}


@register_task("sst2")
class SST2(Task):
    """SST-2 sentiment, 16 shots per class for train/dev, GLUE validation as test."""

    kind = "classification"
    labels = ("negative", "positive")
    description = "movie-review sentiment (BBT few-shot setting: 16 shots/class, GLUE dev test)"
    max_tokens = 5
    stop = ("\n",)
    # Instruct models answer in a sentence ("The sentiment of the review is positive."); the
    # first label word anywhere in it is read, so the answer may take a line.
    chat_max_tokens = 20
    chat_stop = ("\n\n",)
    options: ClassVar[Mapping[str, str]] = {"fewshot_seed": FEWSHOT_SEED_OPTION}
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
        self.fewshot_seed = fewshot_seed(self.name, self.option_values)

    def load_split(self, split: Split) -> list[Example]:
        if split == "test":
            # The GLUE validation set, also on the hub as glue/sst2 "validation".
            rows, path = self.load_rows(
                ("sst2", "alps", "test.tsv"),
                required=("label",),
                hub=HubSource("glue", "sst2", "validation"),
            )
        else:
            rows, path = self.load_rows(
                ("sst2", "rlprompt", f"16-{self.fewshot_seed}", f"{split}.tsv"), required=("label",)
            )
        return labelled_examples(rows, path, self.labels or (), split)

    def extract(self, text: str, example: Example) -> str | None:
        return first_label_word(text, _ANSWER_WORDS)
