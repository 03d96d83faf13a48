"""The training cache: a step that ran before is loaded, leaving the process exactly as
running it would have (weights, optimizer and scheduler state, torch random state)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from methods.artifacts import TrainingCache, flatten, state_digest, unflatten
from methods.base import TuneContext


class Meter:
    """Records compute blocks and credits, as `benchmarks.metering.UsageMeter` does."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.credited: list[tuple[str, dict[str, float]]] = []

    def compute(self, label: str) -> Any:
        import contextlib

        @contextlib.contextmanager
        def block() -> Any:
            out: dict[str, float] = {}
            yield out
            self.ran.append(label)
            out.update(seconds=1.5, wall_s=2.0, peak_mem_mb=10.0)

        return block()

    def credit(self, label: str, **cost: float) -> None:
        self.credited.append((label, cost))


def _setup(seed: int = 0) -> tuple[torch.nn.Module, Any, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    return model, opt, sched


def _trainer(
    model: torch.nn.Module, opt: Any, sched: Any, data: list[list[float]]
) -> Callable[[], Any]:
    def train() -> list[float]:
        model.train()
        x = torch.tensor(data)
        losses = []
        for _ in range(3):
            noise = torch.randn(x.shape[0], 1)  # reads the global random state
            loss = ((model(x) - noise) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        model.eval()
        return losses

    return train


DATA = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 0.0]]


def test_state_dicts_round_trip_through_json_and_tensors() -> None:
    model, opt, sched = _setup()
    _trainer(model, opt, sched, DATA)()
    for obj in (model, opt, sched):
        tensors: dict[str, Any] = {}
        skeleton = json.loads(json.dumps(flatten(obj.state_dict(), tensors)))
        back = unflatten(skeleton, tensors)
        state = obj.state_dict()
        assert back.keys() == state.keys()
        if obj is opt:  # int keys and tuples survive
            assert list(back["state"]) == list(state["state"])
            assert back["param_groups"][0]["betas"] == state["param_groups"][0]["betas"]
            assert isinstance(back["param_groups"][0]["betas"], tuple)
        obj.load_state_dict(back)
    with pytest.raises(TypeError, match="cannot store a object"):
        flatten({"x": object()}, {})


def test_a_repeated_step_is_loaded_and_leaves_the_process_as_running_it_would(
    tmp_path: Path,
) -> None:
    cache = TrainingCache(tmp_path)
    model, opt, sched = _setup()
    meter = Meter()
    inputs = {"data": DATA, "seed": 0}
    first = cache.run(
        "train",
        _trainer(model, opt, sched, DATA),
        inputs=inputs,
        state=[model, opt, sched],
        meter=meter,
    )
    after = state_digest([model, opt, sched])
    rng_after = torch.get_rng_state().clone()
    assert meter.ran == ["train"] and cache.misses == 1 and not model.training

    model2, opt2, sched2 = _setup()  # same start, same random state
    assert state_digest([model2]) != state_digest([model])
    again = cache.run(
        "train",
        _trainer(model2, opt2, sched2, DATA),
        inputs=inputs,
        state=[model2, opt2, sched2],
        meter=meter,
    )
    assert meter.ran == ["train"] and cache.hits == 1  # the step did not run again
    assert again == first
    assert state_digest([model2, opt2, sched2]) == after
    assert torch.equal(torch.get_rng_state(), rng_after)
    assert not model2.training
    assert meter.credited == [("train", {"seconds": 1.5, "wall_s": 2.0, "peak_mem_mb": 10.0})]
    # ...and training goes on from the loaded state exactly as from the trained one.
    x = torch.tensor(DATA)
    assert torch.equal(model(x), model2(x))


