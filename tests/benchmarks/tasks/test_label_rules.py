"""Plugin tasks that break the label rules are refused while planning, saying which targets
and labels disagree; test examples that also appear in train or dev are warned about."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.cli import main
from benchmarks.tasks.base import Task, register_task
from benchmarks.tiny import tiny_model_dir
from methods import Example


class _Parity(Task):
    """Even or odd (a test fixture); subclasses break one rule each."""

    kind = "classification"
    labels: tuple[str, ...] = ("even", "odd")
    instructions = ("Say whether the number is even or odd.",)
    max_tokens = 3
    stop = ("\n",)

    def target(self, n: int) -> str:
        return self.labels[n % 2]

    def load_split(self, split):  # type: ignore[no-untyped-def]
        offset = {"train": 0, "dev": 100, "test": 200}[split]
        return [Example(f"{split}-{i}", str(offset + i), self.target(offset + i)) for i in range(8)]

    def extract(self, text: str, example: Example) -> str | None:
        words = text.strip().split()
        return words[0] if words and words[0] in self.labels else None


@register_task("test-capital-targets")
class _CapitalTargets(_Parity):
    def target(self, n: int) -> str:
        return ("Even", "odd")[n % 2]  # one target word in another case than its label


@register_task("test-shared-first-token")
class _SharedFirstToken(_Parity):
    labels = ("evenly", "evenness")  # the same first token on a byte-level vocabulary


@register_task("test-leaky-split")
class _LeakySplit(_Parity):
    def load_split(self, split):  # type: ignore[no-untyped-def]
        if split == "test":  # three test examples are train examples too
            train = super().load_split("train")[:3]
            return [Example(f"test-{i}", ex.input, ex.target) for i, ex in enumerate(train)] + [
                *super().load_split("test")[3:]
            ]
        return super().load_split(split)


def _run(tmp_path: Path, task: str) -> int:
    argv = ["run", "--methods", "zero-shot", "--tasks", task, "--backend", "hf"]
    argv += ["--model", str(tiny_model_dir(tmp_path / "tiny")), "--limit", "4"]
    argv += ["--results-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")]
    return main([*argv, "--run-id", "x", "--dry-run"])


def test_targets_that_are_not_label_words_are_refused_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, "test-capital-targets") == 2
    err = capsys.readouterr().err
    assert "'Even'" in err and "even" in err and "odd" in err, err


def test_labels_that_share_a_first_token_are_refused_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, "test-shared-first-token") == 2
    err = capsys.readouterr().err
    assert "evenly" in err and "evenness" in err and "first token" in err, err


def test_test_examples_also_in_train_or_dev_are_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three test inputs are train inputs too: the run goes on, with a warning naming how
    many and which splits."""
    assert _run(tmp_path, "test-leaky-split") == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "test-leaky-split" in line and "train" in line]
    assert lines and "3 of" in lines[0], err


def test_a_clean_task_gets_no_overlap_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, "zoo-sentiment") == 0
    assert "also in" not in capsys.readouterr().err
