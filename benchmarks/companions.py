"""White-box companions: which small model fills a method's companion role for a black box,
and the planning checks that refuse a pair that cannot work, before anything is spent.

A method names its white-box models in its Config (``proxy-tuning.base``,
``contrastive-decoding.amateur``, ``bbox.backbone``, ``aligner.corrector``, ...) and declares
each field's role in `BlackBoxTuner.companions`. A field left at ``"auto"`` is filled here from
the black box:

=============  ===================  ===========================  ==========================
role           zoo black box        named real model             any other black box
=============  ===================  ===========================  ==========================
``token``      ``zoo-small``        its token companion          none: the method is refused
               (same tokenizer)     (`benchmarks.models`)        until one is set
``scorer``     ``zoo-small``        ``minilm`` (a real encoder)  ``minilm``
``corrector``  ``zoo-small``        the model itself             none: refused until set
=============  ===================  ===========================  ==========================

Checks (each an ``n/a (reason)`` cell): a token companion must share the black box's
vocabulary, must not be the black box itself, and must be smaller than it; a text companion
trained only on the zoo's generated language is refused for a black box that is not a zoo
model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from collections.abc import Collection
from functools import lru_cache
from pathlib import Path
from typing import Any

from methods.adapters import is_zoo_model_dir
from methods.base import AUTO_MODEL, BlackBoxTuner, CompanionRole
from methods.bbox import MINILM
from methods.bbox import MINILM_PACKAGE as BBOX_MINILM_PACKAGE
from methods.registry import BenchError

#: the bbox scorer for black boxes outside the zoo: the real MiniLM encoder (see methods/bbox),
#: and the package that carries it.
TEXT_SCORER = MINILM
MINILM_PACKAGE = BBOX_MINILM_PACKAGE


def black_box_dir(model: str) -> Path | None:
    """The local directory of a black box named ``model`` (a path, a zoo model or a pulled
    named model), or None when it is not on this machine (a remote API model)."""
    from benchmarks import models, zoo

    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if model in zoo.available():
        return (zoo.WEIGHTS / model).resolve()
    if model in models.MODELS and models.is_pulled(model):
        return models.model_path(model).resolve()
    return None


def is_zoo_model(model: str | Path) -> bool:
    """Whether ``model`` is one of the zoo's models (trained on the zoo's generated corpus):
    a zoo name, or a directory the zoo's trainer wrote (the mark `methods.adapters` reads too,
    so a copy of a zoo model elsewhere is still one)."""
    from benchmarks import zoo

    if str(model) in zoo.available():
        return True
    path = Path(model).expanduser()
    return path.is_dir() and is_zoo_model_dir(path)


def named_spec(model: str) -> Any:
    """The `benchmarks.models.ModelSpec` of a black box named (or stored as) ``model``."""
    from benchmarks import models

    name = Path(model).name if Path(model).expanduser().is_dir() else model
    return models.MODELS.get(name)


def default_companion(role: CompanionRole, black_box_model: str) -> str | None:
    """The model that fills ``role`` for the black box ``black_box_model`` by default, or None
    when nothing fits (the user must name one)."""
    if is_zoo_model(black_box_model):
        return "zoo-small"
    spec = named_spec(black_box_model)
    if role == "scorer":
        return TEXT_SCORER
    if spec is None:
        return None
    if role == "token":
        return spec.companions.get("token")
    return spec.companions.get("corrector", spec.name)


def fill_companions(
    tuner: BlackBoxTuner, black_box_model: str, overridden: Collection[str] = ()
) -> tuple[BlackBoxTuner, str | None]:
    """``tuner`` with every companion field the user did not set (``overridden``), or set to
    ``"auto"``, filled for the black box; and the reason the method cannot run when a role
    has no default."""
    updates: dict[str, str] = {}
    for field_name, role in tuner.companions.items():
        value = getattr(tuner.config, field_name)
        if field_name in overridden and value != AUTO_MODEL:
            continue
        if value is None and role == "token" and field_name not in overridden:
            continue  # an optional model (proxy-tuning's expert: trained when not given)
        chosen = default_companion(role, black_box_model)
        if chosen is None:
            return tuner, (
                f"a {_ROLE_WORDS[role]} for {black_box_model}: set "
                f"--set {tuner.name}.{field_name}=MODEL"
            )
        updates[field_name] = chosen
    if updates:
        tuner.config = dataclasses.replace(tuner.config, **updates)
    return tuner, None


def companion_disclosures(
    tuner: BlackBoxTuner, black_box_model: str, overridden: Collection[str] = ()
) -> list[str]:
    """One line per white-box model ``tuner`` uses (its fields filled by `fill_companions`):
    the role, the field, the model, and whether the harness chose it for this black box or
    the user set it; a cell's "companion" disclosures."""
    lines = []
    for field_name, role in tuner.companions.items():
        name = getattr(tuner.config, field_name)
        if name is None:
            continue  # an optional model left out (proxy-tuning's expert is trained)
        how = "set by the user" if field_name in overridden else f"chosen for {black_box_model}"
        lines.append(f"{_ROLE_WORDS[role]}: {tuner.name}.{field_name} = {name} ({how})")
    return lines


