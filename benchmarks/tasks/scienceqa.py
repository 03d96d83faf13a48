"""ScienceQA, text-only questions: grade-school science multiple choice (Lu et al. 2022).

File: ``scienceqa/llava_test_CQM-A.json`` (haotian-liu/LLaVA), the official ScienceQA test
split in LLaVA's format: a JSON array of ``{"id", ["image",] "conversations"}`` whose human turn
is ``[Context: <hint>\\n]<question>\\nA. <choice>\\nB. <choice>...`` and whose gpt turn is the
gold letter. Only the 2224 rows without an ``image`` are used (BBox-Adapter also keeps only
text-only questions). The input is the human turn before the choices, "Context: " line included.

Splits: the train split (and the lectures and solutions) of ScienceQA are not available as
files, so the 2224 text-only test questions are split ~60/10/30 into train/dev/test by a stable
hash of the problem id (`hash_split`). Scores are therefore not comparable with published
ScienceQA test accuracy, which uses all 4241 test questions.

Target: the gold letter. Metric: exact match of the extracted letter (as in truthfulqa:
a leading letter such as "B", "(B)", "Answer: B", or the text of a choice). BBox-Adapter writes
the answer index after ``####`` instead; letters are the LLaVA convention of this file.
"""

from __future__ import annotations

import re

from benchmarks.tasks._common import LETTERS, extract_choice, hash_split
from benchmarks.tasks.base import DataError, Split, Task, read_rows, register_task
from methods.base import Example

# choices start at the last "\nA. " and each further one at "\n<next letter>. " (a choice
# itself may span lines, e.g. a letter closing "See you soon,\nJanet")
_NEXT_CHOICE = re.compile(r"\n(?=[B-Z]\. )")


def parse_prompt(prompt: str) -> tuple[str, list[str]] | None:
    """Split a LLaVA CQM prompt into (context and question, choices); None if malformed."""
    start = prompt.rfind("\nA. ")
    if start < 0:
        return None
    parts = _NEXT_CHOICE.split(prompt[start + 1 :])
    if [p[:3] for p in parts] != [f"{LETTERS[i]}. " for i in range(len(parts))]:
        return None
    return prompt[:start].strip(), [p[3:].strip() for p in parts]


@register_task("scienceqa")
class ScienceQA(Task):
    """Text-only ScienceQA questions as lettered multiple choice."""

    kind = "multiple_choice"
    description = "text-only grade-school science multiple choice (ScienceQA test questions)"
    max_tokens = 16
    stop = ("\n",)
    # The answer is read from the start of the output (a letter, or a choice's whole text):
    # room for a long choice text, which an instruct model may repeat after its letter.
    chat_max_tokens = 48
    input_prefix = "Question: "
    output_prefix = "Answer:"
    instructions = (
        "Answer the science question. Reply with the letter of the correct option.",
        "Use the context, if any, and your knowledge of science to choose the right answer. "
        "Respond with a single letter.",
        "You are a patient primary-school science teacher. Read the question carefully, work "
        "out the answer, and give only the letter of the correct choice.",
        "Multiple choice. Letter only.",
        "Eliminate the options that are clearly wrong, then pick the one that remains and "
        "write its letter.",
    )

    def load_split(self, split: Split) -> list[Example]:
        path = self.find_file("scienceqa", "llava_test_CQM-A.json")
        examples = []
        for i, row in enumerate(read_rows(path, required=("id", "conversations"))):
            if row.get("image") is not None or hash_split(str(row["id"])) != split:
                continue
            turns = {t["from"]: str(t["value"]) for t in row["conversations"]}
            parsed = parse_prompt(turns.get("human", ""))
            gold = turns.get("gpt", "").strip()
            if parsed is None or gold not in tuple(LETTERS[: len(parsed[1])]):
                raise DataError(f"{path}:row {i + 1}: not a LLaVA CQM question with a gold letter")
            question, choices = parsed
            examples.append(
                Example(id=str(row["id"]), input=question, target=gold, choices=tuple(choices))
            )
        return examples

    def extract(self, text: str, example: Example) -> str | None:
        return extract_choice(text, example.choices or ())
