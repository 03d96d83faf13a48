"""StrategyQA: yes/no questions that need implicit multi-step reasoning (Geva et al. 2021).

Files: ``strategyqa/train.json`` (2061 rows) and ``strategyqa/dev.json`` (229 rows) from
eladsegal/strategyqa, JSON arrays of objects with ``qid``, ``question``, ``answer`` (a JSON
bool) and ``facts`` (the supporting facts). The official test labels are hidden, so those two
files (an unofficial 90/10 split of the official train set) are all the labelled data.

Splits: test is ``dev.json``; dev is a fixed holdout of 200 questions of ``train.json``
(`split_holdout`, seed 0) and train is the rest. Ids are the ``qid``.

Target: "yes" or "no". Rationale: the facts, one a line, then ``#### yes`` / ``#### no``,
BBox-Adapter's positive-target format (it writes "Yes." / "No.").

Metric: exact match. As in BBox-Adapter, the answer is the text after the last ``####``,
lower-cased with "." removed; we take its first word, which must be yes or no. Leniency of
ours: an output with no ``####`` falls back to its first standalone "yes" or "no" word, so a
bare "Yes." (zero-shot) is scored too.
"""

from __future__ import annotations

import re

from benchmarks.tasks.base import DataError, Split, Task, read_rows, register_task, split_holdout
from methods.base import Example

#: questions held out of train.json as the dev split.
DEV_SIZE = 200
_YES_NO = re.compile(r"\b(yes|no)\b")
_FIRST_YES_NO = re.compile(r"\s*(yes|no)\b")


@register_task("strategyqa")
class StrategyQA(Task):
    """StrategyQA with fact-list rationales ending in ``#### yes|no``."""

    kind = "generation"
    description = "yes/no questions needing implicit multi-hop reasoning; exact match"
    max_tokens = 256
    # Models go on to invent the next question as "Question:" as often as "Q:"; without this
    # stop an answer ran to the 256-token limit (and the invented question's "#### yes/no"
    # became the answer).
    stop = ("\n\nQ:", "\nQ:", "Question:")
    instructions = (
        "Answer the yes/no question. First write the facts you need, one per line, then give "
        "the answer on a final line as '#### yes' or '#### no'.",
        "Think about what you know that bears on this question, list those facts briefly, and "
        "conclude with '#### yes' or '#### no'.",
        "You are a knowledgeable trivia expert. Break the question into the facts it depends "
        "on, state each one, and end with #### followed by yes or no.",
        "Reply with the relevant facts and then '#### yes' or '#### no'.",
        "Questions like these hide a chain of reasoning. Make the hidden steps explicit, one "
        "per line, and put your final yes/no verdict after '####'.",
    )

    def load_split(self, split: Split) -> list[Example]:
        if split == "test":
            return self._read("dev.json")
        train = self._read("train.json")
        rest, dev = split_holdout(train, fraction=DEV_SIZE / len(train), seed=0)
        return dev if split == "dev" else rest

    def _read(self, filename: str) -> list[Example]:
        path = self.find_file("strategyqa", filename)
        rows = read_rows(path, required=("qid", "question", "answer", "facts"))
        examples = []
        for i, row in enumerate(rows):
            if not isinstance(row["answer"], bool):
                raise DataError(f"{path}:row {i + 1}: answer is {row['answer']!r}, not a bool")
            target = "yes" if row["answer"] else "no"
            facts = [str(f).strip() for f in row["facts"]]
            examples.append(
                Example(
                    id=str(row["qid"]),
                    input=str(row["question"]).strip(),
                    target=target,
                    rationale="\n".join([*facts, f"#### {target}"]),
                    meta={"term": row.get("term"), "decomposition": row.get("decomposition")},
                )
            )
        return examples

    def extract(self, text: str, example: Example) -> str | None:
        if "####" in text:
            match = _FIRST_YES_NO.match(text.rsplit("####", 1)[1].lower().replace(".", ""))
        else:
            match = _YES_NO.search(text.lower())
        return match.group(1) if match else None
