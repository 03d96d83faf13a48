"""Proxy-tuning (Liu et al., COLM 2024; alisawuffles/proxy-tuning): tune a small model and
steer the large one with the difference at decoding time.

A small "expert" M+ is fine-tuned on the task, its untuned copy is the "anti-expert" M-, and
the black box M is decoded greedily with, at every step,

    z = z_M + α (z_M+ - z_M-)        (modeling/dexperts.py L167-170; α = 1.0)

i.e. the product of experts p_M · (p_M+ / p_M-)^α, which moves the large model by what tuning
changed in the small one. The three models share one vocabulary: the black box's
`vocabulary()` must equal the local tokenizer's, or the method refuses (the official code only
truncates the expert's extra rows; no cross-tokenizer mapping exists). Decoding is
`methods.decoding.decode`; this file supplies the formula and the expert.

The expert: a copy of ``base`` (``zoo-small``) fine-tuned on the training set, each example
as ``task.render(ex, instruction) + " " + task.render_target(ex)`` and EOS, the loss on the
completion tokens only (open_instruct's SFT masks the prompt the same way), AdamW with a
linear schedule and warm-up (``scripts/finetune_with_accelerate.sh``). ``expert`` names an
already-tuned model instead (the paper's instruction and code settings used off-the-shelf
experts, maintainer in issue #4). All three models read the same prompt: the task's template
with its default instruction (the official code chat-formats the expert's prompt because its
expert is a chat model; ours is tuned on the plain template).

Access: the full next-token distribution (``next_token_logits``), one call per decoding step
with all live sequences batched. Where a backend has only top-k ``logprobs``, each step asks
for one greedy token with its top-``top_logprobs`` alternatives and the combination is
restricted to those tokens: the paper's GPT-3.5 case study (top-5), reported as the variant
"top-k logprobs approximation (k=...)".

Deviations, and why:
- The paper preset keeps the official fine-tuning recipe (lr 2e-5, batch 128, 2 epochs), made
  for a 7B model; on a 0.25M-parameter zoo model it barely moves the weights (a few steps at
  2e-5), so the light/medium/heavy presets train with lr 1e-3 (the zoo models' own
  pre-training rate), batch 16, a few epochs on at most a few hundred examples: seconds on a
  CPU.
- No weight decay, no gradient clipping, float32 on CPU (the official run: bf16, DeepSpeed).
- Answers are capped at the task's ``max_tokens`` (the official 512 for GSM is its answer
  length) and by the context windows of all three models.
- LoRA for a pretrained expert (``adapter="auto"``, `methods.adapters`): the paper fine-tunes
  all of Llama-2-7B; a zoo ``base`` still is fully fine-tuned (the committed baselines), a
  pretrained one (``smollm2-135m-slice8`` for SmolLM2) trains LoRA adapters (Hu et al. 2021,
  Table 11: r 4, α 32, dropout 0.1 on the query and value projections), and the policy saves
  the adapters (the anti-expert is their base, recorded with its digest) instead of a copy of
  the model. ``adapter="full"`` restores the full fine-tune, saved whole.
- Learning rate and batch size at the pretrained scale (`ProxyTuning.pretrained_presets`,
  instead of the zoo-tuned budget values unless set explicitly): with LoRA lr 2e-4 and batch
  8 (Hu et al. 2021, Table 11); with a full fine-tune the official lr 2e-5
  (finetune_with_accelerate.sh; the batch stays the budget's 16, as a few hundred examples
  give a 128-batch two steps an epoch).
- No tuning calls: the black box is not used to tune (the paper's expert is tuned without
  it). Each test example costs one black-box call per decoded token (``plan`` reports the
  upper bound, ``max_new_tokens`` per example), plus two small-model forward passes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from methods.adapters import (
    adapter_base,
    attach_lora,
    config_for_model,
    is_adapter_dir,
    load_adapter,
    lora_settings,
    save_adapter,
    trainable_parameters,
)
from methods.base import (
    LOGPROBS,
    NEXT_TOKEN_LOGITS,
    AdaptedPolicy,
    BlackBox,
    BlackBoxTuner,
    CallPlan,
    CompanionRole,
    Example,
    TaskLike,
    TuneContext,
    policy_types,
    register_method,
)
from methods.corrector import IGNORE_INDEX, sft_batch
from methods.decoding import (
    BLACK_BOX,
    DecodingPolicy,
    Formula,
    LocalLM,
    check_models,
    default_device,
    load_recorded,
    task_instruction,
    top_k_detail,
    top_k_mode,
    weights_digest,
)
from methods.registry import BenchError

if TYPE_CHECKING:
    import torch

#: where the policy keeps the fine-tuned expert (transformers format, safetensors).
EXPERT_DIR = "expert"
#: label of masked positions in the cross-entropy (PyTorch's ignore_index).


def proxy_scores(
    base: torch.Tensor, expert: torch.Tensor, anti_expert: torch.Tensor, alpha: float
) -> torch.Tensor:
    """z_M + α (z_M+ - z_M-): the proxy-tuned next-token scores (dexperts.py L167-170)."""
    return base + alpha * (expert - anti_expert)


@dataclass(frozen=True)
class ProxyTuningConfig:
    #: α, the weight of the expert/anti-expert difference: 1.0 (eval/utils.py L184 and the
    #: ``--alpha`` default of eval/toxigen and eval/truthfulqa run_eval.py).
    alpha: float = 1.0
    #: the small model: the anti-expert as is, the expert a fine-tuned copy (the paper's
    #: Llama-2-7B; here the zoo's small model, which shares zoo-large's tokenizer).
    base: str = "zoo-small"
    #: an already-tuned expert (model name or local directory) instead of fine-tuning ``base``.
    expert: str | None = None
    #: fine-tuning learning rate: 2e-5 (scripts/finetune_with_accelerate.sh).
    learning_rate: float = 2e-5
    #: fine-tuning epochs: 2 (scripts/finetune_with_accelerate.sh).
    epochs: int = 2
    #: total batch size: 128 (scripts/finetune_with_accelerate.sh).
    batch_size: int = 128
    #: linear schedule warm-up fraction: 0.03 (scripts/finetune_with_accelerate.sh).
    warmup_ratio: float = 0.03
    #: training examples used, drawn with the cell's seed; None: all (the paper: all).
    max_train_examples: int | None = None
    #: which of the task's instructions the prompt carries (0: its default).
    instruction_index: int = 0
    #: answer length cap; None: the task's ``max_tokens`` (the official 512 for GSM).
    max_new_tokens: int | None = None
    #: k of the top-k approximation: 5, the GPT-3.5 case study's top-5 logprobs.
    top_logprobs: int = 5
    #: use the top-k approximation even where the full distribution is served.
    top_k_only: bool = False
    #: what trains in the expert: "full" (all weights, as the official script), "lora"
    #: (adapters, base frozen), or "auto": full for a zoo ``base``, LoRA for a pretrained one
    #: (ours; see the module docstring).
    adapter: Literal["auto", "full", "lora"] = "auto"
    #: LoRA rank r: 4 (Hu et al. 2021, Table 11, GPT-2 M/L on E2E).
    lora_rank: int = 4
    #: LoRA α: 32 (ibid.).
    lora_alpha: int = 32
    #: LoRA dropout: 0.1 (ibid.).
    lora_dropout: float = 0.1
    #: adapted modules; None: peft's default per architecture (query and value projections).
    lora_targets: tuple[str, ...] | None = None


#: hyperparameters of a pretrained expert, by adapter (`methods.adapters.config_for_model`).
PRETRAINED_PRESETS: Mapping[str, Mapping[str, Any]] = {
    # Hu et al. 2021, Table 11 (GPT-2 M/L, E2E): lr 2e-4, batch 8.
    "lora": {"learning_rate": 2e-4, "batch_size": 8},
    # scripts/finetune_with_accelerate.sh: lr 2e-5 (a full fine-tune of a pretrained model).
    "full": {"learning_rate": 2e-5},
}


@register_method("proxy-tuning", "proxy_tuning")
class ProxyTuning(BlackBoxTuner):
    """Proxy-tuning: decode the black box with + α(tuned small - untuned small) logits."""

    Config = ProxyTuningConfig
    config: ProxyTuningConfig
    requires = frozenset({f"{NEXT_TOKEN_LOGITS}|{LOGPROBS}"})
    uses_white_box = True
    companions: ClassVar[Mapping[str, CompanionRole]] = {"base": "token", "expert": "token"}
    variant: str | None = None
    pretrained_presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRETRAINED_PRESETS
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "light": {
            "learning_rate": 1e-3,
            "batch_size": 16,
            "epochs": 3,
            "max_train_examples": 200,
        },
        "medium": {
            "learning_rate": 1e-3,
            "batch_size": 16,
            "epochs": 4,
            "max_train_examples": 500,
        },
        "heavy": {
            "learning_rate": 1e-3,
            "batch_size": 16,
            "epochs": 6,
            "max_train_examples": 2000,
        },
    }

    def plan(self, *, task: TaskLike, train: Sequence[Example], dev: Sequence[Example]) -> CallPlan:
        steps = self.config.max_new_tokens or task.max_tokens
        instruction = task_instruction(task, self.config.instruction_index)
        return CallPlan(
            calls=0,
            eval_prompt=task.render(train[0], instruction=instruction) if train else None,
            # One black-box call per decoded token: an upper bound (answers stop earlier).
            eval_calls_per_example=float(steps),
            # Completion tokens: none with full distributions, one per step with top-k.
            eval_samples_per_example=steps / max(1, task.max_tokens),
        )

    def fit(
        self,
        train: Sequence[Example],
        *,
        task: TaskLike,
        backend: BlackBox,
        dev: Sequence[Example] | None = None,
        proposer: BlackBox | None = None,
        context: TuneContext | None = None,
    ) -> AdaptedPolicy:
        cfg = self.config
        ctx = context or TuneContext()
        top_k = top_k_mode(backend, cfg.top_k_only, "proxy-tuning")
        self.variant = f"top-k logprobs approximation (k={cfg.top_logprobs})" if top_k else None
        if top_k:
            ctx.disclose("substitute", top_k_detail(backend, cfg.top_logprobs, cfg.top_k_only))
        device = default_device(ctx.device)
        anti_dir = ctx.resolve_model(cfg.base)
        anti_expert = LocalLM.load(anti_dir, device=device)
        # Refuse before any training when the vocabularies differ.
        check_models(backend, {"anti_expert": anti_expert}, who="proxy-tuning", top_k_only=top_k)
        instruction = task_instruction(task, cfg.instruction_index)
        expert_dir: Path | None = None
        expert_peft: Any = None
        if cfg.expert is not None:
            expert_dir = ctx.resolve_model(cfg.expert)
            expert = LocalLM.load(expert_dir, device=device)
        else:
            if not train:
                raise BenchError("proxy-tuning: no training examples to fine-tune the expert on")
            cfg, adapter, scaled = config_for_model(
                cfg,
                anti_dir,
                table=self.pretrained_presets,
                explicit=self.explicit,
                who="proxy-tuning",
            )
            if adapter == "lora" or scaled:
                ctx.on_event("proxy_tuning_adapter", {"adapter": adapter, **scaled})
            self.config = cfg  # the record shows the values trained with
            examples = list(train)
            random.Random(ctx.seed).shuffle(examples)
            examples = examples[: cfg.max_train_examples or len(examples)]
            expert = LocalLM.load(anti_dir, device=device)
            if adapter == "lora":
                expert_peft = attach_lora(expert.model, lora_settings(cfg), seed=ctx.seed)
            prompts = [task.render(ex, instruction=instruction) for ex in examples]
            sequences = [
                training_sequence(expert, p, task, ex)
                for p, ex in zip(prompts, examples, strict=True)
            ]
            cut = sum(
                sequence_cut(expert, p, task, ex) for p, ex in zip(prompts, examples, strict=True)
            )
            if cut:
                ctx.disclose(
                    "truncated",
                    f"{cut} of {len(sequences)} expert training sequences cut to the "
                    f"{expert.context_length}-token window (the prompt's start first)",
                )
            settings = {
                "learning_rate": cfg.learning_rate,
                "epochs": cfg.epochs,
                "batch_size": cfg.batch_size,
                "warmup_ratio": cfg.warmup_ratio,
                "seed": ctx.seed,
            }
            # alpha and dropout are not in the state the training cache's key digests
            lora = {"lora": lora_settings(cfg)} if adapter == "lora" else {}
            losses = ctx.train(
                "fine-tune expert",
                lambda: finetune(
                    expert,
                    sequences,
                    **settings,  # type: ignore[arg-type]
                    on_epoch=lambda epoch, loss: ctx.on_event(
                        "proxy_tuning_epoch", {"epoch": epoch, "loss": round(loss, 4)}
                    ),
                ),
                inputs={"sequences": sequences, **settings, **lora},
                state=[expert.model],
            )
            ctx.on_event(
                "proxy_tuning_expert",
                {
                    "examples": len(sequences),
                    "epochs": cfg.epochs,
                    "final_loss": losses[-1],
                    "losses": losses,  # per epoch, also when the training cache skipped it
                },
            )
        check_models(
            backend,
            {"anti_expert": anti_expert, "expert": expert},
            who="proxy-tuning",
            top_k_only=top_k,
        )
        return ProxyTuningPolicy(
            instruction=instruction,
            max_new_tokens=cfg.max_new_tokens,
            top_k_only=cfg.top_k_only,
            top_logprobs=cfg.top_logprobs,
            device=device,
            alpha=cfg.alpha,
            anti_expert=cfg.base,
            anti_expert_dir=str(Path(anti_dir).resolve()),
            anti_expert_digest=weights_digest(anti_dir),
            expert_dir=str(Path(expert_dir).resolve()) if expert_dir is not None else None,
            expert_digest=weights_digest(expert_dir) if expert_dir is not None else None,
            models={"expert": expert, "anti_expert": anti_expert},
            expert_peft=expert_peft,
        )


# --------------------------------------------------------------------------------------------
# Fine-tuning the expert.
# --------------------------------------------------------------------------------------------


def _target_ids(lm: LocalLM, task: TaskLike, example: Example) -> list[int]:
    text = " " + task.render_target(example)
    return [*lm.tokenizer(text, add_special_tokens=False)["input_ids"], lm.eos_id]


def sequence_cut(lm: LocalLM, prompt: str, task: TaskLike, example: Example) -> bool:
    """Whether `training_sequence` cuts this example to the model's window."""
    window = lm.context_length
    if not window:
        return False
    return len(lm.encode(prompt)) + len(_target_ids(lm, task, example)) > window


