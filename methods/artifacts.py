"""A content-addressed cache of white-box training outcomes, so a replay skips training.

The response cache makes a replay free on the black-box side; white-box training (BBox-Adapter's
adapter, proxy-tuning's expert, the correctors of Aligner and CoBB) would still run again and
dominate it. A training step is a function of what goes in: its inputs (texts, settings,
seed), the state it starts from (module weights, optimizer and scheduler state), the global
torch random state, and the code. `TrainingCache.run` keys an entry by all of these and stores
what comes out (the state afterwards, the random state afterwards, the step's JSON result and
the compute it cost), so a hit leaves the process exactly as running the step would have.
Of a module with frozen parameters (a pretrained model carrying LoRA adapters) an entry keeps
only the trainable parameters: the frozen ones are the same after the step as before, and
the key already holds their digest. An entry of a LoRA-tuned SmolLM2-135M is then a few
hundred kilobytes rather than the model's 538 MB.

Entries are a safetensors file of tensors plus a JSON file (never pickle), written to a
temporary directory and renamed into place: concurrent workers (Ray) see a whole entry or
none. A hit credits the entry's compute seconds to the meter as cached compute, so a report
of a replay shows what the method costs from a cold start, as cached tokens do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
#: bump when the entry format or the key changes; old entries are then simply not found.
FORMAT = 1
METHODS_DIR = Path(__file__).resolve().parent


class Stateful(Protocol):
    """A module, optimizer or scheduler: anything with torch's state-dict protocol."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Any, /) -> Any: ...


# -- state dicts as (JSON skeleton, tensors) ----------------------------------------------------


def flatten(obj: Any, tensors: dict[str, Any], path: str = "s", *, copy: bool = True) -> Any:
    """``obj`` as JSON with each tensor replaced by a reference into ``tensors``; dict keys
    keep their types (optimizer states are keyed by int) and tuples stay tuples. ``copy``
    puts CPU copies in ``tensors`` (for saving); without it, the tensors themselves."""
    import torch

    if isinstance(obj, torch.Tensor):
        # A copy: tied weights share storage, which safetensors refuses to write twice.
        tensors[path] = obj.detach().cpu().clone().contiguous() if copy else obj
        return {"__tensor__": path}
    if isinstance(obj, Mapping):
        return {
            "__dict__": [
                [k, flatten(v, tensors, f"{path}.{i}", copy=copy)]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, tuple):
        return {
            "__tuple__": [flatten(v, tensors, f"{path}.{i}", copy=copy) for i, v in enumerate(obj)]
        }
    if isinstance(obj, list):
        return [flatten(v, tensors, f"{path}.{i}", copy=copy) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"training cache: cannot store a {type(obj).__name__} in a state dict")


def unflatten(skeleton: Any, tensors: Mapping[str, Any]) -> Any:
    """The inverse of `flatten`."""
    if isinstance(skeleton, list):
        return [unflatten(v, tensors) for v in skeleton]
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__tuple__" in skeleton:
            return tuple(unflatten(v, tensors) for v in skeleton["__tuple__"])
        return {k: unflatten(v, tensors) for k, v in skeleton["__dict__"]}
    return skeleton


def _tensor_bytes(tensor: Any) -> bytes:
    import torch

    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return bytes(flat.view(torch.uint8).numpy())


def state_digest(objects: Sequence[Stateful]) -> str:
    """sha256 over the state dicts of ``objects`` (structure, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for obj in objects:
        tensors: dict[str, Any] = {}
        skeleton = flatten(obj.state_dict(), tensors, copy=False)
        h.update(json.dumps(skeleton, sort_keys=True).encode())
        for name in sorted(tensors):
            t = tensors[name]
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(_tensor_bytes(t))
    return h.hexdigest()


def stored_state(obj: Stateful) -> tuple[Mapping[str, Any], bool]:
    """What an entry keeps of ``obj``, and whether that is part of its state dict: a module
    with both frozen and trainable parameters keeps its trainable parameters only (training
    changes nothing else of it); anything else keeps its whole state dict."""
    import torch

    if isinstance(obj, torch.nn.Module):
        params = dict(obj.named_parameters())
        trainable = {name: p for name, p in params.items() if p.requires_grad}
        if trainable and len(trainable) < len(params):
            return trainable, True
    return obj.state_dict(), False


def _load_partial(obj: Any, state: Mapping[str, Any]) -> None:
    """Load the trainable parameters ``state`` into ``obj``, refusing unknown names."""
    result = obj.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"training cache: unknown parameters {result.unexpected_keys[:3]}")


# -- keys ---------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    raise TypeError(
        f"training cache: input of type {type(obj).__name__} is not JSON (pass texts, numbers, "
        "dataclasses, lists or dicts)"
    )


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable)


def tree_digest(root: Path, pattern: str = "*") -> str:
    """sha256 over the relative names and bytes of the files under ``root`` matching
    ``pattern`` (a saved policy's files; a package's code)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob(pattern) if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@functools.cache
def source_digest(package_dir: Path) -> str:
    """The Python code under ``package_dir``: a change to any of it makes earlier entries
    keyed with it unreachable."""
    return tree_digest(package_dir, "*.py")


def code_digest(*objects: Any, packages: Sequence[Path] = (METHODS_DIR,)) -> str:
    """The code of ``packages`` (default: the methods package) plus the files defining
    ``objects`` (functions or classes: a plugin's own module)."""
    h = hashlib.sha256()
    for package in packages:
        h.update(source_digest(package).encode())
    for obj in objects:
        with contextlib.suppress(TypeError, OSError):
            source = inspect.getsourcefile(obj)
            if source and not any(Path(source).resolve().is_relative_to(p) for p in packages):
                h.update(Path(source).read_bytes())
    return h.hexdigest()


def _rng_states(device: str) -> dict[str, Any]:
    """The torch random states a training step may read: the CPU generator's, and on a GPU
    each device's generator's."""
    import torch

    states = {"rng": torch.get_rng_state()}
    if device.startswith("cuda") and torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"rng.cuda.{i}"] = state
    return states