@pytest.mark.parametrize("change", ["inputs", "start", "random state", "label"])
def test_anything_the_step_reads_that_differs_is_a_miss(tmp_path: Path, change: str) -> None:
    cache, meter = TrainingCache(tmp_path), Meter()
    model, opt, sched = _setup()
    cache.run(
        "train",
        _trainer(model, opt, sched, DATA),
        inputs=DATA,
        state=[model, opt, sched],
        meter=meter,
    )
    model, opt, sched = _setup(seed=1 if change == "start" else 0)
    if change == "random state":
        torch.manual_seed(123)
    data = [[0.0] * 4, *DATA[1:]] if change == "inputs" else DATA
    cache.run(
        "other" if change == "label" else "train",
        _trainer(model, opt, sched, data),
        inputs=data,
        state=[model, opt, sched],
        meter=meter,
    )
    assert cache.misses == 2 and cache.hits == 0 and len(meter.ran) == 2


def test_inputs_that_are_not_json_are_refused_with_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="not JSON"):
        TrainingCache(tmp_path).run("x", lambda: 1, inputs={"f": object()}, state=[], meter=Meter())


def test_a_context_without_a_cache_just_trains_and_times(tmp_path: Path) -> None:
    meter = Meter()
    ctx = TuneContext(compute=meter)  # type: ignore[arg-type]
    assert ctx.train("t", lambda: [1, 2], inputs=None) == [1, 2]
    assert ctx.train("t", lambda: [1, 2], inputs=None) == [1, 2]
    assert meter.ran == ["t", "t"]
    cached = TuneContext(compute=meter, training_cache=TrainingCache(tmp_path))  # type: ignore[arg-type]
    assert cached.train("t", lambda: (1, 2), inputs=None) == [1, 2]  # as JSON: lists
    assert cached.train("t", lambda: (1, 2), inputs=None) == [1, 2]
    assert meter.ran == ["t", "t", "t"] and len(meter.credited) == 1


def test_a_half_written_entry_is_a_miss(tmp_path: Path) -> None:
    cache, meter = TrainingCache(tmp_path), Meter()
    cache.run("t", lambda: 1, inputs=1, state=[], meter=meter)
    (entry,) = tmp_path.glob("*/*/entry.json")
    (entry.parent / "state.safetensors").write_bytes(b"garbage")
    assert cache.run("t", lambda: 1, inputs=1, state=[], meter=meter) == 1
    assert meter.ran == ["t", "t"]
    assert cache.run("t", lambda: 1, inputs=1, state=[], meter=meter) == 1  # rewritten whole
    assert meter.ran == ["t", "t"] and cache.hits == 1


def test_a_module_with_frozen_weights_is_stored_as_its_trainable_ones(tmp_path: Path) -> None:
    """LoRA's case: the frozen base is in the key, not in the entry; a hit restores the
    trainable weights and leaves the frozen ones as they are."""

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 2))
        net[0].requires_grad_(False)
        return net

    def step(net: torch.nn.Module) -> Callable[[], list[float]]:
        def run() -> list[float]:
            opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
            loss = net(torch.ones(3, 64)).pow(2).sum()
            loss.backward()
            opt.step()
            return [float(loss.detach())]

        return run

    cache = TrainingCache(tmp_path)
    trained = model()
    torch.manual_seed(1)
    first = cache.run("t", step(trained), inputs={}, state=[trained], meter=Meter())
    (entry,) = list(tmp_path.glob("*/*/entry.json"))
    assert json.loads(entry.read_text())["partial"] == [True]
    stored = (entry.parent / "state.safetensors").stat().st_size
    assert stored < 64 * 64 * 4  # the frozen 64x64 layer is not in it
    replayed = model()
    torch.manual_seed(1)
    assert cache.run("t", step(replayed), inputs={}, state=[replayed], meter=Meter()) == first
    assert cache.hits == 1
    want, got = trained.state_dict(), replayed.state_dict()
    assert all(torch.equal(want[name], got[name]) for name in want)
    assert not torch.equal(want["1.weight"], model().state_dict()["1.weight"])  # it trained
