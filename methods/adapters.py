"""How a white-box fine-tune trains and what it keeps: the whole model, or LoRA adapters.

Not a method. The methods that fine-tune a local causal LM (Aligner's and CoBB's corrector,
proxy-tuning's expert) share:

- `resolve_adapter`: their Config's ``adapter`` field. "auto" trains the whole model when it
  is a zoo model (0.24M parameters: a full fine-tune is cheap and is what the committed
  baselines measured) and LoRA adapters when it is a pretrained model (SmolLM2-135M and up: a
  full float32 copy per cell is 538 MB of artifacts and as much again in the training cache).
  A zoo model directory is recognised by the ``training.json`` its trainer writes beside the
  weights (``methods`` may not import ``benchmarks``).
- `LoraSettings` and `attach_lora`: LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large
  Language Models", ICLR 2022, arXiv 2106.09685) through ``peft``; the adapters are injected
  into the transformers model in place, so code that calls the model is unchanged.
- `save_adapter` / `load_adapter`: an adapted model is saved as the adapter weights only
  (peft's ``adapter_model.safetensors`` and ``adapter_config.json``) plus ``adapter.json``
  naming the base model, its resolved directory and its weights' digest; loading refuses a
  base whose weights changed.
- `pretrained_overrides`: the one table of hyperparameters that replace the zoo-tuned budget
  presets when the model is pretrained (see its docstring).

A full fine-tune of a pretrained model (``adapter="full"``) still saves the whole model, not a
delta from the base: a float32 delta of every weight is as many bytes as the model itself
(only a low-rank or sparse delta is smaller, which is what LoRA is), and a saved whole model
loads without its base.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from methods.decoding import weights_digest
from methods.registry import BenchError

C = TypeVar("C")

ADAPTERS = ("auto", "full", "lora")
#: beside peft's adapter files: the base model an adapter was trained on.
ADAPTER_FILE = "adapter.json"
#: what a zoo model directory holds beside its weights (benchmarks/zoo's trainer writes it).
ZOO_MARKER = "training.json"


def is_zoo_model_dir(directory: Path | str) -> bool:
    """Whether ``directory`` is a zoo model (trained by the project, with ``training.json``)."""
    return (Path(directory) / ZOO_MARKER).is_file()


def resolve_adapter(adapter: str, directory: Path | str, *, who: str) -> str:
    """ "full" or "lora" for a Config's ``adapter`` and the resolved model directory."""
    if adapter not in ADAPTERS:
        raise BenchError(f"{who}: adapter {adapter!r}; valid: {', '.join(ADAPTERS)}")
    if adapter != "auto":
        return adapter
    return "full" if is_zoo_model_dir(directory) else "lora"


@dataclass(frozen=True)
class LoraSettings:
    """LoRA's shape. Defaults: Hu et al. 2021, Table 11 (GPT-2 Medium/Large on E2E, the
    paper's closest scale to a 135M model): r = 4, α = 32, dropout 0.1, on the attention
    query and value projections (W_q, W_v, Section 4.2 / 7.1)."""

    rank: int = 4
    alpha: int = 32
    dropout: float = 0.1
    #: module names to adapt; None: peft's per-architecture default, which is the query and
    #: value projections (q_proj, v_proj for Llama; GPT-2's fused c_attn).
    targets: tuple[str, ...] | None = None


def attach_lora(model: Any, settings: LoraSettings, *, seed: int = 0) -> Any:
    """Inject fresh LoRA adapters into ``model`` (in place: the base weights are frozen and
    ``model`` computes with the adapters) and return peft's wrapper, which saves them.
    ``seed`` seeds the adapters' random init (lora_A; lora_B starts at zero)."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets) if settings.targets else None,
    )
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        with warnings.catch_warnings():  # peft reads a deprecated transformers property
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, config)
    finally:
        torch.set_rng_state(state)


def save_adapter(peft_model: Any, directory: Path, *, base: str, base_dir: Path | str) -> None:
    """The adapter weights (safetensors) and config, and ``adapter.json`` naming the base."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()
    }
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    peft_model.peft_config["default"].save_pretrained(str(directory))
    record = {
        "base": base,
        "base_dir": str(Path(base_dir).resolve()),
        "base_digest": weights_digest(base_dir),
    }
    (directory / ADAPTER_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")


def is_adapter_dir(directory: Path | str) -> bool:
    return (Path(directory) / ADAPTER_FILE).is_file()


def adapter_base(directory: Path | str, *, who: str) -> tuple[str, Path]:
    """The base model (name, directory) an adapter was trained on, refused (one line) when
    it is gone or its weights are not the ones the adapter was trained on."""
    record = json.loads((Path(directory) / ADAPTER_FILE).read_text(encoding="utf-8"))
    base_dir = Path(record["base_dir"])
    if not base_dir.is_dir():
        raise BenchError(f"{who}: the adapter's base model {base_dir} is not a local directory")
    digest = weights_digest(base_dir)
    if digest != record["base_digest"]:
        raise BenchError(
            f"{who}: the base model at {base_dir} is not the one the adapter was trained on "
            f"(weights {digest}, recorded {record['base_digest']})"
        )
    return str(record["base"]), base_dir


def load_adapter(model: Any, directory: Path | str) -> Any:
    """Inject the saved adapter of ``directory`` into ``model`` (in place) for inference;
    returns peft's wrapper."""
    from peft import PeftModel

    with warnings.catch_warnings():  # peft reads a deprecated transformers property
        warnings.simplefilter("ignore", FutureWarning)
        return PeftModel.from_pretrained(model, str(directory), is_trainable=False)


def trainable_parameters(model: Any) -> list[Any]:
    return [p for p in model.parameters() if p.requires_grad]


def lora_settings(config: Any) -> LoraSettings:
    """The `LoraSettings` of a method Config's ``lora_*`` fields."""
    targets = config.lora_targets
    return LoraSettings(
        rank=config.lora_rank,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        targets=tuple(targets) if targets else None,
    )


def config_for_model(
    config: C,
    model_dir: Path | str,
    *,
    table: Mapping[str, Mapping[str, Any]],
    explicit: Collection[str],
    who: str,
) -> tuple[C, str, dict[str, Any]]:
    """``config`` for the white-box model at ``model_dir``: (the config, "full" or "lora",
    the values changed). A zoo model keeps the config as it is (the budget presets were
    tuned on zoo models). A pretrained model takes ``table[adapter]`` (the method's
    ``pretrained_presets``: learning rate and batch size from papers that fine-tuned real
    models) except for the fields the user set (``explicit``), which replaces the budget
    presets' zoo-scale values (lr 3e-4 or 1e-3 on 0.24M parameters)."""
    adapter = resolve_adapter(config.adapter, model_dir, who=who)  # type: ignore[attr-defined]
    if is_zoo_model_dir(model_dir):
        return config, adapter, {}
    scaled = {k: v for k, v in table.get(adapter, {}).items() if k not in explicit}
    return dataclasses.replace(config, **scaled), adapter, scaled  # type: ignore[type-var]
