"""BBT: Black-Box Tuning of a continuous prompt by CMA-ES in a random subspace (Sun et al.,
ICML 2022, arXiv 2201.03514; official code txsun1997/Black-Box-Tuning, ``bbt.py``).

A prompt of n soft tokens, p ∈ R^{n·h} (h = the model's embedding width), is written p = A z
with z ∈ R^d (d = 500) and A a fixed random matrix drawn once from the seed. CMA-ES searches
z only, from z = 0; each candidate costs one "API call" in the paper's sense: one forward of
the black box over the whole k-shot training batch (k examples per class), scored by a loss on
the verbalizer. Every ``eval_every`` such calls the best z so far (lowest training loss) is
scored on a separate k-shot dev set, and the prompt with the best dev accuracy is kept. As in
the official code (``LMForwardAPI``: ``best_dev_perf = 0.0``, ``best_prompt = None``) z = 0 is
not scored and is not an incumbent: the first checkpoint with a dev accuracy above 0 is taken,
and a later one only if strictly better; z = 0 comes back only when every checkpoint scored 0
(``zero_incumbent=True`` scores z = 0 on dev first and makes it the prompt to beat). The
official checkpoint scores the candidate that happens to be the ``eval_every``-th call
(``checkpoint="current"``, the Config default and the ``paper`` preset). The budget is
counted in API calls as the paper counts them (train calls only); `BBT.plan` reports prompts
sent (calls × batch, plus the dev evaluations), the harness's unit.

Model access (why ``requires`` is {next_token_logits, prompt_embeds}): the loss needs the
black box's next-token distribution at the verbalizer position after a prompt that starts with
continuous vectors. For a causal model the verbalizer is scored at the next token after the
prompt: the first token of each label word (`label_token_ids`) read from
``backend.next_token_logprobs(prompts, soft_prompt=P)``. A backend that offers ``score`` (echo
logprobs of text) cannot carry soft prompts, so it is refused; the harness refuses any backend
without both capabilities before the cell runs. Only classification tasks with label words are
supported; others are refused with a one-line `BenchError`.

Random projection (``random_proj``), both inits of the official history:
- "normal" (current official default, since commit 3a41e5b, 2022-05-20): A ~ N(0, σ_A) with
  σ_A = alpha·σ_emb/(√d·sigma), σ_emb the std of all input-embedding entries
  (``backend.embedding_stats()``), so that with z ~ N(0, sigma²) the prompt's entries have
  the embeddings' scale (std alpha·σ_emb).
- "he" (the ICML-era code, ``bbt.py@618315f``): PyTorch's default ``nn.Linear`` init,
  Kaiming-uniform with a = √5, i.e. U(−1/√d, 1/√d); prompt entries then have std sigma/√3,
  several times the embeddings' scale on most models.

Optimizer (``optimizer``): "cma" is pycma's ``CMAEvolutionStrategy`` as in the current code
(``maxiter = budget // popsize``, ``seed``, bounds when ``bound > 0``, ``verbose=-9``);
"nevergrad" is nevergrad's CMA as in the first official commit (065100d). Today's
``ng.optimizers.CMA`` is a meta-optimizer that picks a variant from the budget and ignores a
population size, so the configured form of the CMA the official code got at the time,
``ng.optimizers.ParametrizedCMA(scale=sigma, popsize=popsize)``, is used; with bounds nevergrad
shrinks the step size (x0.15 for d >= 18) and folds candidates into the box itself.

Losses (``loss``, ``bbt.py`` ``calc_metric``): "ce" is cross-entropy over the label words only
(softmax restricted to the verbalizer columns); "hinge" is Σ_{c≠y} max(0, ℓ_c − ℓ_y + margin),
margin 2 (``metrics/*.py``: ``self.margin = 2``; ``utils.py`` ``hinge_loss``), averaged over
the batch. Both are invariant to a per-row shift, so log-probs give the same values as logits.

Deviations, and why:
- Soft prompts are prepended ("cat" mode with p0 = 0): the backend places soft vectors before
  the prompt's token embeddings and cannot add them to placeholder-token embeddings as the
  official default "add" mode does. So z = 0 is n zero vectors in front of the prompt, not the
  untouched placeholder tokens.
- Fewer soft tokens than the paper's n = 50 (presets use 5-10): the zoo model's whole context
  is 192 tokens, soft tokens occupy positions of it (and push the text to positions the model
  rarely saw in training), and on zoo-sentiment 50 zero vectors already cost about 10 points of
  accuracy against 5-10 (0.86 vs 0.94-0.97 on 64 test examples). d = 500 is kept.
- The causal verbalizer: BBT scores RoBERTa's [MASK]; here (as in its GPT-2 path) the first
  token after the task's rendered prompt (default instruction, ``Q: x`` / ``A:`` template).
- The light/medium/heavy presets checkpoint the best z so far by training loss
  (``checkpoint="best_train"``): with a few checkpoints, the candidate that happens to be the
  ``eval_every``-th call is a noisy pick. A final checkpoint is then added when the budget is
  not a multiple of ``eval_every``, and a z already scored on dev is not sent again (so calls
  may fall short of the plan, never exceed it). With no dev examples at all the best training
  z is returned.
- Dev sets of ``dev_k_shot`` examples per class (the official code draws k per class for
  both): the medium and heavy presets keep the paper's 16 per class on dev, so the search can
  move (with 4 per class, 8 examples, z = 0 already at 8/8 could never be beaten), while each
  training call stays at 4-8 per class to fit the prompt cap.
- Speed, not behaviour: the candidates of a generation are independent, so on a black box
  that says it is ``thread_safe`` (the harness's is) their calls go out at once, one thread
  each, and the server batches them; losses are then walked in the sequential order, so the
  checkpoints and the result are those of the one-by-one loop.
- Budgets: the official 8,000 calls × 32 prompts is 256,000 prompts, far over every harness
  cap. The light/medium/heavy presets trade k and the number of generations to fit 400 / 2,000
  / 10,000 prompts (``call_cap`` shrinks the budget further on tasks with more classes). At
  light budgets BBT barely moves: 5 generations of CMA-ES in 500 dimensions lower the training
  loss (zoo-sentiment, CE 0.46 -> 0.08). Before the official selection was restored, z = 0
  was an incumbent and on zoo-sentiment every preset returned it (dev at 0.875-1.0 already
  under verbalizer scoring, 0.945 test accuracy): BBT's gain over text-generating baselines
  there came from reading the verbalizer, not from the search. A cell that returns z = 0 is
  disclosed as "no change".

BBTv2 (deep prompts, ``deepbbt.py``) is not implemented: it adds A_l z_l to the hidden states
entering every layer and sizes A_l from per-layer hidden-state statistics, and the backend
offers neither per-layer inputs nor hidden states.
"""