def _set_rng_states(tensors: Mapping[str, Any]) -> None:
    import torch

    torch.set_rng_state(tensors["rng"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))
    if cuda:
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


# -- the cache ----------------------------------------------------------------------------------


class TrainingCache:
    """Entries under ``root/ab/<sha256>/`` holding ``state.safetensors`` and ``entry.json``."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def key(
        self,
        label: str,
        fn: Callable[..., Any],
        *,
        inputs: Any,
        state: Sequence[Stateful],
        device: str,
    ) -> str:
        import torch
        import transformers

        rngs = _rng_states(device)
        parts = {
            "v": FORMAT,
            "label": label,
            "inputs": json.loads(canonical(inputs)),
            "state": state_digest(state),
            "rng": {k: hashlib.sha256(_tensor_bytes(v)).hexdigest() for k, v in rngs.items()},
            "code": code_digest(fn),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device": device,
        }
        return hashlib.sha256(canonical(parts).encode()).hexdigest()

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def run(
        self,
        label: str,
        fn: Callable[[], T],
        *,
        inputs: Any,
        state: Sequence[Stateful],
        meter: Any,
        device: str = "cpu",
    ) -> T:
        """``fn()`` timed by ``meter.compute(label)``, or its stored outcome loaded into
        ``state`` (and the torch random state) when this exact step ran before.

        ``fn`` must change nothing but ``state`` and the torch random state, and return JSON
        (lists, dicts, numbers, strings); ``inputs`` is everything else it reads.
        """
        key = self.key(label, fn, inputs=inputs, state=state, device=device)
        loaded = self._load(key, state)
        if loaded is not None:
            self.hits += 1
            result, cost = loaded
            credit = getattr(meter, "credit", None)
            if credit is not None:
                credit(label, **cost)
            return result  # type: ignore[no-any-return]
        self.misses += 1
        with meter.compute(label) as block:
            result = json.loads(canonical(fn()))  # as a hit returns it: tuples become lists
        cost = {k: float(v) for k, v in (block or {}).items() if k in COST_FIELDS}
        self._store(key, label, result, state, cost, device)
        return result  # type: ignore[no-any-return]

    def _load(self, key: str, state: Sequence[Stateful]) -> tuple[Any, dict[str, float]] | None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = self._dir(key)
        try:
            entry = json.loads((directory / "entry.json").read_text(encoding="utf-8"))
            tensors = load_file(str(directory / "state.safetensors"))
        except (OSError, ValueError, SafetensorError):
            return None  # absent or damaged: the step runs and its entry is written again
        partial = entry.get("partial", [False] * len(state))
        for obj, skeleton, part in zip(state, entry["state"], partial, strict=True):
            restored = unflatten(skeleton, tensors)
            if part:
                _load_partial(obj, restored)
            else:
                obj.load_state_dict(restored)
        for obj, training in zip(state, entry["training"], strict=True):
            if training is not None:
                obj.train(training)  # type: ignore[attr-defined]
        _set_rng_states(tensors)
        return entry["result"], entry["cost"]

    def _store(
        self,
        key: str,
        label: str,
        result: Any,
        state: Sequence[Stateful],
        cost: dict[str, float],
        device: str,
    ) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, Any] = {}
        kept = [stored_state(obj) for obj in state]
        skeletons = [flatten(part, tensors, f"s{i}") for i, (part, _) in enumerate(kept)]
        tensors.update({k: v.clone() for k, v in _rng_states(device).items()})
        entry = {
            "label": label,
            "result": result,
            "state": skeletons,
            "partial": [is_partial for _, is_partial in kept],
            "training": [getattr(obj, "training", None) for obj in state],
            "cost": cost,
            "created": time.time(),
        }
        final = self._dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
        try:
            save_file(tensors, str(tmp / "state.safetensors"))
            (tmp / "entry.json").write_text(json.dumps(entry), encoding="utf-8")
            # Stored only after a miss: what is there is damaged, or another worker's copy of
            # this very step; either way ours replaces it.
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except OSError:
            pass  # another worker stored the same step first: its entry is as good
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


#: the compute-block fields an entry keeps (what the meter measured when the step ran).
COST_FIELDS = ("seconds", "wall_s", "peak_mem_mb")
