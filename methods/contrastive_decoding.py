"""Contrastive decoding: the black box (expert) decoded against a small amateur LM.

Two variants (``variant``):

- ``"li"``: Li et al., ACL 2023 (XiangLi1999/ContrastiveDecoding). Over the continuation,
  maximise Σ [log p_EXP(x_i|x_<i) - λ·log p_AMA(x_i|x_<i)/τ] over tokens in the plausible head
  V_head = {w : p_EXP(w) ≥ α·max_v p_EXP(v)}, every other token scoring -inf. The official
  beam path (generation_utils.py L2500-2680, decoder_helper.py ``post_process_reweight``):
  expert log-softmax masked at ``max + log α`` (``EntrPLogitsWarper``, α = 0.1), amateur
  log-softmax divided by τ (its "temperature" warper, not renormalised), a token the amateur
  gives -inf excluded, beam search with 5 beams. The amateur reads only the prompt's LAST
  token plus the continuation (``--ignore_prefix yes``, the CLI default; issues #4, #7: needed
  for the paper's coherence).
- ``"obrien"``: O'Brien & Lewis 2023 (no official code; the paper's pseudo-code): in logit
  space, s = (1+β)·z_E - β·z_A with β = 0.5, tokens with z_E < log α + max z_E set to -inf
  (the same α = 0.1 head), greedy; the amateur reads the whole prompt.

The expert is the black box (its full next-token distribution, one call per decoding step
with all live sequences batched); the amateur is ``zoo-small``, untuned (the paper's GPT-2
small against GPT-2 XL: the zoo's small and large models share one tokenizer). The black
box's `vocabulary()` must equal the amateur's, or the method refuses. Decoding is
`methods.decoding.decode`; this file supplies the formulas. Nothing is trained and no tuning
calls are made.

Deviations, and why:
- The plausibility mask applies on every path. The official greedy path sets
  ``relative_top=None`` (no mask, generation_utils.py L1340-1345), a quirk the paper does not
  describe; greedy decoding (``num_beams=1``) here keeps the mask.
- Beam search ranks candidates by beam score + masked contrastive score over all beams and
  keeps the top ``num_beams``; the official code first takes the top 2·beams tokens by the
  expert's raw per-step log-prob (flattened over beams, beam scores ignored) and only
  re-ranks those. An example ends when ``num_beams`` hypotheses have finished (EOS, a stop
  string or the length cap; HF's ``early_stopping=True``), and hypotheses rank by score /
  tokens^``length_penalty`` (1.0, HF's default).
- The paper's open-ended setting forces 256 new tokens (``min_length = max_length``); here an
  answer ends at EOS or the task's stop strings, capped at the task's ``max_tokens``.
- The light preset decodes greedily (one beam) for cost: beam search multiplies the black-box
  calls per token by the beam count.
- τ: λ = 1.0 and τ = 0.5 are the paper's runs for the GPT-2 family (``submit_decoding.py``,
  e.g. ``gpt2-1.0-t0.5_gpt2-xl``), not the CLI defaults (0.5 and 1.0).
- Top-k approximation: where the backend has only top-k ``logprobs``, each step asks for one
  greedy token with its top-``top_logprobs`` alternatives and the contrast is taken over those
  tokens only (reported as the variant "top-k logprobs approximation (k=...)"); the α head is
  then cut at k.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

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
from methods.decoding import (
    BLACK_BOX,
    ContextMode,
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

VARIANTS: tuple[str, ...] = ("li", "obrien")
#: beams per variant when ``num_beams`` is None: Li's ``--num_beam 5`` (run_generation.py),
#: O'Brien & Lewis' greedy decoding.
DEFAULT_BEAMS: dict[str, int] = {"li": 5, "obrien": 1}
#: the amateur's context per variant when ``amateur_context`` is None.
DEFAULT_CONTEXT: dict[str, ContextMode] = {"li": "last_token", "obrien": "full"}


def plausibility_mask(expert: torch.Tensor, alpha: float) -> torch.Tensor:
    """V_head: tokens with p_EXP ≥ α·max p_EXP, i.e. log p ≥ max log p + log α (the same
    cutoff on raw logits, a row's constant shift aside)."""
    cutoff = expert.max(dim=-1, keepdim=True).values + math.log(alpha)
    return expert >= cutoff


def li_scores(
    expert: torch.Tensor, amateur: torch.Tensor, *, alpha: float, st_coef: float, tau: float
) -> torch.Tensor:
    """log p_EXP - λ·log p_AMA / τ on V_head, -inf elsewhere (and where the amateur gives
    -inf, which the official code turns to +inf so the token is never chosen)."""
    scores = expert - st_coef * amateur / tau
    allowed = plausibility_mask(expert, alpha) & (amateur > -math.inf)
    return scores.masked_fill(~allowed, -math.inf)


def obrien_scores(
    expert: torch.Tensor, amateur: torch.Tensor, *, alpha: float, beta: float
) -> torch.Tensor:
    """(1+β)·z_E - β·z_A on the α head, -inf elsewhere (O'Brien & Lewis)."""
    scores = (1 + beta) * expert - beta * amateur
    allowed = plausibility_mask(expert, alpha) & (amateur > -math.inf)
    return scores.masked_fill(~allowed, -math.inf)


@dataclass(frozen=True)
class ContrastiveDecodingConfig:
    #: "li" (Li et al. 2023, the objective with λ, τ and beams) or "obrien" (O'Brien & Lewis
    #: 2023, β in logit space, greedy).
    variant: str = "li"
    #: the amateur LM (the paper's GPT-2 small / OPT-125M; here the zoo's small model).
    amateur: str = "zoo-small"
    #: α of the plausibility head: 0.1 (Li: ``relative_top``, hard-coded, generation_utils.py
    #: L1391/L1542; O'Brien & Lewis: α = 0.1, Figure 3).
    alpha: float = 0.1
    #: Li's λ (``st_coef``) on the amateur: 1.0, the paper's runs (submit_decoding.py; the
    #: CLI default is 0.5).
    st_coef: float = 1.0
    #: Li's amateur temperature τ: 0.5, the paper's runs for GPT-2 (submit_decoding.py
    #: ``gpt2-1.0-t0.5_gpt2-xl``; 1.0 for OPT and the CLI default).
    amateur_temperature: float = 0.5
    #: O'Brien & Lewis' β: 0.5 ("β = 0.5 tends to give good results across expert sizes").
    beta: float = 0.5
    #: beams; None: the variant's (Li: 5, run_generation.py ``--num_beam``; O'Brien: 1).
    num_beams: int | None = None
    #: a finished beam ranks by score / tokens^length_penalty: 1.0 (HF's default).
    length_penalty: float = 1.0
    #: what the amateur reads of the prompt: "full" or "last_token"; None: the variant's
    #: (Li: "last_token", ``--ignore_prefix yes``; O'Brien: "full").
    amateur_context: str | None = None
    #: which of the task's instructions the prompt carries (0: its default).
    instruction_index: int = 0
    #: answer length cap; None: the task's ``max_tokens``.
    max_new_tokens: int | None = None
    #: k of the top-k approximation (backends with top-k logprobs only).
    top_logprobs: int = 5
    #: use the top-k approximation even where the full distribution is served.
    top_k_only: bool = False


@register_method("contrastive-decoding", "contrastive_decoding", "cd")
class ContrastiveDecoding(BlackBoxTuner):
    """Contrastive decoding: the black box's log-probs minus an amateur's, on the α head."""

    Config = ContrastiveDecodingConfig
    config: ContrastiveDecodingConfig
    requires = frozenset({f"{NEXT_TOKEN_LOGITS}|{LOGPROBS}"})
    uses_white_box = True
    companions: ClassVar[Mapping[str, CompanionRole]] = {"amateur": "token"}
    variant: str | None = None
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        # Nothing is tuned: the presets only set the inference cost. Greedy in light (one
        # black-box call per token), the variant's own beams in medium and heavy.
        "light": {"num_beams": 1},
        "medium": {},
        "heavy": {},
    }

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        cfg = self.config
        if cfg.variant not in VARIANTS:
            raise BenchError(
                f"contrastive-decoding: unknown variant {cfg.variant!r}; valid: "
                f"{', '.join(VARIANTS)}"
            )
        if cfg.amateur_context not in (None, "full", "last_token"):
            raise BenchError(
                f"contrastive-decoding: bad amateur_context {cfg.amateur_context!r}; valid: "
                "full, last_token"
            )
        if not 0 < cfg.alpha <= 1:
            raise BenchError(f"contrastive-decoding: alpha must be in (0, 1], got {cfg.alpha}")
        if cfg.amateur_temperature <= 0:
            raise BenchError("contrastive-decoding: amateur_temperature must be positive")
        if self.beams < 1:
            raise BenchError(f"contrastive-decoding: num_beams must be >= 1, got {self.beams}")

    @property
    def beams(self) -> int:
        cfg = self.config
        return cfg.num_beams if cfg.num_beams is not None else DEFAULT_BEAMS[cfg.variant]

    def plan(self, *, task: TaskLike, train: Sequence[Example], dev: Sequence[Example]) -> CallPlan:
        steps = self.config.max_new_tokens or task.max_tokens
        instruction = task_instruction(task, self.config.instruction_index)
        example = train[0] if train else (dev[0] if dev else None)
        return CallPlan(
            calls=0,
            eval_prompt=task.render(example, instruction=instruction) if example else None,
            # One black-box call per live beam per decoded token: an upper bound.
            eval_calls_per_example=float(steps * self.beams),
            # Completion tokens: none with full distributions, one per call with top-k.
            eval_samples_per_example=steps * self.beams / max(1, task.max_tokens),
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
        top_k = top_k_mode(backend, cfg.top_k_only, "contrastive-decoding")
        self.variant = f"top-k logprobs approximation (k={cfg.top_logprobs})" if top_k else None
        if top_k:
            ctx.disclose("substitute", top_k_detail(backend, cfg.top_logprobs, cfg.top_k_only))
        device = default_device(ctx.device)
        amateur_dir = ctx.resolve_model(cfg.amateur)
        amateur = LocalLM.load(amateur_dir, device=device)
        check_models(backend, {"amateur": amateur}, who="contrastive-decoding", top_k_only=top_k)
        context_mode = cfg.amateur_context or DEFAULT_CONTEXT[cfg.variant]
        ctx.on_event(
            "contrastive_decoding_ready",
            {"variant": cfg.variant, "beams": self.beams, "amateur_context": context_mode},
        )
        return ContrastiveDecodingPolicy(
            instruction=task_instruction(task, cfg.instruction_index),
            max_new_tokens=cfg.max_new_tokens,
            top_k_only=cfg.top_k_only,
            top_logprobs=cfg.top_logprobs,
            device=device,
            variant=cfg.variant,
            alpha=cfg.alpha,
            st_coef=cfg.st_coef,
            amateur_temperature=cfg.amateur_temperature,
            beta=cfg.beta,
            num_beams=self.beams,
            length_penalty=cfg.length_penalty,
            amateur_context=context_mode,
            amateur=cfg.amateur,
            amateur_dir=str(Path(amateur_dir).resolve()),
            amateur_digest=weights_digest(amateur_dir),
            models={"amateur": amateur},
        )


@policy_types.register("contrastive-decoding")
@dataclass
class ContrastiveDecodingPolicy(DecodingPolicy):
    """The black box decoded against the amateur (Li et al. or O'Brien & Lewis scores).

    Attributes: the method's hyperparameters as resolved for this run, and the amateur's
    name, resolved directory (policies get no resolver at load) and weights' digest.
    """

    kind: ClassVar[str] = "contrastive-decoding"
    variant: str = "li"
    alpha: float = 0.1
    st_coef: float = 1.0
    amateur_temperature: float = 0.5
    beta: float = 0.5
    num_beams: int = 5
    length_penalty: float = 1.0
    amateur_context: str = "last_token"
    amateur: str = "zoo-small"
    amateur_dir: str = ""
    amateur_digest: str | None = None
    models: dict[str, LocalLM] = field(default_factory=dict, repr=False, compare=False)

    def white_boxes(self) -> Mapping[str, LocalLM]:
        return self.models

    def formula(self) -> Formula:
        alpha = self.alpha
        if self.variant == "obrien":
            beta = self.beta
            return lambda d: obrien_scores(d[BLACK_BOX], d["amateur"], alpha=alpha, beta=beta)
        st_coef, tau = self.st_coef, self.amateur_temperature
        return lambda d: li_scores(
            d[BLACK_BOX], d["amateur"], alpha=alpha, st_coef=st_coef, tau=tau
        )

    def contexts(self) -> Mapping[str, ContextMode]:
        mode: ContextMode = "last_token" if self.amateur_context == "last_token" else "full"
        return {"amateur": mode}

    def beams(self) -> tuple[int, float]:
        return self.num_beams, self.length_penalty

    def to_json(self) -> dict[str, Any]:
        return {
            **self.decoding_json(),
            "variant": self.variant,
            "alpha": self.alpha,
            "st_coef": self.st_coef,
            "amateur_temperature": self.amateur_temperature,
            "beta": self.beta,
            "num_beams": self.num_beams,
            "length_penalty": self.length_penalty,
            "amateur_context": self.amateur_context,
            "amateur": self.amateur,
            "amateur_dir": self.amateur_dir,
            "amateur_digest": self.amateur_digest,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], directory: Path) -> ContrastiveDecodingPolicy:
        device = default_device()
        amateur = load_recorded(
            str(data["amateur_dir"]),
            data.get("amateur_digest"),
            role=f"amateur ({data.get('amateur')})",
            who=cls.kind,
            device=device,
        )
        return cls(
            instruction=data.get("instruction"),
            max_new_tokens=data.get("max_new_tokens"),
            top_k_only=bool(data.get("top_k_only", False)),
            top_logprobs=int(data.get("top_logprobs", 5)),
            device=device,
            variant=str(data["variant"]),
            alpha=float(data["alpha"]),
            st_coef=float(data["st_coef"]),
            amateur_temperature=float(data["amateur_temperature"]),
            beta=float(data["beta"]),
            num_beams=int(data["num_beams"]),
            length_penalty=float(data["length_penalty"]),
            amateur_context=str(data["amateur_context"]),
            amateur=str(data.get("amateur", "")),
            amateur_dir=str(data["amateur_dir"]),
            amateur_digest=data.get("amateur_digest"),
            models={"amateur": amateur},
        )
