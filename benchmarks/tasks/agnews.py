"""AG News: four-way news topic classification, in the few-shot setting of Black-Box Tuning
(Sun et al. 2022).

Files (RLPrompt, TSV with pandas-style quoting, label 0 World, 1 Sports, 2 Business,
3 Sci/Tech): ``agnews/rlprompt/16-<seed>/{train,dev}.tsv``, 16 shots per class (64 rows, header
``text<TAB>label``), and ``agnews/rlprompt/16-42/test.tsv``, the full AG News test set (7600
rows, header ``sentence<TAB>label``; the test file is the same for every seed). Text is title +
" " + description, with the original corpus's ``\\`` line-break markers and ``#36;``-style
entity remnants kept as they are (HF ``ag_news``, which BBT loads, has them too).

Splits: train/dev are the 16-shot files of option ``fewshot_seed`` (13, 21, 42, 87 or 100;
default 42); test is the test set. Ids are ``<split>-<row>``.

Target: the label word, "world", "sports", "business" or "tech" (BBT's verbalizer words
World/Sports/Business/Tech, lower-cased).

Metric: accuracy. The answer is the first word of the lower-cased output that is a label word,
or one of the synonyms "sport" (sports), "science" and "technology" (tech).
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

#: the label words, plus a few unambiguous synonyms.
_ANSWER_WORDS = {
    "world": "world",
    "sports": "sports",
    "business": "business",
    "tech": "tech",
    "sport": "sports",
    "science": "tech",
    "technology": "tech",
}


@register_task("agnews")
class AGNews(Task):
    """AG News topics, 16 shots per class for train/dev, the full test set as test."""

    kind = "classification"
    labels = ("world", "sports", "business", "tech")
    description = "news topic classification, 4 classes (BBT few-shot setting: 16 shots/class)"
    max_tokens = 5
    stop = ("\n",)
    # Instruct models answer in a sentence ("The sentiment of the review is positive."); the
    # first label word anywhere in it is read, so the answer may take a line.
    chat_max_tokens = 20
    chat_stop = ("\n\n",)
    options: ClassVar[Mapping[str, str]] = {"fewshot_seed": FEWSHOT_SEED_OPTION}
    input_prefix = "Article: "
    output_prefix = "Topic:"
    instructions = (
        "Classify the news article into one of these topics: world, sports, business, tech.",
        "What is this news story about? Answer with one word: world, sports, business or tech.",
        "You are a newspaper editor sorting wire stories into sections. Put each story in the "
        "World, Sports, Business or Tech section and reply with the section name.",
        "Topic (world / sports / business / tech):",
        "Read the headline and summary. If it is about international affairs or politics, say "
        "world; games and athletes, sports; companies and markets, business; science, "
        "computing or the internet, tech.",
    )

    def __init__(self, data_dir: Path | str | None = None, **options: Any):
        super().__init__(data_dir, **options)
        self.fewshot_seed = fewshot_seed(self.name, self.option_values)

    def load_split(self, split: Split) -> list[Example]:
        seed = 42 if split == "test" else self.fewshot_seed
        rows, path = self.load_rows(
            ("agnews", "rlprompt", f"16-{seed}", f"{split}.tsv"),
            required=("label",),
            # the test file is the hub's ag_news test split (same rows, text + label)
            hub=HubSource("ag_news", None, "test") if split == "test" else None,
        )
        return labelled_examples(rows, path, self.labels or (), split)

    def extract(self, text: str, example: Example) -> str | None:
        return first_label_word(text, _ANSWER_WORDS)
