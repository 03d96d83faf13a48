"""LoRA for pretrained white-box models (methods/adapters.py): a tiny Llama (no zoo
``training.json``, so "pretrained") stands in for SmolLM2. The corrector of Aligner and CoBB
and proxy-tuning's expert train LoRA adapters, a saved policy holds the adapters only and
reloads on its base (refusing another base), the training cache keeps the adapters only, and
the pretrained-scale presets apply to pretrained models alone (zoo models keep theirs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.tiny import build_tiny_llama
from methods import BenchError, TuneContext, load_policy
from methods.adapters import (
    ADAPTER_FILE,
    config_for_model,
    is_zoo_model_dir,
    resolve_adapter,
)
from methods.aligner import Aligner, AlignerConfig
from methods.artifacts import TrainingCache
from methods.cobb import CoBB
from methods.corrector import CORRECTOR_DIR, CorrectorPolicy
from methods.decoding import LocalLM
from methods.proxy_tuning import EXPERT_DIR, ProxyTuning, ProxyTuningPolicy
from tests.methods.conftest import VocabBox
from tests.methods.test_cobb import _alternating
from tests.methods.test_corrector import RecordingCompute, ScriptedBlackBox, SumTask


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Wider than the default tiny Llama so the adapters are a small share, as on SmolLM2.
    return build_tiny_llama(
        tmp_path_factory.mktemp("llama") / "tiny-llama", hidden_size=128, intermediate_size=256
    )


def _bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def _context(events: list[tuple[str, dict[str, Any]]], cache: TrainingCache | None = None):  # type: ignore[no-untyped-def]
    return TuneContext(
        seed=0,
        resolve_model=lambda name: Path(name),
        on_event=lambda e, f: events.append((e, dict(f))),
        compute=RecordingCompute(),
        training_cache=cache,
    )


def test_a_lora_corrector_saves_its_adapters_only_and_reloads_the_same(
    llama_dir: Path, tmp_path: Path
) -> None:
    task = SumTask()
    train = task.examples("train")
    bb = ScriptedBlackBox(lambda prompt, k: " #### 0")
    events: list[tuple[str, dict[str, Any]]] = []
    cache = TrainingCache(tmp_path / "cache")
    tuner = Aligner.from_budget("light", corrector=str(llama_dir), n_questions=6)
    torch.manual_seed(0)  # the training cache keys the torch random state (the runner seeds it)
    policy = tuner.fit(train, task=task, backend=bb, context=_context(events, cache))
    # LoRA, with the pretrained-scale learning rate and batch (not light's zoo 3e-4)
    assert events[0] == ("corrector", {"adapter": "lora", "lr": 2e-4, "batch_size": 8})
    assert tuner.hyperparameters()["lr"] == 2e-4  # the record shows what trained
    assert isinstance(policy, CorrectorPolicy)

    policy.save(tmp_path / "p")
    saved = tmp_path / "p" / CORRECTOR_DIR
    assert not (saved / "model.safetensors").exists()
    assert (saved / "adapter_model.safetensors").is_file()
    record = json.loads((saved / ADAPTER_FILE).read_text())
    assert record["base"] == str(llama_dir) and Path(record["base_dir"]) == llama_dir.resolve()
    model_bytes = _weights_bytes(llama_dir)
    assert _bytes(tmp_path / "p") < model_bytes / 20

    # the training cache entry keeps the adapters, not the frozen base
    (entry,) = list((tmp_path / "cache").glob("*/*/state.safetensors"))
    assert entry.stat().st_size < model_bytes / 20

    examples = train[:3]
    before = [p.output for p in policy.predict(examples, task=task, backend=bb)]
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, CorrectorPolicy) and loaded.corrector.peft is not None
    assert [p.output for p in loaded.predict(examples, task=task, backend=bb)] == before

    # a replay loads the adapters from the cache and predicts the same
    torch.manual_seed(0)
    replay = Aligner.from_budget("light", corrector=str(llama_dir), n_questions=6).fit(
        train, task=task, backend=bb, context=_context([], cache)
    )
    assert cache.hits == 1
    assert [p.output for p in replay.predict(examples, task=task, backend=bb)] == before


def test_an_adapter_refuses_a_base_with_other_weights(tmp_path: Path) -> None:
    base = build_tiny_llama(tmp_path / "base")
    task = SumTask()
    policy = Aligner(corrector=str(base), n_questions=2, epochs=1, template="compact").fit(
        task.examples("train"),
        task=task,
        backend=ScriptedBlackBox(lambda p, k: " #### 0"),
        context=_context([]),
    )
    policy.save(tmp_path / "p")
    build_tiny_llama(base, seed=1)  # the same name, other weights
    with pytest.raises(BenchError, match="not the one the adapter was trained on"):
        load_policy(tmp_path / "p")


def test_cobb_trains_a_lora_corrector_on_a_pretrained_model(
    llama_dir: Path, tmp_path: Path
) -> None:
    task = SumTask()
    events: list[tuple[str, dict[str, Any]]] = []
    tuner = CoBB(
        corrector=str(llama_dir),
        n_questions=3,
        samples=2,
        epochs=1,
        template="compact",
        ga_population=4,
        ga_generations=2,
    )
    policy = tuner.fit(
        task.examples("train"),
        task=task,
        backend=ScriptedBlackBox(_alternating),
        context=_context(events),
    )
    # the paper preset's ORPO lr (5e-6, full fine-tune) becomes LoRA's 2e-4
    assert events[0] == ("corrector", {"adapter": "lora", "lr": 2e-4, "batch_size": 8})
    policy.save(tmp_path / "p")
    assert not (tmp_path / "p" / CORRECTOR_DIR / "model.safetensors").exists()
    assert _bytes(tmp_path / "p") < _weights_bytes(llama_dir) / 20


def test_proxy_tuning_trains_a_lora_expert_on_a_pretrained_base(
    llama_dir: Path, tmp_path: Path
) -> None:
    from benchmarks.tasks.base import get_task

    task = get_task("zoo-arith", n_train=4, n_dev=1, n_test=1)
    vocab = LocalLM.load(llama_dir).vocabulary()
    events: list[tuple[str, dict[str, Any]]] = []
    tuner = ProxyTuning.from_budget("light", base=str(llama_dir), epochs=1)
    policy = tuner.fit(
        task.examples("train"), task=task, backend=VocabBox(vocab), context=_context(events)
    )
    assert events[0] == (
        "proxy_tuning_adapter",
        {"adapter": "lora", "learning_rate": 2e-4, "batch_size": 8},
    )
    assert isinstance(policy, ProxyTuningPolicy)
    policy.save(tmp_path / "p")
    assert not (tmp_path / "p" / EXPERT_DIR / "model.safetensors").exists()
    assert (tmp_path / "p" / EXPERT_DIR / "adapter_model.safetensors").is_file()
    assert _bytes(tmp_path / "p") < _weights_bytes(llama_dir) / 20
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, ProxyTuningPolicy) and loaded.expert_peft is not None
    ids = torch.tensor([LocalLM.load(llama_dir).encode("What is 2 plus 3 ?")])
    with torch.no_grad():
        want = policy.models["expert"].model(input_ids=ids).logits
        got = loaded.models["expert"].model(input_ids=ids).logits
        anti = loaded.models["anti_expert"].model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, anti)  # the adapters changed the expert


def test_a_full_fine_tune_of_a_pretrained_model_takes_the_papers_rate(llama_dir: Path) -> None:
    task = SumTask()
    events: list[tuple[str, dict[str, Any]]] = []
    Aligner.from_budget("light", corrector=str(llama_dir), n_questions=2, adapter="full").fit(
        task.examples("train"),
        task=task,
        backend=ScriptedBlackBox(lambda p, k: " #### 0"),
        context=_context(events),
    )
    # sft-correction.sh's lr 2e-5; the budget's batch stays
    assert events[0] == ("corrector", {"adapter": "full", "lr": 2e-5})


def test_zoo_models_keep_full_fine_tunes_and_their_presets(
    small_dir: Path, llama_dir: Path
) -> None:
    assert is_zoo_model_dir(small_dir) and not is_zoo_model_dir(llama_dir)
    assert resolve_adapter("auto", small_dir, who="t") == "full"
    assert resolve_adapter("auto", llama_dir, who="t") == "lora"
    assert resolve_adapter("lora", small_dir, who="t") == "lora"
    with pytest.raises(BenchError, match="adapter 'qlora'"):
        resolve_adapter("qlora", small_dir, who="t")
    light = Aligner.from_budget("light")
    table = Aligner.pretrained_presets
    cfg, adapter, scaled = config_for_model(
        light.config, small_dir, table=table, explicit=light.explicit, who="t"
    )
    assert (cfg, adapter, scaled) == (light.config, "full", {})
    # a value the user set is theirs at any scale
    mine = Aligner.from_budget("light", lr=1e-3)
    cfg, _, scaled = config_for_model(
        mine.config, llama_dir, table=table, explicit=mine.explicit, who="t"
    )
    assert cfg.lr == 1e-3 and scaled == {"batch_size": 8}
    # a whole Config is taken as given
    whole = Aligner(AlignerConfig(lr=5e-5))
    cfg, _, scaled = config_for_model(
        whole.config, llama_dir, table=table, explicit=whole.explicit, who="t"
    )
    assert scaled == {} and cfg == dataclasses.replace(AlignerConfig(), lr=5e-5)
