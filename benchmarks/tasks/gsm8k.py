"""GSM8K: grade-school math word problems answered with a worked solution (Cobbe et al. 2021).

Files: ``gsm8k/train.jsonl`` (7473 rows) and ``gsm8k/test.jsonl`` (1319 rows) from
openai/grade-school-math, one ``{"question", "answer"}`` object a line; ``answer`` is a worked
solution with calculator annotations ``<<48/2=24>>`` and a last line ``#### <number>``.

Splits: test is ``test.jsonl``; dev is a fixed holdout of 500 training problems
(`split_holdout`, seed 0) and train is the rest. Ids are ``train-<row>`` / ``test-<row>``.

Target: the number after the last ``#### `` with thousands separators removed ("2,125" ->
"2125"). Rationale: the solution without calculator annotations, ending in ``#### N``.

Metric: exact match of the extracted number, which is the number after the last ``####`` or
else the last number in the output: the convention of BBox-Adapter's ``utils/gsm8k_metric.py``.
"""

from __future__ import annotations

import re

from benchmarks.tasks.base import (
    DataError,
    HubSource,
    Split,
    Task,
    extract_final_number,
    normalize_number,
    register_task,
    split_holdout,
)
from methods.base import Example

#: problems held out of train.jsonl as the dev split.
DEV_SIZE = 500
_CALCULATOR = re.compile(r"<<.*?>>")


@register_task("gsm8k")
class GSM8K(Task):
    """GSM8K with chain-of-thought targets ending in ``#### <answer>``."""

    kind = "generation"
    description = "grade-school math word problems; exact match on the final number"
    max_tokens = 256
    # An instruct model's chain of thought runs longer than the 8-shot chains (steps written as
    # sentences, often a closing restatement); the last number is read, so a new question it
    # starts is cut ("Question:" as well as "Q:").
    chat_max_tokens = 512
    chat_stop = ("\n\nQ:", "\nQ:", "Question:")
    instructions = (
        "Solve the math word problem. Reason step by step, then give the final answer on its "
        "own line as '#### <number>'.",
        "Answer the following grade-school math question. Show your working and end with "
        "'#### ' followed by the answer as a plain number.",
        "You are a careful math tutor. Work through the problem one calculation at a time, "
        "double-check each result, and finish with a line of the form '#### N'.",
        "Let's think step by step. Final line: #### <answer>",
        "Write down the quantities given, the arithmetic that connects them, and the result. "
        "State only the final number after '####'.",
    )

    def load_split(self, split: Split) -> list[Example]:
        if split == "test":
            return self._read("test")
        train = self._read("train")
        rest, dev = split_holdout(train, fraction=DEV_SIZE / len(train), seed=0)
        return dev if split == "dev" else rest

    def _read(self, name: str) -> list[Example]:
        rows, path = self.load_rows(
            ("gsm8k", f"{name}.jsonl"),
            required=("question", "answer"),
            hub=HubSource("gsm8k", "main", name),  # the same data and columns (PROVENANCE.md)
        )
        examples = []
        for i, row in enumerate(rows):
            answer = str(row["answer"])
            target = normalize_number(answer.rsplit("#### ", 1)[-1]) if "#### " in answer else None
            if target is None:
                raise DataError(f"{path}:{i + 1}: answer does not end in '#### <number>'")
            examples.append(
                Example(
                    id=f"{name}-{i}",
                    input=str(row["question"]).strip(),
                    target=target,
                    rationale=_CALCULATOR.sub("", answer).strip(),
                )
            )
        return examples

    def extract(self, text: str, example: Example) -> str | None:
        return extract_final_number(text)
