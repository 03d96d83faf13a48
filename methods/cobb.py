"""CoBB: Correct for improving QA reasoning of Black-Box LLMs (Kim, Kim & Yang, "Learning to
Correct for QA Reasoning with Black-box LLMs", EMNLP 2024, arXiv 2406.18695; the official
repository bbuing9/CoBB holds a README only, so every setting below is either the paper's
description or our choice, said as such).

1. Collect: for each training question, K chains of thought sampled from the black box
   (temperature 1, the task's prompt with its default instruction; one call per question with
   ``n = K``). Each chain is correct iff the task scores its parsed answer 1.
2. Pair: every (input chain, correct chain, incorrect chain) of a question is a candidate
   tuple (q, y_in, y+, y-): the input is any of the question's chains (correct or not), the
   target a correct one, the contrast an incorrect one. Texts are de-duplicated per question
   first (a chain sampled twice is one chain). The count grows as K^3 per question.
3. Select: a subset of ``pairs_per_question`` x (questions with tuples) tuples whose statistics
   match the whole collection, found by a genetic algorithm (`select_subset`). The paper
   minimises "the statistical divergence between the sampled subset and the entire
   collection"; its features and divergence are not published in code, so ours are explicit:
   each tuple is described by five features, (1) whether the input chain is correct, (2) the
   input chain's length, (3) the correct chain's length, (4) the incorrect chain's length (in
   corrector tokens), and (5) the question's correct rate among its K samples; the divergence
   is the sum over features of the 1-D Wasserstein-1 distance between the subset's and the
   collection's empirical distributions, each divided by the feature's standard deviation on
   the collection (so no feature dominates by its unit). Wasserstein-1 is exact for
   empirical distributions and cheap on the collection's sorted distinct values.
   GA: a population of subsets (index sets of fixed size), tournament selection, crossover
   by drawing the child's indices from the union of its two parents, mutation by swapping
   each index for an unused one with a small probability, elitism; fitness = -divergence.
4. Train the corrector (``zoo-small``; the paper's is Mistral-7B-Instruct-v0.2) with ORPO:
   L = -log p(y+ | q, y_in) + λ · -log σ(log odds(y+) - log odds(y-)), odds on the
   length-normalised likelihood (`methods.corrector.orpo_loss`).
5. Inference: one greedy black-box answer per example, rewritten greedily by the corrector;
   the prediction is the task's extraction from the rewrite (`CorrectorPolicy`).

Choices (no official code):
- K = 8 samples (``samples``): enough to see both correct and incorrect chains for questions
  the black box solves between 15% and 85% of the time, while K^3 tuples per question stay a
  few hundred. λ = 0.1 and the optimiser (lr 5e-6, inverse-sqrt schedule with 200 warmup
  steps, 5 epochs, batch 32 = 8 x 4 GPUs) are ORPO's own recipe for Mistral-7B
  (xfactlab/orpo ``scripts/run_mistral_orpo_beta.sh``), CoBB's adaptation model's family.
  The GA settings (population 50, 100 generations, mutation 0.01 per index, tournament 3,
  2 elites) are ours; the subset size is 4 tuples per question.
- Questions without a correct sample: the gold completion (`TaskLike.render_target`) is their
  correct chain (``gold_positive="fallback"``); whether the paper does this is not stated in
  what we could read (it needs gold answers only to label samples). Without it, the questions
  the black box never solves, the ones that most need correcting, give no training signal.
  "never" drops them; "always" adds the gold completion to every question's correct chains.
- Questions whose samples are all correct have no incorrect chain, hence no tuple, and are
  dropped (ORPO needs a rejected answer). If no question has a tuple at all, the corrector
  is trained by SFT on (input, correct chain) instead, and `CoBB.variant` says so.
- The correction prompt is Aligner's (`methods.corrector.TEMPLATES`; CoBB's own prompt is not
  published), "compact" in the budget presets for the zoo's 192-token context.
- The budget presets raise the learning rate to 3e-4 and use small batches and 2-3 epochs,
  as for Aligner: ORPO's 5e-6 is for a pretrained 7B model (see `methods.aligner`).
- Inputs are sampled chains (T = 1) in training and the greedy chain at inference, as the
  paper's pipeline implies; the dev split is unused (fixed epochs).
- LoRA for pretrained correctors (``adapter="auto"``, as Aligner's, `methods.adapters`): the
  paper's ORPO fine-tunes all weights; a zoo corrector still does, a pretrained one (SmolLM2-
  135M and up) trains LoRA adapters (Hu et al. 2021, Table 11: r 4, α 32, dropout 0.1 on the
  query and value projections) and a cell saves those (under 1 MB) instead of a 538 MB copy.
  ``adapter="full"`` restores the full fine-tune, saved whole.
- Learning rate and batch size at the pretrained scale (`CoBB.pretrained_presets`, instead of
  the zoo-tuned budget values unless set explicitly): with LoRA lr 2e-4 and batch 8 (Hu et
  al. 2021, Table 11); with a full fine-tune ORPO's lr 5e-6 (run_mistral_orpo_beta.sh).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from methods.adapters import config_for_model, lora_settings
from methods.base import (
    AdaptedPolicy,
    BlackBox,
    BlackBoxTuner,
    CallPlan,
    CompanionRole,
    Example,
    TaskLike,
    TuneContext,
    register_method,
)
from methods.corrector import (
    DEFAULT_CORRECTOR,
    Corrector,
    CorrectorPolicy,
    PreferenceTuple,
    TrainSettings,
    Triple,
    correction_template,
    corrector_plan,
    generation_room,
    is_correct,
    question_text,
    questions_used,
    train_orpo,
    train_sft,
    upstream_answers,
)
from methods.registry import BenchError

GOLD_POSITIVE = ("never", "fallback", "always")
#: the tuple features the subset search matches, in `CollectedTuple.features` order.
FEATURES = ("input_correct", "input_len", "chosen_len", "rejected_len", "question_accuracy")


@dataclass(frozen=True)
class CoBBConfig:
    #: the corrector's backbone: a zoo model name or a local causal-LM directory (the paper
    #: adapts Mistral-7B-Instruct-v0.2).
    corrector: str = DEFAULT_CORRECTOR
    #: correction prompt (`methods.corrector.TEMPLATES`): CoBB's is unpublished, Aligner's
    #: current template is used.
    template: str = "current"
    #: training questions drawn (seeded) from the train split; None = all of them.
    n_questions: int | None = None
    #: K, chains sampled per question in one call (n = K); ours, see the module docstring.
    samples: int = 8
    #: sampling temperature of the K chains (the paper samples at T > 0).
    temperature: float = 1.0
    #: the task instruction the black box answers with (0 = the default).
    instruction_index: int = 0
    #: a chain is correct when its parsed answer scores at least this.
    correct_threshold: float = 1.0
    #: when the gold completion is a correct chain: "never", "fallback" (questions without a
    #: correct sample), "always".
    gold_positive: str = "fallback"
    #: tuples kept per question that has tuples (the subset size); ours.
    pairs_per_question: float = 4.0
    #: GA population (subsets); ours.
    ga_population: int = 50
    #: GA generations; ours.
    ga_generations: int = 100
    #: GA mutation: probability that each index of a child is swapped for an unused one.
    ga_mutation: float = 0.01
    #: GA tournament size for parent selection.
    ga_tournament: int = 3
    #: GA elites copied unchanged into the next generation.
    ga_elite: int = 2
    #: ORPO's λ (xfactlab/orpo run_mistral_orpo_beta.sh ``--alpha 0.1``; TRL's beta 0.1).
    lam: float = 0.1
    #: run_mistral_orpo_beta.sh ``--num_train_epochs 5``.
    epochs: int = 5
    #: run_mistral_orpo_beta.sh ``--lr 5e-6``.
    lr: float = 5e-6
    #: run_mistral_orpo_beta.sh ``--per_device_train_batch_size 8`` on 4 A100s.
    batch_size: int = 32
    #: run_mistral_orpo_beta.sh ``--lr_scheduler_type inverse_sqrt``.
    schedule: str = "inverse_sqrt"
    #: run_mistral_orpo_beta.sh ``--warmup_steps 200`` (capped at a tenth of training).
    warmup_steps: int = 200
    #: transformers' default (the script sets none).
    weight_decay: float = 0.0
    #: run_mistral_orpo_beta.sh ``--response_max_length 2048`` (cut to the corrector's context).
    max_length: int = 2048
    #: answer with the black box's own answer when the rewrite has none (not in the paper).
    fallback: bool = False
    #: what trains: "full" (all weights, as ORPO), "lora" (adapters, base frozen), or
    #: "auto": full for a zoo corrector, LoRA for a pretrained one (ours; module docstring).
    adapter: Literal["auto", "full", "lora"] = "auto"
    #: LoRA rank r: 4 (Hu et al. 2021, Table 11, GPT-2 M/L on E2E).
    lora_rank: int = 4
    #: LoRA α: 32 (ibid.).
    lora_alpha: int = 32
    #: LoRA dropout: 0.1 (ibid.).
    lora_dropout: float = 0.1
    #: adapted modules; None: peft's default per architecture (query and value projections).
    lora_targets: tuple[str, ...] | None = None


#: hyperparameters of a pretrained corrector, by adapter (`methods.adapters.config_for_model`).
PRETRAINED_PRESETS: Mapping[str, Mapping[str, Any]] = {
    # Hu et al. 2021, Table 11 (GPT-2 M/L, E2E): lr 2e-4, batch 8.
    "lora": {"lr": 2e-4, "batch_size": 8},
    # run_mistral_orpo_beta.sh: --lr 5e-6 (a full fine-tune of a pretrained model).
    "full": {"lr": 5e-6},
}


@dataclass(frozen=True)
class CollectedTuple:
    """A candidate training tuple and the statistics the subset search matches."""

    pair: PreferenceTuple
    input_correct: bool
    question_accuracy: float
    lengths: tuple[int, int, int]  # input, chosen, rejected (tokens)

    def features(self) -> list[float]:
        return [float(self.input_correct), *map(float, self.lengths), self.question_accuracy]


@register_method("cobb")
class CoBB(BlackBoxTuner):
    """CoBB: a corrector trained with ORPO on (question, sampled chain, correct chain,
    incorrect chain) tuples chosen by a genetic subset search; rewrites the black box's
    answers at inference."""

    Config = CoBBConfig
    config: CoBBConfig
    uses_white_box: ClassVar[bool] = True
    companions: ClassVar[Mapping[str, CompanionRole]] = {"corrector": "corrector"}
    variant: str | None = None
    pretrained_presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRETRAINED_PRESETS
    # Questions (= tuning calls, each with n = K) within 400 / 2,000 / 10,000. Learning rate
    # and template as Aligner's presets (zoo-small, 192-token context); fewer epochs than
    # ORPO's 5 because each tuple costs two sequences.
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "light": {
            "n_questions": 300,
            "samples": 4,
            "pairs_per_question": 2.0,
            "ga_population": 30,
            "ga_generations": 40,
            "epochs": 2,
            "lr": 3e-4,
            "batch_size": 8,
            "warmup_steps": 10,
            "template": "compact",
        },
        "medium": {
            "n_questions": 1500,
            "samples": 8,
            "pairs_per_question": 3.0,
            "epochs": 3,
            "lr": 3e-4,
            "batch_size": 16,
            "warmup_steps": 50,
            "template": "compact",
        },
        "heavy": {
            "n_questions": 8000,
            "samples": 8,
            "pairs_per_question": 4.0,
            "epochs": 3,
            "lr": 3e-4,
            "batch_size": 32,
            "warmup_steps": 100,
            "template": "compact",
        },
    }

    def plan(self, *, task: TaskLike, train: Sequence[Example], dev: Sequence[Example]) -> CallPlan:
        return corrector_plan(
            task,
            train,
            n_questions=self.config.n_questions,
            instruction_index=self.config.instruction_index,
            samples_per_question=self.config.samples,
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
        if cfg.gold_positive not in GOLD_POSITIVE:
            raise BenchError(
                f"cobb: gold_positive {cfg.gold_positive!r}; valid: {', '.join(GOLD_POSITIVE)}"
            )
        ctx = context or TuneContext()
        model_dir = ctx.resolve_model(cfg.corrector)
        cfg, adapter, scaled = config_for_model(
            cfg, model_dir, table=self.pretrained_presets, explicit=self.explicit, who="cobb"
        )
        if adapter == "lora" or scaled:
            ctx.on_event("corrector", {"adapter": adapter, **scaled})
        self.config = cfg  # the record shows the values trained with
        self.variant = None
        rng = random.Random(ctx.seed)
        questions = rng.sample(list(train), questions_used(train, self.config.n_questions))
        chains = upstream_answers(
            questions,
            task=task,
            backend=backend,
            instruction_index=cfg.instruction_index,
            n=cfg.samples,
            temperature=cfg.temperature,
            seed=ctx.seed,
        )
        corrector = Corrector.load(
            model_dir,
            correction_template(cfg.template),
            max_length=cfg.max_length,
            device=ctx.device,
        )
        if adapter == "lora":
            corrector.use_lora(
                lora_settings(cfg), base=cfg.corrector, base_dir=model_dir, seed=ctx.seed
            )
        collection = collect_tuples(
            questions,
            [[c.text for c in outs] for outs in chains],
            task=task,
            count=corrector.count,
            gold_positive=cfg.gold_positive,
            threshold=cfg.correct_threshold,
        )
        with_tuples = len({t.pair.question for t in collection})
        size = min(len(collection), max(1, round(cfg.pairs_per_question * with_tuples)))
        features = np.array([t.features() for t in collection], dtype=float).reshape(
            len(collection), len(FEATURES)
        )
        ga: dict[str, Any] = {
            "population": cfg.ga_population,
            "generations": cfg.ga_generations,
            "mutation": cfg.ga_mutation,
            "tournament": cfg.ga_tournament,
            "elite": cfg.ga_elite,
        }

        def search() -> tuple[list[int], float]:
            picked, div = select_subset(features, size, **ga, rng=np.random.default_rng(ctx.seed))
            return [int(i) for i in picked], float(div)

        chosen, divergence = ctx.train(
            "subset search",
            search,
            inputs={"features": features, "size": size, **ga, "seed": ctx.seed},
        )
        subset = [collection[i].pair for i in chosen]
        labels = [
            [is_correct(task, c.text, ex, cfg.correct_threshold) for c in outs]
            for ex, outs in zip(questions, chains, strict=True)
        ]
        ctx.on_event(
            "data",
            {
                "questions": len(questions),
                "samples": sum(len(row) for row in labels),
                "sample_accuracy": round(
                    sum(map(sum, labels)) / max(1, sum(len(row) for row in labels)), 4
                ),
                "no_correct": sum(not any(row) for row in labels),
                "all_correct": sum(bool(row) and all(row) for row in labels),
                "collection": len(collection),
                "subset": len(subset),
                "divergence": round(divergence, 4),
            },
        )
        settings = TrainSettings(
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            weight_decay=cfg.weight_decay,
            betas=(0.9, 0.999),  # transformers' AdamW defaults (the ORPO script sets none)
            schedule=cfg.schedule,
            warmup_steps=cfg.warmup_steps,
        )
        inputs: dict[str, Any] = {"settings": settings, "seed": ctx.seed}
        if adapter == "lora":  # alpha and dropout are not in the state the key digests
            inputs["lora"] = lora_settings(cfg)
        if subset:
            sequences = [(t.question, t.answer, c) for t in subset for c in (t.chosen, t.rejected)]
            losses = ctx.train(
                "train corrector",
                lambda: train_orpo(
                    corrector, subset, settings, lam=cfg.lam, seed=ctx.seed, on_event=ctx.on_event
                ),
                inputs={**inputs, "orpo": subset, "lam": cfg.lam},
                state=[corrector.model],
            )
            targets = [t.chosen for t in subset]
        else:
            triples = correct_only_triples(questions, chains, labels, task)
            sequences = [(t.question, t.answer, t.correction) for t in triples]
            self.variant = "no incorrect chains: SFT on correct chains"
            ctx.disclose(
                "substitute",
                f"SFT on correct chains instead of ORPO: none of the {len(questions)} "
                "questions' sampled chains was incorrect",
            )
            losses = ctx.train(
                "train corrector",
                lambda: train_sft(
                    corrector, triples, settings, seed=ctx.seed, on_event=ctx.on_event
                ),
                inputs={**inputs, "sft": triples},
                state=[corrector.model],
            )
            targets = [t.correction for t in triples]
        # the epochs' losses, also when the training cache skipped training (and its events)
        ctx.on_event("train_loss", {"label": "train corrector", "losses": losses})
        cut = sum(corrector.cut(*sequence) for sequence in sequences)
        if cut:
            ctx.disclose(
                "truncated",
                f"{cut} of {len(sequences)} training sequences cut to the corrector's "
                f"{corrector.max_length}-token window (the answer's end first, then the "
                "question's start)",
            )
        return CorrectorPolicy(
            corrector,
            template=cfg.template,
            instruction_index=cfg.instruction_index,
            max_new_tokens=generation_room(corrector, targets, task.max_tokens),
            fallback=cfg.fallback,
            method="cobb",
        )


def _unique(texts: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(texts))


def collect_tuples(
    questions: Sequence[Example],
    samples: Sequence[Sequence[str]],
    *,
    task: TaskLike,
    count: Any = len,
    gold_positive: str = "fallback",
    threshold: float = 1.0,
) -> list[CollectedTuple]:
    """All (input, correct, incorrect) tuples of each question's sampled chains (texts
    de-duplicated per question), with their features; ``count`` measures a chain's length.
    The gold completion is a correct chain per ``gold_positive``."""
    out: list[CollectedTuple] = []
    for ex, texts in zip(questions, samples, strict=True):
        texts = [t.strip() for t in texts]
        labels = [is_correct(task, t, ex, threshold) for t in texts]
        accuracy = sum(labels) / max(1, len(labels))
        positives = _unique([t for t, ok in zip(texts, labels, strict=True) if ok])
        negatives = _unique([t for t, ok in zip(texts, labels, strict=True) if not ok])
        gold = task.render_target(ex).strip()
        if gold_positive == "always" or (gold_positive == "fallback" and not positives):
            positives = _unique([*positives, gold])
        correct_input = dict(zip(texts, labels, strict=True))
        lengths = {t: int(count(t)) for t in {*texts, *positives}}
        question = question_text(ex)
        for given in _unique(texts):
            for good in positives:
                for bad in negatives:
                    out.append(
                        CollectedTuple(
                            PreferenceTuple(question, given, good, bad),
                            input_correct=correct_input[given],
                            question_accuracy=accuracy,
                            lengths=(lengths[given], lengths[good], lengths[bad]),
                        )
                    )
    return out


def correct_only_triples(
    questions: Sequence[Example],
    chains: Sequence[Sequence[Any]],
    labels: Sequence[Sequence[bool]],
    task: TaskLike,
) -> list[Triple]:
    """(question, chain, correct chain) triples, for when no tuple has an incorrect chain."""
    triples: list[Triple] = []
    for ex, outs, oks in zip(questions, chains, labels, strict=True):
        texts = _unique([c.text.strip() for c in outs])
        good = _unique([c.text.strip() for c, ok in zip(outs, oks, strict=True) if ok]) or [
            task.render_target(ex).strip()
        ]
        triples += [Triple(question_text(ex), given, target) for given in texts for target in good]
    return triples


# --------------------------------------------------------------------------------------------
# Subset selection: a genetic search for a subset whose statistics match the collection.
# --------------------------------------------------------------------------------------------


class SubsetDivergence:
    """Sum over features of W1(subset, collection) / std(collection), exact for empirical
    distributions: W1 = Σ_i |F_S(v_i) - F_C(v_i)| (v_{i+1} - v_i) over the collection's
    sorted distinct values v (a subset's values are among them)."""

    def __init__(self, features: np.ndarray):
        self.columns: list[tuple[np.ndarray, np.ndarray, np.ndarray, float]] = []
        features = np.asarray(features, dtype=float)
        if features.size == 0:
            return
        for column in features.T:
            values, index = np.unique(column, return_inverse=True)
            std = float(column.std())
            if len(values) < 2 or std == 0.0:
                continue  # a constant feature matches in every subset
            full = np.cumsum(np.bincount(index, minlength=len(values)))[:-1] / len(column)
            self.columns.append((index, full, np.diff(values), std))

    def __call__(self, subset: np.ndarray) -> float:
        total = 0.0
        m = len(subset)
        for index, full, widths, std in self.columns:
            counts = np.bincount(index[subset], minlength=len(widths) + 1)
            cdf = np.cumsum(counts)[:-1] / m
            total += float(np.abs(cdf - full) @ widths) / std
        return total


def select_subset(
    features: np.ndarray,
    size: int,
    *,
    population: int = 50,
    generations: int = 100,
    mutation: float = 0.01,
    tournament: int = 3,
    elite: int = 2,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
    """Indices of ``size`` rows of ``features`` [N, F] whose distribution matches all N rows
    (`SubsetDivergence`), by a genetic algorithm; returns (sorted indices, divergence).
    Everything is kept when ``size >= N``."""
    n = len(features)
    divergence = SubsetDivergence(features)
    if size >= n:
        everything = np.arange(n)
        return everything, divergence(everything) if n else 0.0
    if size <= 0:
        raise BenchError("cobb: the subset must keep at least one tuple")
    pop = [rng.choice(n, size, replace=False) for _ in range(max(2, population))]
    fitness = np.array([divergence(p) for p in pop])

    def pick() -> np.ndarray:
        contenders = rng.choice(len(pop), min(tournament, len(pop)), replace=False)
        return pop[int(contenders[np.argmin(fitness[contenders])])]

    for _ in range(generations):
        order = np.argsort(fitness, kind="stable")
        children = [pop[i] for i in order[:elite]]
        scores = [float(fitness[i]) for i in order[:elite]]
        while len(children) < len(pop):
            union = np.union1d(pick(), pick())
            child = rng.choice(union, size, replace=False)
            child = _mutate(child, n, mutation, rng)
            children.append(child)
            scores.append(divergence(child))
        pop, fitness = children, np.array(scores)
    best = int(np.argmin(fitness))
    return np.sort(pop[best]), float(fitness[best])


def _mutate(child: np.ndarray, n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Swap each index for an unused one with probability ``rate``."""
    k = int(rng.binomial(len(child), rate)) if rate > 0 else 0
    k = min(k, n - len(child))
    if k == 0:
        return child
    used = np.zeros(n, dtype=bool)
    used[child] = True
    fresh: list[int] = []
    while len(fresh) < k:
        for i in rng.integers(0, n, size=2 * k + 8):
            if not used[i]:
                used[i] = True
                fresh.append(int(i))
                if len(fresh) == k:
                    break
    out = child.copy()
    out[rng.choice(len(child), k, replace=False)] = fresh
    return out