_ROLE_WORDS: dict[str, str] = {
    "token": "small model on the black box's vocabulary",
    "scorer": "text scorer",
    "corrector": "small generative model to correct answers",
}


def companion_refusal(
    tuner: BlackBoxTuner,
    black_box_model: str,
    vocabulary: list[str] | None,
    resolve: Any,
) -> str | None:
    """Why ``tuner``'s companions cannot serve this black box (one line), or None.

    Args:
        tuner: a tuner whose companion fields are filled (`fill_companions`).
        black_box_model: the black box's model name or directory.
        vocabulary: the black box's vocabulary where it exposes one (else None: the
            vocabulary check waits for the method's own check at fit time).
        resolve: name -> local directory (pulls or builds a named companion).
    """
    bb_dir = black_box_dir(black_box_model)
    for field_name, role in tuner.companions.items():
        name = getattr(tuner.config, field_name)
        if name is None:
            continue  # an optional model left out (proxy-tuning's expert is trained)
        if role == "scorer" and name == TEXT_SCORER:
            if importlib.util.find_spec(MINILM_PACKAGE) is None:
                return (
                    f"the MiniLM text scorer ({tuner.name}.{field_name}={name}): pip install "
                    f"{MINILM_PACKAGE.replace('_', '-')}"
                )
            continue
        if role in ("scorer", "corrector"):
            if is_zoo_model(name) and not is_zoo_model(black_box_model):
                return (
                    f"a {_ROLE_WORDS[role]} that knows real language ({tuner.name}."
                    f"{field_name}={name} learned only the zoo's generated corpus; set --set "
                    f"{tuner.name}.{field_name}=MODEL)"
                )
            continue
        path = Path(resolve(name))
        if bb_dir is not None and _same_weights(path, bb_dir):
            return (
                f"a companion smaller than the black box ({tuner.name}.{field_name}={name} is "
                "the black box itself)"
            )
        if vocabulary is not None:
            theirs = companion_vocabulary(path)
            if not _same_vocabulary(vocabulary, theirs):
                return (
                    f"a companion on {black_box_model}'s vocabulary ({tuner.name}.{field_name}"
                    f"={name} has {len(theirs):,} tokens against {len(vocabulary):,}, or other "
                    "token strings)"
                )
        if bb_dir is not None:
            mine, big = non_embedding_parameters(path), non_embedding_parameters(bb_dir)
            if mine >= big:
                return (
                    f"a companion smaller than the black box ({tuner.name}.{field_name}={name} "
                    f"has {mine:,} non-embedding parameters, the black box {big:,})"
                )
    return None


def _same_vocabulary(a: list[str], b: list[str]) -> bool:
    size = min(len(a), len(b))
    return a[:size] == b[:size] and not any(a[size:]) and not any(b[size:])


@lru_cache(maxsize=16)
def companion_vocabulary(directory: Path) -> list[str]:
    """Token strings by id of a local model's tokenizer, padded to its output rows, as
    `methods.decoding.LocalLM.vocabulary` lists them (the tokenizer alone is loaded)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    rows = int(config.get("vocab_size") or len(tokenizer))
    known = min(len(tokenizer), rows)
    texts = tokenizer.batch_decode([[i] for i in range(known)], clean_up_tokenization_spaces=False)
    return [*texts, *([""] * (rows - known))]


def _same_weights(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return _weights_key(a) == _weights_key(b)


def _weights_key(directory: Path) -> str:
    """The sha256 of the weight files, from the manifest where the project wrote one."""
    from benchmarks.models import read_manifest

    manifest = read_manifest(directory)
    if manifest is not None:
        shas = sorted(v for k, v in manifest["files"].items() if k.endswith(".safetensors"))
        return hashlib.sha256("".join(shas).encode()).hexdigest()
    from benchmarks.backends.hf import weights_digest

    return weights_digest(directory)


@lru_cache(maxsize=32)
def non_embedding_parameters(directory: Path) -> int:
    """Parameters of a safetensors model outside its input embeddings and output head,
    counted from the file headers (no weights are loaded)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if any(part in key for part in _EMBEDDING_KEYS):
                    continue
                count = 1
                for dim in handle.get_slice(key).get_shape():
                    count *= int(dim)
                total += count
    if total == 0:
        raise BenchError(f"model {directory}: no weights found in its safetensors files")
    return total


#: tensor names of input embeddings and output heads across GPT-2, Llama and Gemma layouts.
_EMBEDDING_KEYS = ("embed_tokens", "wte", "wpe", "lm_head", "embed_positions")
