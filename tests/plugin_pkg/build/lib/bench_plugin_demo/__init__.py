"""An out-of-tree plugin: one method and one task, found through entry points only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.tasks.base import Task
from methods import AdaptedPolicy, BlackBox, BlackBoxTuner, Example, PromptPolicy, TaskLike


@dataclass(frozen=True)
class EchoConfig:
    #: which manual instruction to use (the last one by default).
    index: int = -1


class EchoInstruction(BlackBoxTuner):
    """Uses the task's last manual instruction (a plugin test fixture)."""

    Config = EchoConfig

    def fit(
        self,
        train: Sequence[Example],
        *,
        task: TaskLike,
        backend: BlackBox,
        dev=None,
        proposer=None,
        context=None,
    ) -> AdaptedPolicy:
        return PromptPolicy(instruction=task.instructions[self.config.index])


class Parity(Task):
    """Is the number even? (a plugin test fixture)"""

    kind = "classification"
    labels = ("even", "odd")
    instructions = ("Say whether the number is even or odd.", "Even or odd?")
    max_tokens = 3
    stop = ("\n",)
    description = "parity of small numbers (plugin fixture)"

    def load_split(self, split):  # type: ignore[no-untyped-def]
        offset = {"train": 0, "dev": 100, "test": 200}[split]
        return [
            Example(f"{split}-{i}", str(offset + i), self.labels[(offset + i) % 2])
            for i in range(20)
        ]

    def extract(self, text: str, example: Example) -> str | None:
        words = text.strip().lower().split()
        return words[0] if words and words[0] in self.labels else None