from __future__ import annotations

import importlib
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from methods.base import (
    NEXT_TOKEN_LOGITS,
    PROMPT_EMBEDS,
    AdaptedPolicy,
    BlackBox,
    BlackBoxTuner,
    CallPlan,
    Example,
    Prediction,
    TaskLike,
    TuneContext,
    policy_types,
    register_method,
)
from methods.prompting import label_token_ids
from methods.registry import BenchError

SOFT_PROMPT_FILE = "soft_prompt.safetensors"


@dataclass(frozen=True)
class BBTConfig:
    #: d, the dimension CMA-ES searches (``bbt.py`` ``--intrinsic_dim`` 500; paper Sec. 4).
    intrinsic_dim: int = 500
    #: soft tokens n (``--n_prompt_tokens`` 50); the presets use 5-10 (see the module docstring).
    n_prompt_tokens: int = 50
    #: training examples per class, and as many per class for dev (``--k_shot`` 16;
    #: ``construct_true_few_shot_data``).
    k_shot: int = 16
    #: dev examples per class; None: ``k_shot``, as the official code draws them.
    dev_k_shot: int | None = None
    #: API calls (one forward over the k-shot batch each) (``--budget`` 8000).
    budget: int = 8_000
    #: CMA-ES population per generation (``--popsize`` 20).
    popsize: int = 20
    #: CMA-ES initial step size sigma0 (``--sigma`` 1).
    sigma: float = 1.0
    #: scale of the "normal" projection relative to the embeddings (``--alpha`` 1).
    alpha: float = 1.0
    #: box bound on z, 0 = unbounded (``--bound`` 0; the ICML-era code used 5).
    bound: float = 0.0
    #: training loss: "ce" or "hinge" (``--loss_type`` ce; the ICML-era default was hinge).
    loss: Literal["ce", "hinge"] = "ce"
    #: hinge margin (``metrics/*.py`` ``self.margin = 2``).
    margin: float = 2.0
    #: init of A: "normal" or "he" (``--random_proj`` normal; the ICML-era default was he).
    random_proj: Literal["normal", "he"] = "normal"
    #: "cma" (pycma, ``--alg CMA``) or "nevergrad" (the first official commit).
    optimizer: Literal["cma", "nevergrad"] = "cma"
    #: score a z on dev every this many API calls (``--eval_every`` 100).
    eval_every: int = 100
    #: which z a checkpoint scores: "current", the candidate of the ``eval_every``-th call
    #: (``LMForwardAPI.eval``), or "best_train", the lowest training loss so far.
    checkpoint: Literal["current", "best_train"] = "current"
    #: score z = 0 on dev first and keep it unless a checkpoint is strictly better (the
    #: official code has no such incumbent: ``best_dev_perf = 0.0``, ``best_prompt = None``).
    zero_incumbent: bool = False
    #: render prompts with the task's default instruction (BBT's template carries the task).
    with_instruction: bool = True
    #: a cap on prompts sent while tuning (train and dev); the budget shrinks to fit it. None
    #: in the paper preset; the harness caps (BUDGET_CALLS) in the others.
    call_cap: int | None = None