def training_sequence(
    lm: LocalLM, prompt: str, task: TaskLike, example: Example
) -> tuple[list[int], int]:
    """(ids, prompt length) of one SFT example: the prompt's ids as decoding reads them, then
    " " + the gold completion and EOS, cut from the prompt's left to the model's window."""
    target = _target_ids(lm, task, example)
    ids = lm.encode(prompt)
    window = lm.context_length or len(ids) + len(target)
    target = target[: max(1, window - 1)]
    ids = ids[max(0, len(ids) + len(target) - window) :]
    return ids + target, len(ids)


def finetune(
    lm: LocalLM,
    sequences: Sequence[tuple[list[int], int]],
    *,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    warmup_ratio: float,
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``lm`` in place on (ids, prompt length) sequences, cross-entropy on the tokens
    after the prompt; AdamW with linear warm-up and decay. Returns the mean loss per epoch."""
    import torch

    if not sequences:
        raise BenchError("proxy-tuning: no training sequences")
    torch.manual_seed(seed)
    model = lm.model
    model.train()
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=learning_rate, weight_decay=0.0)
    per_epoch = math.ceil(len(sequences) / batch_size)
    total = max(1, per_epoch * epochs)
    warmup = math.ceil(total * warmup_ratio)

    def schedule(step: int) -> float:  # transformers' get_linear_schedule_with_warmup
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    rng = random.Random(seed)
    history: list[float] = []
    order = list(range(len(sequences)))
    for epoch in range(epochs):
        rng.shuffle(order)
        losses: list[float] = []
        for lo in range(0, len(order), batch_size):
            batch = [sequences[i] for i in order[lo : lo + batch_size]]
            ids, mask, labels = sft_batch(batch, lm.eos_id, lm.device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.item()))
        history.append(sum(losses) / len(losses))
        if on_epoch is not None:
            on_epoch(epoch + 1, history[-1])
    model.eval()
    return history


# --------------------------------------------------------------------------------------------
# The policy.
# --------------------------------------------------------------------------------------------


@policy_types.register("proxy-tuning")
@dataclass
class ProxyTuningPolicy(DecodingPolicy):
    """The black box decoded with z_M + α(z_expert - z_anti-expert).

    Attributes:
        alpha: α.
        anti_expert: the anti-expert's name as configured (``zoo-small``).
        anti_expert_dir: its resolved local directory (policies get no resolver at load).
        anti_expert_digest: its weights' digest, checked at load.
        expert_dir: an off-the-shelf expert's directory; None: the fine-tuned expert, saved
            in the policy's directory (``expert/``, safetensors).
        expert_digest: the off-the-shelf expert's weights' digest.
        models: the loaded local models ("expert", "anti_expert").
        expert_peft: peft's wrapper of a LoRA-tuned expert (saved as its adapters, on the
            anti-expert as base), else None.
    """

    kind: ClassVar[str] = "proxy-tuning"
    alpha: float = 1.0
    anti_expert: str = "zoo-small"
    anti_expert_dir: str = ""
    anti_expert_digest: str | None = None
    expert_dir: str | None = None
    expert_digest: str | None = None
    models: dict[str, LocalLM] = field(default_factory=dict, repr=False, compare=False)
    expert_peft: Any = field(default=None, repr=False, compare=False)

    def white_boxes(self) -> Mapping[str, LocalLM]:
        return self.models

    def formula(self) -> Formula:
        alpha = self.alpha
        return lambda d: proxy_scores(d[BLACK_BOX], d["expert"], d["anti_expert"], alpha)

    def save_tensors(self, directory: Path) -> None:
        if self.expert_dir is None and self.expert_peft is not None:
            save_adapter(
                self.expert_peft,
                directory / EXPERT_DIR,
                base=self.anti_expert,
                base_dir=self.anti_expert_dir,
            )
        elif self.expert_dir is None:
            self.models["expert"].save(directory / EXPERT_DIR)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.decoding_json(),
            "alpha": self.alpha,
            "anti_expert": self.anti_expert,
            "anti_expert_dir": self.anti_expert_dir,
            "anti_expert_digest": self.anti_expert_digest,
            "expert_dir": self.expert_dir,
            "expert_digest": self.expert_digest,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], directory: Path) -> ProxyTuningPolicy:
        device = default_device()
        expert_dir = data.get("expert_dir")
        expert_peft = None
        if expert_dir is None:
            if not (directory / EXPERT_DIR).is_dir():
                raise BenchError(f"proxy-tuning: no expert weights under {directory}")
            if is_adapter_dir(directory / EXPERT_DIR):
                _, base_dir = adapter_base(directory / EXPERT_DIR, who=cls.kind)
                expert = LocalLM.load(base_dir, device=device)
                expert_peft = load_adapter(expert.model, directory / EXPERT_DIR)
                expert.model.eval()
            else:
                expert = LocalLM.load(directory / EXPERT_DIR, device=device)
        else:
            expert = load_recorded(
                expert_dir, data.get("expert_digest"), role="expert", who=cls.kind, device=device
            )
        anti_expert = load_recorded(
            str(data["anti_expert_dir"]),
            data.get("anti_expert_digest"),
            role=f"anti-expert ({data.get('anti_expert')})",
            who=cls.kind,
            device=device,
        )
        return cls(
            instruction=data.get("instruction"),
            max_new_tokens=data.get("max_new_tokens"),
            top_k_only=bool(data.get("top_k_only", False)),
            top_logprobs=int(data.get("top_logprobs", 5)),
            device=device,
            alpha=float(data["alpha"]),
            anti_expert=str(data.get("anti_expert", "")),
            anti_expert_dir=str(data["anti_expert_dir"]),
            anti_expert_digest=data.get("anti_expert_digest"),
            expert_dir=expert_dir,
            expert_digest=data.get("expert_digest"),
            models={"expert": expert, "anti_expert": anti_expert},
            expert_peft=expert_peft,
        )