@register_method("bbt", "black-box-tuning")
class BBT(BlackBoxTuner):
    """Black-Box Tuning: a soft prompt A z, z searched by CMA-ES on the verbalizer loss."""

    Config = BBTConfig
    config: BBTConfig
    requires: ClassVar[frozenset[str]] = frozenset({PROMPT_EMBEDS, NEXT_TOKEN_LOGITS})
    variant: str | None = None
    # Prompts per preset on a two-class task (k per class → 2k prompts a call; dev_k per class
    # → 2·dev_k prompts a dev check, one per eval_every calls and a last one):
    #   light:  40 calls × 8 + 2 × 16                =   352 ≤ 400   (5 generations of 8)
    #   medium: 220 calls × 8 + 5 × 32               = 1,920 ≤ 2,000 (22 generations of 10)
    #   heavy:  560 calls × 16 + 6 × 32              = 9,152 ≤ 10,000 (28 generations of 20)
    # The paper preset is the Config's defaults: the official run (k = 16, 8,000 calls,
    # checkpoints of the current candidate, no z = 0 incumbent).
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "light": {
            "n_prompt_tokens": 5,
            "k_shot": 4,
            "dev_k_shot": 8,
            "budget": 40,
            "popsize": 8,
            "eval_every": 20,
            "checkpoint": "best_train",
            "call_cap": 400,
        },
        "medium": {
            "n_prompt_tokens": 10,
            "k_shot": 4,
            "dev_k_shot": 16,
            "budget": 220,
            "popsize": 10,
            "eval_every": 50,
            "checkpoint": "best_train",
            "call_cap": 2_000,
        },
        "heavy": {
            "n_prompt_tokens": 10,
            "k_shot": 8,
            "dev_k_shot": 16,
            "budget": 560,
            "popsize": 20,
            "eval_every": 100,
            "checkpoint": "best_train",
            "call_cap": 10_000,
        },
    }

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        cfg = self.config
        choices = {"loss": ("ce", "hinge"), "random_proj": ("normal", "he")}
        choices["optimizer"] = ("cma", "nevergrad")
        choices["checkpoint"] = ("current", "best_train")
        for name, valid in choices.items():
            if getattr(cfg, name) not in valid:
                raise BenchError(
                    f"bbt: bad {name} {getattr(cfg, name)!r}; valid: {', '.join(valid)}"
                )
        for name in ("intrinsic_dim", "n_prompt_tokens", "k_shot", "popsize", "eval_every"):
            if getattr(cfg, name) < 1:
                raise BenchError(f"bbt: {name} must be at least 1, got {getattr(cfg, name)}")
        if cfg.dev_k_shot is not None and cfg.dev_k_shot < 1:
            raise BenchError(f"bbt: dev_k_shot must be at least 1 (or None), got {cfg.dev_k_shot}")
        # The optimizer's library is imported here, when the runner builds the tuner, not in
        # `fit`: its import (about 2 s for pycma) is not tuning time, and a missing library is
        # a one-line error while planning instead of a failed cell. (Each valid optimizer
        # is named after its package.)
        try:
            importlib.import_module(cfg.optimizer)
        except ImportError as exc:
            raise BenchError(
                f"bbt: optimizer {cfg.optimizer!r} needs the {cfg.optimizer} package ({exc}); "
                f"install it or choose another: cma, nevergrad"
            ) from None

    # -- planning -------------------------------------------------------------------------

    def unsupported(self, task: TaskLike) -> str | None:
        if task.kind != "classification" or not task.labels:
            return "a classification task with label words"
        return None

    def plan(self, *, task: TaskLike, train: Sequence[Example], dev: Sequence[Example]) -> CallPlan:
        if task.kind != "classification" or not task.labels:
            return CallPlan(eval_samples_per_example=0.0)  # `fit` refuses the task
        batch, dev_size = _few_shot_sizes(train, dev, task.labels, *self._ks())
        calls, checks = self._schedule(batch, dev_size)
        instruction = self._instruction(task)
        return CallPlan(
            calls=calls * batch + checks * dev_size,
            samples=0,  # next-token distributions, no completions
            tune_prompt=task.render(train[0], instruction=instruction) if train else None,
            eval_prompt=task.render(train[0], instruction=instruction) if train else None,
            eval_calls_per_example=1.0,
            eval_samples_per_example=0.0,
        )

    def _schedule(self, batch: int, dev_size: int) -> tuple[int, int]:
        """(API calls, dev checks) the run may spend: whole generations within the budget, cut
        further until train and dev prompts fit ``call_cap``."""
        cfg = self.config
        generations = cfg.budget // cfg.popsize

        def checks(calls: int) -> int:
            # z = 0 if it is the incumbent, then one per eval_every calls (and, with
            # best_train, a last one: the ceiling counts it)
            if not dev_size:
                return 0
            every = (
                calls // cfg.eval_every
                if cfg.checkpoint == "current"
                else -(-calls // cfg.eval_every)
            )
            return int(cfg.zero_incumbent) + every

        def prompts(gens: int) -> int:
            calls = gens * cfg.popsize
            return calls * batch + checks(calls) * dev_size

        if cfg.call_cap is not None:
            while generations > 0 and prompts(generations) > cfg.call_cap:
                generations -= 1
        calls = generations * cfg.popsize
        return calls, checks(calls)

    # -- tuning ---------------------------------------------------------------------------

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
        labels = _classification_labels(task)
        rng = random.Random(ctx.seed)
        train_set, dev_set = true_few_shot(train, dev, labels, *self._ks(), rng)
        if not train_set:
            raise BenchError(f"bbt: task {task.name} has no training examples with label words")
        calls, _ = self._schedule(len(train_set), len(dev_set))
        self.variant = None
        if calls < cfg.budget // cfg.popsize * cfg.popsize:
            self.variant = f"budget={calls} (call cap {cfg.call_cap})"
            ctx.disclose(
                "k-reduced",
                f"{calls} API calls instead of {cfg.budget // cfg.popsize * cfg.popsize}, to "
                f"stay within call_cap={cfg.call_cap} prompts",
            )

        hidden, _, emb_std = backend.embedding_stats()
        limit = getattr(backend, "context_length", None)
        if limit and cfg.n_prompt_tokens >= limit:
            raise BenchError(
                f"bbt: {cfg.n_prompt_tokens} soft tokens fill the {limit}-token context window"
            )
        seeds = np.random.SeedSequence(ctx.seed).generate_state(2)
        projection = random_projection(
            cfg.random_proj,
            rows=cfg.n_prompt_tokens * hidden,
            dim=cfg.intrinsic_dim,
            emb_std=emb_std,
            alpha=cfg.alpha,
            sigma=cfg.sigma,
            rng=np.random.default_rng(int(seeds[0])),
        )
        instruction = self._instruction(task)
        columns = label_token_ids(labels, backend.vocabulary())

        def soft_prompt(z: np.ndarray) -> np.ndarray:
            return (projection @ z).reshape(cfg.n_prompt_tokens, hidden).astype(np.float32)

        def label_scores(examples: Sequence[Example], z: np.ndarray) -> np.ndarray:
            prompts = [task.render(ex, instruction=instruction) for ex in examples]
            return backend.next_token_logprobs(prompts, soft_prompt=soft_prompt(z))[:, columns]

        train_y = np.array([labels.index(ex.target) for ex in train_set])
        dev_y = np.array([labels.index(ex.target) for ex in dev_set])
        loss_fn = ce_loss if cfg.loss == "ce" else _hinge(cfg.margin)

        def train_loss(z: np.ndarray) -> float:
            return loss_fn(label_scores(train_set, z), train_y)

        def dev_accuracy(z: np.ndarray) -> float:
            return accuracy(label_scores(dev_set, z), dev_y)

        result = search(
            train_loss,
            dev_accuracy if dev_set else None,
            config=cfg,
            calls=calls,
            seed=int(seeds[1]) % (2**31 - 2) + 1,  # pycma: seed 0 means "from the clock"
            on_event=ctx.on_event,
            workers=cfg.popsize if getattr(backend, "thread_safe", False) else 1,
        )
        if not np.any(result.z):
            ctx.disclose(
                "no-change",
                f"returned its starting point z = 0 (zero soft prompt): no CMA-ES candidate of "
                f"{result.calls} calls was picked on dev ({result.dev_checks} dev checks)",
            )
        return SoftPromptPolicy(
            soft_prompt=soft_prompt(result.z),
            labels=labels,
            instruction=instruction,
            meta={
                "dev_accuracy": result.dev_accuracy,
                "train_loss": result.train_loss,
                "calls": result.calls,
                "dev_checks": result.dev_checks,
                "from_zero": bool(not np.any(result.z)),
            },
        )

    def _ks(self) -> tuple[int, int]:
        """Examples per class for training calls and for dev."""
        cfg = self.config
        return cfg.k_shot, cfg.k_shot if cfg.dev_k_shot is None else cfg.dev_k_shot

    def _instruction(self, task: TaskLike) -> str | None:
        return task.instructions[0] if self.config.with_instruction and task.instructions else None


# --------------------------------------------------------------------------------------------
# The search: CMA-ES over z with dev checkpoints.
# --------------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """The chosen z and how it was found.

    Attributes:
        z: the chosen point (best dev accuracy; z = 0 when no checkpoint was picked).
        dev_accuracy: its dev accuracy (None without dev examples, or for an unscored z = 0).
        train_loss: its training loss (None for z = 0, which is never a training call).
        calls: API calls spent (forwards over the training batch).
        dev_checks: dev evaluations sent (z = 0 included when it is the incumbent).
        history: (calls, best training loss so far) after each generation.
    """

    z: np.ndarray
    dev_accuracy: float | None
    train_loss: float | None
    calls: int
    dev_checks: int
    history: list[tuple[int, float]] = field(default_factory=list)


def search(
    train_loss: Callable[[np.ndarray], float],
    dev_accuracy: Callable[[np.ndarray], float] | None,
    *,
    config: BBTConfig,
    calls: int,
    seed: int,
    on_event: Callable[[str, Mapping[str, Any]], None] = lambda event, fields: None,
    workers: int = 1,
) -> SearchResult:
    """Minimise ``train_loss`` over z ∈ R^d with CMA-ES for at most ``calls`` evaluations,
    from z = 0; every ``eval_every`` calls score a z with ``dev_accuracy`` (``checkpoint``:
    the current candidate, or the best by training loss so far, then also at the end) and
    keep the best on dev, strictly better than earlier picks and than 0 (or, with
    ``zero_incumbent``, than z = 0 scored first). z = 0 comes back when nothing was picked.
    With ``workers`` > 1 the candidates of a generation are scored on that many threads at
    once (``train_loss`` must then be thread-safe); the result is the same."""
    cfg = config
    zero = np.zeros(cfg.intrinsic_dim)
    chosen, chosen_loss = zero, None
    # The official start: nothing picked, and a pick must beat dev accuracy 0.
    best_dev: float | None = None
    checks = 0
    if dev_accuracy is not None and cfg.zero_incumbent:
        best_dev = dev_accuracy(zero)
        checks = 1
        on_event("dev", {"calls": 0, "dev_accuracy": best_dev, "best_dev_accuracy": best_dev})
    best_z: np.ndarray | None = None
    best_loss = float("inf")
    checked: np.ndarray | None = None  # the last z sent to dev
    used = 0
    history: list[tuple[int, float]] = []

    def checkpoint(z: np.ndarray | None, loss: float) -> None:
        nonlocal chosen, chosen_loss, best_dev, checks, checked
        if z is None or dev_accuracy is None:
            return
        if checked is not None and np.array_equal(checked, z):
            return
        checked = z
        acc = dev_accuracy(z)
        checks += 1
        if acc > (0.0 if best_dev is None else best_dev):
            best_dev, chosen, chosen_loss = acc, z, loss
        on_event("dev", {"calls": used, "dev_accuracy": acc, "best_dev_accuracy": best_dev})

    optimizer = _make_optimizer(cfg, calls, seed)
    generation = 0
    pool = ThreadPoolExecutor(workers, thread_name_prefix="bbt") if workers > 1 else None
    try:
        while used + cfg.popsize <= calls and not optimizer.stop():
            candidates = optimizer.ask()
            # A generation's candidates do not depend on each other's losses: score them at
            # once, then walk them in order (checkpoints see the same best-so-far).
            scored = list(pool.map(train_loss, candidates)) if pool else None
            losses = []
            for i, z in enumerate(candidates):
                loss = float(scored[i] if scored is not None else train_loss(z))
                losses.append(loss)
                used += 1
                if loss < best_loss:
                    best_z, best_loss = np.array(z, dtype=float), loss
                if used % cfg.eval_every == 0:
                    if cfg.checkpoint == "current":
                        checkpoint(np.array(z, dtype=float), loss)
                    else:
                        checkpoint(best_z, best_loss)
            optimizer.tell(candidates, losses)
            generation += 1
            history.append((used, best_loss))
            on_event(
                "generation",
                {
                    "generation": generation,
                    "calls": used,
                    "loss_best": best_loss,
                    "loss_mean": float(np.mean(losses)),
                    "best_dev_accuracy": best_dev,
                },
            )
    finally:
        if pool is not None:
            pool.shutdown()
    if used % cfg.eval_every and cfg.checkpoint == "best_train":
        checkpoint(best_z, best_loss)
    if dev_accuracy is None and best_z is not None:
        chosen, chosen_loss = best_z, best_loss
    return SearchResult(chosen, best_dev, chosen_loss, used, checks, history)


class _Optimizer:
    """One generation at a time: `ask` candidates, `tell` their losses."""

    def ask(self) -> list[np.ndarray]:
        raise NotImplementedError

    def tell(self, candidates: list[np.ndarray], losses: list[float]) -> None:
        raise NotImplementedError

    def stop(self) -> bool:
        return False


class _PyCMA(_Optimizer):
    def __init__(self, cfg: BBTConfig, generations: int, seed: int):
        import cma

        options: dict[str, Any] = {
            "seed": seed,
            "popsize": cfg.popsize,
            "maxiter": max(generations, 1),
            "verbose": -9,
        }
        if cfg.bound > 0:
            options["bounds"] = [-cfg.bound, cfg.bound]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.es = cma.CMAEvolutionStrategy(cfg.intrinsic_dim * [0.0], cfg.sigma, options)

    def ask(self) -> list[np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [np.asarray(z, dtype=float) for z in self.es.ask()]

    def tell(self, candidates: list[np.ndarray], losses: list[float]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "flat fitness" on a plateau
            self.es.tell(candidates, losses)

    def stop(self) -> bool:
        return bool(self.es.stop())


class _NevergradCMA(_Optimizer):
    def __init__(self, cfg: BBTConfig, calls: int, seed: int):
        import nevergrad as ng

        param = ng.p.Array(shape=(cfg.intrinsic_dim,))
        if cfg.bound > 0:
            param = param.set_bounds(lower=-cfg.bound, upper=cfg.bound)
        param.random_state = np.random.RandomState(seed)
        family = ng.optimizers.ParametrizedCMA(scale=cfg.sigma, popsize=cfg.popsize)
        self.popsize = cfg.popsize
        self.opt = family(parametrization=param, budget=max(calls, 1), num_workers=1)
        self._asked: list[Any] = []

    def ask(self) -> list[np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._asked = [self.opt.ask() for _ in range(self.popsize)]
        return [np.asarray(c.value, dtype=float) for c in self._asked]

    def tell(self, candidates: list[np.ndarray], losses: list[float]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for cand, loss in zip(self._asked, losses, strict=True):
                self.opt.tell(cand, loss)


def _make_optimizer(cfg: BBTConfig, calls: int, seed: int) -> _Optimizer:
    if cfg.optimizer == "nevergrad":
        return _NevergradCMA(cfg, calls, seed)
    return _PyCMA(cfg, calls // cfg.popsize, seed)


# --------------------------------------------------------------------------------------------
# Pieces: projection, losses, data.
# --------------------------------------------------------------------------------------------


def random_projection(
    kind: str,
    *,
    rows: int,
    dim: int,
    emb_std: float,
    alpha: float = 1.0,
    sigma: float = 1.0,
    rng: np.random.Generator,
) -> np.ndarray:
    """A [rows, dim] matrix: "normal" N(0, alpha·emb_std/(√dim·sigma)) (current ``bbt.py``)
    or "he" U(−1/√dim, 1/√dim) (PyTorch's default Linear init, the ICML-era code)."""
    if kind == "normal":
        std = alpha * emb_std / (np.sqrt(dim) * sigma)
        return rng.normal(0.0, std, size=(rows, dim)).astype(np.float32)
    if kind == "he":
        bound = 1.0 / np.sqrt(dim)
        return rng.uniform(-bound, bound, size=(rows, dim)).astype(np.float32)
    raise BenchError(f"bbt: unknown random_proj {kind!r}; valid: normal, he")


def _finite(scores: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(scores), scores, -1e4)


def ce_loss(scores: np.ndarray, targets: np.ndarray) -> float:
    """Cross-entropy over the label columns ``scores`` [B, L] (logits or log-probs), mean over
    the batch (``bbt.py`` ``calc_metric``, ``loss_type='ce'``)."""
    scores = _finite(np.asarray(scores, dtype=np.float64))
    top = scores.max(axis=1, keepdims=True)
    logz = top[:, 0] + np.log(np.exp(scores - top).sum(axis=1))
    picked = scores[np.arange(len(targets)), targets]
    return float(np.mean(logz - picked))


def hinge_loss(scores: np.ndarray, targets: np.ndarray, margin: float = 2.0) -> float:
    """Σ_{c≠y} max(0, s_c − s_y + margin), mean over the batch (``utils.py`` ``hinge_loss``
    with reduction 'sum', divided by the batch size in ``calc_metric``)."""
    scores = _finite(np.asarray(scores, dtype=np.float64))
    rows = np.arange(len(targets))
    gaps = np.maximum(scores - scores[rows, targets][:, None] + margin, 0.0)
    gaps[rows, targets] = 0.0
    return float(gaps.sum() / len(targets))


def _hinge(margin: float) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda scores, targets: hinge_loss(scores, targets, margin)


def accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Share of rows whose highest label score is the target."""
    return float(np.mean(np.argmax(scores, axis=1) == targets)) if len(targets) else 0.0


def _classification_labels(task: TaskLike) -> tuple[str, ...]:
    if task.kind != "classification" or not task.labels:
        raise BenchError(
            f"bbt: task {task.name} is a {task.kind} task; BBT tunes a verbalizer and supports "
            "only classification tasks with label words"
        )
    return tuple(task.labels)


def true_few_shot(
    train: Sequence[Example],
    dev: Sequence[Example] | None,
    labels: Sequence[str],
    k: int,
    dev_k: int,
    rng: random.Random,
) -> tuple[list[Example], list[Example]]:
    """k examples per label from ``train`` (shuffled with ``rng``) and ``dev_k`` per label
    from ``dev``; without dev, the next ``dev_k`` per label of the shuffled train
    (``construct_true_few_shot_data``, where dev_k = k). Examples whose target is not a label
    are skipped."""
    order = list(train)
    rng.shuffle(order)
    train_count = dict.fromkeys(labels, 0)
    dev_count = dict.fromkeys(labels, 0)
    train_set: list[Example] = []
    dev_set: list[Example] = []
    for ex in order:
        if ex.target not in train_count:
            continue
        if train_count[ex.target] < k:
            train_set.append(ex)
            train_count[ex.target] += 1
        elif not dev and dev_count[ex.target] < dev_k:
            dev_set.append(ex)
            dev_count[ex.target] += 1
    if dev:
        pool = list(dev)
        rng.shuffle(pool)
        for ex in pool:
            if ex.target in dev_count and dev_count[ex.target] < dev_k:
                dev_set.append(ex)
                dev_count[ex.target] += 1
    return train_set, dev_set


def _few_shot_sizes(
    train: Sequence[Example],
    dev: Sequence[Example] | None,
    labels: Sequence[str],
    k: int,
    dev_k: int,
) -> tuple[int, int]:
    """Sizes of `true_few_shot`'s sets (they do not depend on the shuffle)."""
    in_train = [sum(ex.target == lab for ex in train) for lab in labels]
    batch = sum(min(k, n) for n in in_train)
    if dev:
        dev_size = sum(min(dev_k, sum(ex.target == lab for ex in dev)) for lab in labels)
    else:
        dev_size = sum(min(dev_k, max(0, n - k)) for n in in_train)
    return batch, dev_size


# --------------------------------------------------------------------------------------------
# The adapted policy.
# --------------------------------------------------------------------------------------------


@policy_types.register("soft-prompt")
@dataclass(eq=False)
class SoftPromptPolicy(AdaptedPolicy):
    """A soft prompt [n, hidden] placed before the task's rendered prompt; the answer is the
    label word whose first token is most likely next.

    Attributes:
        soft_prompt: the continuous prompt, float32 [n, hidden].
        labels: the verbalizer words, in label order.
        instruction: the instruction rendered into each prompt (None: the bare template).
        meta: how it was tuned (dev accuracy, calls), for the record.
    """

    kind: ClassVar[str] = "soft-prompt"
    soft_prompt: np.ndarray
    labels: tuple[str, ...]
    instruction: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def predict(
        self, examples: Sequence[Example], *, task: TaskLike, backend: BlackBox
    ) -> list[Prediction]:
        if not examples:
            return []
        columns = label_token_ids(self.labels, backend.vocabulary())
        prompts = [task.render(ex, instruction=self.instruction) for ex in examples]
        scores = backend.next_token_logprobs(prompts, soft_prompt=self.soft_prompt)[:, columns]
        out = []
        for ex, row, prompt in zip(examples, scores, prompts, strict=True):
            label = self.labels[int(np.argmax(row))]
            out.append(
                Prediction(
                    ex.id,
                    label,
                    task.extract(label, ex) or label,
                    {"label_logprobs": [round(float(v), 4) for v in row]},
                    prompt=prompt,  # the soft prompt's vectors go before it
                )
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "instruction": self.instruction,
            "tensors": SOFT_PROMPT_FILE,
            "shape": list(self.soft_prompt.shape),
            "meta": dict(self.meta),
        }

    def save_tensors(self, directory: Path) -> None:
        from safetensors.numpy import save_file

        array = np.ascontiguousarray(self.soft_prompt, dtype=np.float32)
        save_file({"soft_prompt": array}, str(directory / SOFT_PROMPT_FILE))

    @classmethod
    def from_json(cls, data: Mapping[str, Any], directory: Path) -> SoftPromptPolicy:
        from safetensors.numpy import load_file

        path = directory / str(data.get("tensors", SOFT_PROMPT_FILE))
        if not path.exists():
            raise BenchError(f"soft-prompt policy: {path} is missing")
        return cls(
            soft_prompt=load_file(str(path))["soft_prompt"],
            labels=tuple(data["labels"]),
            instruction=data.get("instruction"),
            meta=dict(data.get("meta") or {}),
        )
