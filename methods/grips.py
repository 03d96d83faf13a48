"""GrIPS: gradient-free, edit-based instruction search (Prasad, Hase, Zhou, Bansal, EACL 2023).

Greedy hill climbing over phrase-level edits of the task's hand-written instruction, as in the
official ``archiki/GrIPS`` ``run_search.py``:

    base = I0; s_base = score(base); pool = []; patience = 1
    for it in range(n):
        ops = {del, swap, sub} + ({add} if pool else {})
        m candidates, each l random ops composed on the base's phrases:
            del: drop a phrase; swap: exchange two; sub: replace one by a random pick of
            10 paraphrases; add: insert a phrase from the deleted pool after a random phrase
            (or at the start)
        if max score > s_base: accept it (patience = 1; the pool gains its deletions and
            loses its additions)
        else: patience += 1 (optionally simulated annealing: accept the best candidate with
            probability exp((s - s_base) / T), T = 10 e^(-it/5)); stop once patience > P

Score (``score()``): ``100 * balanced accuracy + 10 * H(predicted label frequencies)`` (natural
log, as ``scipy.stats.entropy``) on a score set of ``num_train`` examples sampled (seeded) from
train + dev. Labels are predicted by likelihood, normalised over the label set
(``nat_inst_gpt3.py`` ``get_regular_label_probs``), through `label_logprobs` (backend
``score``, else ``next_token_logits``). The policy is the best instruction seen, chosen by its
score-set score (never by test); the eval predicts by likelihood too (`LabelLikelihoodPolicy`).

Deviations, forced by the offline setting or the harness:

- Phrases: the paper's CRF constituency parser (supar ``crf-con-en``) is not available, so
  `split_phrases` splits each sentence at clause boundaries: after ``,`` ``;`` ``:`` and
  before a conjunction (and, but, or, nor, so, yet, then, because, while, whereas, although,
  though, unless) when both sides have at least two words (so "positive or negative" stays
  whole). Punctuation stays attached to its phrase and phrases join back with single spaces.
- Paraphrases: PEGASUS (``tuner007/pegasus_paraphrase``) is not available, so ``sub`` asks the
  proposer role (`paraphrase_prompt`, parsed with `parse_proposal`) for 10 samples in one call
  and picks one parsed paraphrase at random; its end punctuation is made the replaced
  phrase's. The official call passes temperature 1.5 to a beam search (where it is ignored);
  here 1.5 is a real sampling temperature. A phrase's paraphrases are asked for once and
  reused (PEGASUS beam search is deterministic, so the official code gets the same 10 again).
  A ``sub`` with no parseable paraphrase leaves the base unchanged. The pick among the
  paraphrases is one uniform draw made whatever their number, so the later random draws of
  an iteration do not depend on what the proposer answers; that lets the paraphrase requests
  of an iteration's candidates go out in one batch (`EditSearch.candidates`), the same
  requests the one-by-one loop would send.
- Without ``score`` or ``next_token_logits`` the label is parsed from greedy text (`variant`
  says so); an answer with no label word counts as wrong and out of the entropy.
- Generation tasks (no label set: zoo-arith, zoo-hops, zoo-truth) are scored by plain accuracy
  x 100 (`score_instructions`): balanced accuracy and the entropy term need labels.
- The official code returns the last base (lower than the best when annealing accepted a
  worse one); here the best instruction seen is returned. Scores are memoised per instruction
  (a candidate equal to one already scored costs no call), deleting the last phrase is not
  offered, and candidates whose prompts overflow the context window are not scored.
- Reporting: the accuracy of the chosen instruction on up to ``num_dev_report`` dev examples
  held out of the score set is reported (event ``grips_done`` and `GripsTuner.diagnostics`);
  it never selects anything.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from methods.base import (
    GENERATE,
    AdaptedPolicy,
    BlackBox,
    BlackBoxTuner,
    CallPlan,
    Example,
    PromptPolicy,
    TaskLike,
    TuneContext,
    register_method,
)
from methods.prompting import (  # LabelLikelihoodPolicy: re-exported, the policy GrIPS returns
    LabelLikelihoodPolicy,
    is_labelled,
    label_logprobs,
    label_mode,
    normalize_instruction,
    paraphrase_prompt,
    parse_proposal,
    score_instructions,
    unchanged_instruction,
)
from methods.registry import BenchError

EDITS = ("del", "swap", "sub", "add")


@dataclass(frozen=True)
class GripsConfig:
    #: edits composed into one candidate (l): ``run_search.py`` ``--num-compose`` default 1.
    num_compose: int = 1
    #: candidates per iteration (m): ``--num-candidates`` default 5.
    num_candidates: int = 5
    #: search iterations (n): ``--num-iters`` default 10 (read as ``args.num_iter``, PR #1).
    num_iter: int = 10
    #: patience P: ``--patience`` default 2 (the counter starts at 1; stop when it exceeds P).
    patience: int = 2
    #: score-set size, sampled from train + dev: ``--num-train`` default 100.
    num_train: int = 100
    #: edit operations: ``--edits`` default ``del swap sub add`` (add only once a phrase was
    #: deleted).
    edits: tuple[str, ...] = EDITS
    #: simulated annealing when no candidate beats the base: ``--simulated-anneal``, off by
    #: default and in the README command.
    simulated_anneal: bool = False
    #: annealing temperature T = t_max * exp(-it / k): ``T_max = 10``, ``K = 5`` in run_search.py.
    anneal_t_max: float = 10.0
    anneal_k: float = 5.0
    #: weight of the entropy of predicted label frequencies in the score: 10 in ``score()``.
    entropy_weight: float = 10.0
    #: paraphrases sampled per ``sub``, one picked at random: ``get_response`` asks PEGASUS for
    #: ``num_return_sequences=10`` (``num_beams=10``).
    num_paraphrases: int = 10
    #: sampling temperature of the paraphraser: ``temperature=1.5`` in ``get_response``.
    paraphrase_temperature: float = 1.5
    #: paraphrase length bound: ``max_length=60`` in ``get_response``.
    paraphrase_max_tokens: int = 60
    #: held-out dev examples on which the chosen instruction's accuracy is reported (not in
    #: the paper, which reports test only; reporting, never selection).
    num_dev_report: int = 100
    #: cap on tuning calls (task and proposer); the score set shrinks to fit it. None: no cap
    #: (the paper's setting).
    max_calls: int | None = None
    #: which of the task's hand-written instructions to start from (0: the default, as the
    #: paper starts from the Natural-Instructions "Definition").
    instruction_index: int = 0


@register_method("grips")
class GripsTuner(BlackBoxTuner):
    """GrIPS: greedy search over phrase edits (delete, swap, paraphrase, add back) of the
    task's instruction, scored by balanced accuracy plus label entropy on a score set."""

    Config = GripsConfig
    config: GripsConfig
    requires: ClassVar[frozenset[str]] = frozenset({GENERATE})
    # Sized for a two-label task scored with `score` (one call per label per prompt):
    # (1 + n*m) * num_train * 2 + n*m*l proposer calls + num_dev_report * 2 <= the cap.
    # light: 10*16*2 + 9 + 16*2 = 361; medium: 26*36*2 + 25 + 40*2 = 1977;
    # heavy: 51*90*2 + 50 + 100*2 = 9430. `max_calls` shrinks the score set for more labels.
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "light": {
            "num_iter": 3,
            "num_candidates": 3,
            "num_train": 16,
            "num_dev_report": 16,
            "max_calls": 400,
        },
        "medium": {
            "num_iter": 5,
            "num_candidates": 5,
            "num_train": 36,
            "num_dev_report": 40,
            "max_calls": 2_000,
        },
        "heavy": {"num_train": 90, "num_dev_report": 100, "max_calls": 10_000},
    }

    variant: str | None = None

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        unknown = set(self.config.edits) - set(EDITS)
        if unknown:
            raise BenchError(f"grips: unknown edits {sorted(unknown)}; valid: {', '.join(EDITS)}")
        self.diagnostics: dict[str, Any] = {}

    # -- budget ------------------------------------------------------------------------------

    def plan(self, *, task: TaskLike, train: Sequence[Example], dev: Sequence[Example]) -> CallPlan:
        per_prompt = _calls_per_prompt(task)
        size, n_dev = self._sizes(task, len(train) + len(dev), len(dev))
        calls = (self._evaluations() * size + n_dev) * per_prompt
        pool = [*train, *dev]
        tune_prompt = (
            task.render(pool[0], instruction=_start_instruction(task, self.config))
            if pool and task.instructions
            else None
        )
        return CallPlan(
            calls=calls,
            samples=calls,
            proposer_calls=self._proposer_calls(),
            proposer_samples=self._proposer_calls() * self.config.num_paraphrases,
            tune_prompt=tune_prompt,
            eval_calls_per_example=float(per_prompt),
        )

    def _evaluations(self) -> int:
        return 1 + self.config.num_iter * self.config.num_candidates

    def _proposer_calls(self) -> int:
        """At most one paraphrase request per ``sub`` edit (every edit may be one)."""
        if "sub" not in self.config.edits:
            return 0
        return self.config.num_iter * self.config.num_candidates * self.config.num_compose

    def _sizes(self, task: TaskLike, n_pool: int, n_dev: int) -> tuple[int, int]:
        """(score-set size, dev-report size) within ``max_calls``: the score set first."""
        size = min(self.config.num_train, n_pool)
        report = min(self.config.num_dev_report, n_dev)
        if self.config.max_calls is not None:
            prompts = max(0, self.config.max_calls - self._proposer_calls())
            prompts //= _calls_per_prompt(task)
            size = min(size, prompts // self._evaluations())
            report = min(report, prompts - self._evaluations() * size)
        return size, report

    # -- search ------------------------------------------------------------------------------

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
        ctx = context or TuneContext()
        cfg = self.config
        proposer = proposer or backend
        self.variant = None
        notes: list[str] = []
        dev = list(dev or ())
        pool = [*train, *dev]
        original = _start_instruction(task, cfg)
        if original is None:
            raise BenchError(f"grips edits an instruction; task {task.name} has none")

        size, n_report = self._sizes(task, len(pool), len(dev))
        if size < 1:
            raise BenchError(f"grips: max_calls={cfg.max_calls} leaves no score-set example")
        if size < min(cfg.num_train, len(pool)):
            notes.append(f"score set {size} (call cap {cfg.max_calls})")
            ctx.disclose(
                "k-reduced",
                f"score set of {size} examples instead of {min(cfg.num_train, len(pool))}, to "
                f"stay within max_calls={cfg.max_calls}",
            )
        data_rng = random.Random(f"grips/data/{ctx.seed}")
        chosen = set(data_rng.sample(range(len(pool)), size))
        score_set = [ex for i, ex in enumerate(pool) if i in chosen]
        held_out = [ex for i, ex in enumerate(dev, start=len(train)) if i not in chosen]
        report_set = data_rng.sample(held_out, min(n_report, len(held_out)))

        scorer = InstructionScorer(
            task, backend, score_set, entropy_weight=cfg.entropy_weight, reserve_for=original
        )
        if scorer.mode == "parsed":
            notes.append("labels parsed from text")
            ctx.disclose(
                "substitute",
                "labels parsed from greedy text: the backend scores no label likelihoods",
            )
        elif scorer.mode == "accuracy":
            notes.append("score = accuracy (no label set)")
            ctx.disclose(
                "substitute",
                "score = 100 x accuracy: balanced accuracy and label entropy need a label set",
            )
        edits = list(cfg.edits)
        if "sub" in edits and GENERATE not in proposer.capabilities:
            edits.remove("sub")
            notes.append("no sub (proposer cannot generate)")
            ctx.disclose("substitute", "no sub edits: the proposer cannot generate paraphrases")
        self.variant = "; ".join(notes) or None

        paraphraser = Paraphraser(
            proposer,
            n=cfg.num_paraphrases,
            temperature=cfg.paraphrase_temperature,
            max_tokens=cfg.paraphrase_max_tokens,
            seed=ctx.seed,
        )
        search = EditSearch(
            scorer, paraphraser, cfg, edits=edits, rng=random.Random(f"grips/search/{ctx.seed}")
        )
        best, best_score = search.run(original, on_event=ctx.on_event)

        dev_accuracy = scorer.accuracy(best, report_set) if report_set else None
        self.diagnostics = {
            "original": original,
            "original_score": search.history[0]["base_score"] if search.history else None,
            "instruction": best,
            "score": best_score,
            "iterations": len(search.history) - 1,
            "stop": search.stop_reason,
            "accepted_edits": search.accepted_edits,
            "score_set": len(score_set),
            "label_mode": scorer.mode,
            "dev_accuracy": dev_accuracy,
            "dev_examples": len(report_set),
            "scored_prompts": scorer.prompts_sent,
            "over_window": scorer.over_window,
            "paraphrase_requests": paraphraser.requests,
        }
        ctx.on_event("grips_done", dict(self.diagnostics))
        if scorer.over_window:
            candidates = len({normalize_instruction(c) for c in search.candidates_seen})
            ctx.disclose(
                "not-sent",
                f"{scorer.over_window} of {candidates} candidate instructions never scored: "
                "their prompts did not fit the task model's "
                f"{getattr(backend, 'context_length', None)}-token window",
            )
        if paraphraser.unsent:
            ctx.disclose(
                "not-sent",
                f"{paraphraser.unsent} of {paraphraser.unsent + paraphraser.requests} paraphrase "
                f"requests not sent: no room for an answer in the proposer's "
                f"{getattr(proposer, 'context_length', None)}-token window",
            )
        same = unchanged_instruction(best, [original], task)
        if same is not None:
            ctx.disclose(
                "no-change",
                f"returned its starting instruction, {same}: no edit beat it "
                f"({len(search.history) - 1} iterations)",
            )
        if scorer.mode in ("score", "next_token"):
            return LabelLikelihoodPolicy(instruction=best)
        return PromptPolicy(instruction=best)


def _start_instruction(task: TaskLike, cfg: GripsConfig) -> str | None:
    if not task.instructions:
        return None
    text = task.instructions[min(cfg.instruction_index, len(task.instructions) - 1)]
    return " ".join(split_phrases(text))


def _calls_per_prompt(task: TaskLike) -> int:
    """Calls per scored prompt, at worst: one per label in "score" mode (each (prompt, label)
    pair is one call); one in "next_token", "parsed" and accuracy scoring."""
    return len(task.labels or ()) if is_labelled(task) else 1


# ------------------------------------------------------------------------------------------
# Phrases.
# ------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.?!]+[\"')\]]*$")
_CLAUSE_END = re.compile(r"[,;:][\"')\]]*$")
_WORD = re.compile(r"\w")
_END_PUNCT = re.compile(r"\s*[.,;:?!]+$")
CONJUNCTIONS = frozenset(
    "and but or nor so yet then because while whereas although though unless".split()
)


def split_phrases(instruction: str) -> list[str]:
    """Disjoint phrases of ``instruction``, in order: sentences (split after ``. ? !`` and at
    line breaks), each split after ``, ; :`` and before a conjunction (`CONJUNCTIONS`) that has
    at least two words on each side within its comma segment. Punctuation stays with the
    phrase before it; ``" ".join(split_phrases(x)) == " ".join(x.split())`` for one-line x."""
    phrases: list[str] = []
    for line in instruction.splitlines():
        sentence: list[str] = []
        for token in line.split():
            sentence.append(token)
            if _SENTENCE_END.search(token):
                phrases += _clauses(sentence)
                sentence = []
        phrases += _clauses(sentence)
    return phrases


def _words(tokens: Sequence[str]) -> int:
    return sum(1 for t in tokens if _WORD.search(t))


def _clauses(tokens: list[str]) -> list[str]:
    segments: list[list[str]] = [[]]
    for token in tokens:
        if not _WORD.search(token) and not segments[-1] and len(segments) > 1:
            segments[-2].append(token)  # stray punctuation joins the phrase before it
            continue
        segments[-1].append(token)
        if _CLAUSE_END.search(token):
            segments.append([])
    out: list[str] = []
    for segment in segments:
        start = 0
        for i in range(1, len(segment)):
            word = segment[i].lower().strip(",;:")
            if (
                word in CONJUNCTIONS
                and _words(segment[start:i]) >= 2
                and _words(segment[i + 1 :]) >= 2
            ):
                out.append(" ".join(segment[start:i]))
                start = i
        if segment[start:]:
            out.append(" ".join(segment[start:]))
    return out


def join_phrases(phrases: Sequence[str]) -> str:
    return " ".join(" ".join(p.split()) for p in phrases if p.strip())


def match_ending(paraphrase: str, phrase: str) -> str:
    """``paraphrase`` with the end punctuation of ``phrase`` (which the paraphraser may drop or
    change); GrIPS strips the paraphrase's periods where the phrase has none."""
    body = _END_PUNCT.sub("", paraphrase.strip()).strip()
    ending = _END_PUNCT.search(phrase)
    if ending is None or not body:
        return body
    return body + ending.group(0)


# ------------------------------------------------------------------------------------------
# The score: balanced accuracy plus label entropy.
# ------------------------------------------------------------------------------------------


def balanced_accuracy(predicted: Sequence[int], gold: Sequence[int]) -> float:
    """Mean recall over the classes present in ``gold`` (sklearn's
    ``balanced_accuracy_score``); a prediction of -1 (no label) is wrong."""
    recalls = []
    for label in sorted(set(gold)):
        rows = [p for p, g in zip(predicted, gold, strict=True) if g == label]
        recalls.append(sum(p == label for p in rows) / len(rows))
    return float(np.mean(recalls)) if recalls else 0.0


def label_entropy(predicted: Sequence[int], n_labels: int) -> float:
    """Entropy (nats) of the predicted label frequencies, as ``scipy.stats.entropy`` of
    ``[preds.count(l) / len(preds) for l in labels]`` (normalised; -1 is not a label)."""
    counts = np.bincount([p for p in predicted if p >= 0], minlength=n_labels).astype(float)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def grips_score(
    predicted: Sequence[int], gold: Sequence[int], n_labels: int, entropy_weight: float = 10.0
) -> float:
    """``round(100 * balanced accuracy, 2) + entropy_weight * H`` (``run_search.py`` ``score``)."""
    return round(100 * balanced_accuracy(predicted, gold), 2) + entropy_weight * label_entropy(
        predicted, n_labels
    )


class InstructionScorer:
    """Scores instructions on a fixed score set, in batches, memoised by instruction.

    ``mode`` is how labels are read (`label_mode`: "score", "next_token", "parsed"), or
    "accuracy" for tasks without a label set. ``reserve_for``: an instruction that is always
    scored even when its prompts overflow the context window (the starting one).
    """

    def __init__(
        self,
        task: TaskLike,
        backend: BlackBox,
        examples: Sequence[Example],
        *,
        entropy_weight: float = 10.0,
        reserve_for: str | None = None,
    ):
        self.task = task
        self.backend = backend
        self.examples = list(examples)
        self.entropy_weight = entropy_weight
        self.mode = label_mode(task, backend) if is_labelled(task) else "accuracy"
        self.labels = list(task.labels or ())
        self.gold = [self.label_index(ex.target) for ex in self.examples]
        self.memo: dict[str, float] = {}
        self.prompts_sent = 0
        self.over_window = 0
        self.reserve_for = normalize_instruction(reserve_for)
        self._longest = self._longest_example()

    def label_index(self, target: str) -> int:
        lowered = [label.lower() for label in self.labels]
        key = target.strip().lower()
        return lowered.index(key) if key in lowered else -2  # -2: matches no prediction

    def _longest_example(self) -> Example | None:
        if not self.examples or not getattr(self.backend, "context_length", None):
            return None
        return max(self.examples, key=lambda ex: self.backend.count_tokens(self.task.render(ex)))

    def fits(self, instruction: str) -> bool:
        """Whether the longest score-set prompt under ``instruction`` fits the window."""
        limit = getattr(self.backend, "context_length", None)
        if not limit or self._longest is None:
            return True
        if normalize_instruction(instruction) == self.reserve_for:
            return True
        reserve = 4 if self.mode in ("score", "next_token") else self.task.max_tokens
        prompt = self.task.render(self._longest, instruction=instruction or None)
        return self.backend.count_tokens(prompt) + reserve <= limit

    def score(self, instructions: Sequence[str]) -> list[float]:
        """The score of each instruction; new ones are scored together in one batch, ones that
        do not fit the window score -inf (no call)."""
        todo: list[str] = []
        for ins in instructions:
            key = normalize_instruction(ins)
            if key in self.memo or ins in todo:
                continue
            if self.fits(ins):
                todo.append(ins)
            else:
                self.memo[key] = -math.inf
                self.over_window += 1
        if todo:
            for ins, value in zip(todo, self._score_new(todo), strict=True):
                self.memo[normalize_instruction(ins)] = value
        return [self.memo[normalize_instruction(ins)] for ins in instructions]

    def _score_new(self, instructions: Sequence[str]) -> list[float]:
        self.prompts_sent += len(instructions) * len(self.examples)
        if self.mode == "accuracy":
            accs = score_instructions(
                [ins or None for ins in instructions],
                self.examples,
                task=self.task,
                backend=self.backend,
            )
            return [100.0 * a for a in accs]
        predicted = self.predict(instructions, self.examples)
        n = len(self.examples)
        return [
            grips_score(predicted[i * n : (i + 1) * n], self.gold, len(self.labels),
                        self.entropy_weight)
            for i in range(len(instructions))
        ]  # fmt: skip

    def predict(self, instructions: Sequence[str], examples: Sequence[Example]) -> list[int]:
        """Predicted label index per (instruction, example), instruction-major; -1 where a
        parsed answer holds no label word."""
        prompts = [
            self.task.render(ex, instruction=ins or None) for ins in instructions for ex in examples
        ]
        logprobs = label_logprobs(prompts, task=self.task, backend=self.backend, mode=self.mode)
        predicted = [int(i) for i in np.argmax(logprobs, axis=1)]
        if self.mode == "parsed":  # a row that is not one-hot: no label found
            predicted = [p if row.max() > -1e-9 and np.isinf(row).any() else -1
                         for p, row in zip(predicted, logprobs, strict=True)]  # fmt: skip
        return predicted

    def accuracy(self, instruction: str, examples: Sequence[Example]) -> float:
        """Plain accuracy of ``instruction`` on ``examples`` (the dev report)."""
        if self.mode == "accuracy":
            return score_instructions(
                [instruction or None], examples, task=self.task, backend=self.backend
            )[0]
        predicted = self.predict([instruction], examples)
        gold = [self.label_index(ex.target) for ex in examples]
        return float(np.mean([p == g for p, g in zip(predicted, gold, strict=True)]))


class Paraphraser:
    """The ``sub`` edit's paraphrases of a phrase, from the proposer role (asked once per
    phrase: ``n`` samples in one call, parsed; malformed ones dropped)."""

    def __init__(
        self, proposer: BlackBox, *, n: int, temperature: float, max_tokens: int, seed: int
    ):
        self.proposer = proposer
        self.n = n
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.cache: dict[str, list[str]] = {}
        self.requests = 0
        self.unsent = 0  # phrases whose request left no room for an answer

    def __call__(self, phrase: str) -> list[str]:
        if phrase not in self.cache:
            self.prefetch([phrase])
        return self.cache[phrase]

    def prefetch(self, phrases: Sequence[str]) -> None:
        """Ask for the paraphrases of every phrase not asked for yet, in one `generate` call
        (one per distinct ``max_tokens``): each request is the one `__call__` would send."""
        groups: dict[int, list[str]] = {}
        for phrase in dict.fromkeys(phrases):
            if phrase in self.cache:
                continue
            max_tokens = self.max_tokens
            limit = getattr(self.proposer, "context_length", None)
            if limit:
                room = limit - self.proposer.count_tokens(paraphrase_prompt(phrase))
                max_tokens = min(max_tokens, room)
                if max_tokens < 1:
                    self.cache[phrase] = []  # no room for an answer: not sent
                    self.unsent += 1
                    continue
            groups.setdefault(max_tokens, []).append(phrase)
        for max_tokens, group in groups.items():
            self.requests += len(group)
            outputs = self.proposer.generate(
                [paraphrase_prompt(phrase) for phrase in group],
                n=self.n,
                temperature=self.temperature,
                max_tokens=max_tokens,
                stop=["\n"],
                seed=self.seed,
            )
            for phrase, samples in zip(group, outputs, strict=True):
                self.cache[phrase] = self._parse(phrase, samples)

    @staticmethod
    def _parse(phrase: str, samples: Sequence[Any]) -> list[str]:
        found: list[str] = []
        for completion in samples:
            text = parse_proposal(completion.text)
            text = match_ending(text, phrase) if text else None
            if text and text not in found:
                found.append(text)
        return found


@dataclass
class _Candidate:
    phrases: list[str]
    ops: list[str]
    deleted: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return join_phrases(self.phrases)


class EditSearch:
    """The GrIPS loop over one score set (``run_search.py``, from ``base_candidate`` on)."""

    def __init__(
        self,
        scorer: InstructionScorer,
        paraphraser: Paraphraser,
        config: GripsConfig,
        *,
        edits: Sequence[str],
        rng: random.Random,
    ):
        self.scorer = scorer
        self.paraphrase = paraphraser
        self.config = config
        self.edits = list(edits)
        self.rng = rng
        self.deleted_pool: list[str] = []
        self.history: list[dict[str, Any]] = []
        self.accepted_edits: list[list[str]] = []
        self.candidates_seen: list[str] = []  # every candidate scored or refused, in order
        self.stop_reason = "iterations"
        # While `candidates` collects: phrases a sub edit needed that were not asked for yet
        # (None: not collecting, a sub asks at once), whether still recording, and whether
        # the current candidate met such a phrase.
        self._wanted: list[str] | None = None
        self._recording = False
        self._missed = False

    def run(
        self, original: str, *, on_event: Any = lambda event, fields: None
    ) -> tuple[str, float]:
        """Search from ``original``; returns the best instruction seen and its score."""
        cfg = self.config
        base = original
        base_score = self.scorer.score([base])[0]
        self.candidates_seen.append(base)
        best, best_score = base, base_score
        self.history = [{"iteration": -1, "base": base, "base_score": base_score}]
        patience = 1
        for it in range(cfg.num_iter):
            ops = [e for e in self.edits if e != "add"]
            if "add" in self.edits and self.deleted_pool:
                ops.append("add")
            if not ops:
                self.stop_reason = "no edits"
                break
            candidates = self.candidates(base, ops)
            scores = self.scorer.score([c.text for c in candidates])
            self.candidates_seen += [c.text for c in candidates]
            top = int(np.argmax(scores))
            for cand, value in zip(candidates, scores, strict=True):
                if value > best_score:
                    best, best_score = cand.text, value
            step: dict[str, Any] = {
                "iteration": it,
                "candidates": [c.text for c in candidates],
                "ops": [c.ops for c in candidates],
                "scores": scores,
                "accepted": None,
            }
            if scores[top] > base_score:
                patience = 1
                base, base_score = self._accept(candidates[top]), scores[top]
                step["accepted"] = "greedy"
            else:
                patience += 1
                accept = False
                if cfg.simulated_anneal:
                    temperature = cfg.anneal_t_max * math.exp(-it / cfg.anneal_k)
                    accept = self.rng.random() < math.exp((scores[top] - base_score) / temperature)
                if accept:
                    base, base_score = self._accept(candidates[top]), scores[top]
                    step["accepted"] = "anneal"
            step.update(base=base, base_score=base_score, patience=patience)
            self.history.append(step)
            on_event(
                "grips_step",
                {
                    "iteration": it,
                    "base_score": _finite(base_score),
                    "best_candidate": _finite(scores[top]),
                    "candidates": [
                        {"ops": c.ops, "text": c.text, "score": _finite(v)}
                        for c, v in zip(candidates, scores, strict=True)
                    ],
                    "accepted": step["accepted"],
                    "patience": patience,
                },
            )
            if step["accepted"] != "anneal" and patience > cfg.patience:
                self.stop_reason = "patience"
                break
        return best, best_score

    def _accept(self, cand: _Candidate) -> str:
        for phrase in cand.added:
            if phrase in self.deleted_pool:
                self.deleted_pool.remove(phrase)
        self.deleted_pool.extend(cand.deleted)
        self.accepted_edits.append(list(cand.ops))
        return cand.text

    def candidates(self, base: str, ops: Sequence[str]) -> list[_Candidate]:
        """One iteration's ``num_candidates`` candidates, each ``num_compose`` random ``ops``
        on ``base``, with the paraphrases their sub edits need asked for in one batch.

        A pass draws the candidates, noting each phrase whose paraphrases are not known yet
        (a placeholder of none stands in); the noted phrases are asked for together and the
        pass is drawn again from the same random state, until one meets no unknown phrase.
        A sub's pick is one draw whatever the paraphrases, so the draws up to an unknown
        phrase are those of the final pass, and the phrases noted are exactly those the
        one-by-one loop asks for; after an unknown phrase inside a composed candidate
        (whose later edits see the placeholder) nothing more is noted in that pass.
        """
        cfg = self.config
        state = self.rng.getstate()
        while True:
            self._wanted, self._recording = [], True
            try:
                out = [
                    self.candidate(base, [self.rng.choice(ops) for _ in range(cfg.num_compose)])
                    for _ in range(cfg.num_candidates)
                ]
                wanted = self._wanted
            finally:
                self._wanted = None
            if not wanted:
                return out
            self.paraphrase.prefetch(wanted)
            self.rng.setstate(state)

    def candidate(self, base: str, ops: Sequence[str]) -> _Candidate:
        """``ops`` applied in turn to ``base`` (phrases re-split after each, as the paper's
        composed edits re-parse the intermediate candidate)."""
        cand = _Candidate(split_phrases(base), list(ops))
        self._missed = False
        for k, op in enumerate(ops):
            phrases = split_phrases(cand.text)
            cand.phrases = self.apply(op, phrases, cand)
            if self._missed and k < len(ops) - 1:
                self._recording = False  # later edits of this candidate saw a placeholder
        return cand

    def _paraphrases(self, phrase: str) -> list[str]:
        if self._wanted is None or phrase in self.paraphrase.cache:
            return self.paraphrase(phrase)
        self._missed = True
        if self._recording:
            self._wanted.append(phrase)
        return []

    def apply(self, op: str, phrases: list[str], cand: _Candidate) -> list[str]:
        rng = self.rng
        out = list(phrases)
        if op == "del":
            if len(out) < 2:
                return out
            cand.deleted.append(out.pop(rng.randrange(len(out))))
        elif op == "swap":
            if len(out) < 2:
                return out
            i, j = rng.sample(range(len(out)), 2)
            out[i], out[j] = out[j], out[i]
        elif op == "sub":
            if not out:
                return out
            i = rng.randrange(len(out))
            pick = rng.random()  # drawn whatever the paraphrases (see `candidates`)
            options = self._paraphrases(out[i])
            if options:
                out[i] = options[int(pick * len(options))]
        elif op == "add":
            after = rng.randrange(len(out) + 1) - 1  # -1: at the start
            if not self.deleted_pool:
                return out
            phrase = rng.choice(self.deleted_pool)
            out.insert(after + 1, phrase)
            cand.added.append(phrase)
        else:
            raise BenchError(f"grips: unknown edit {op!r}; valid: {', '.join(EDITS)}")
        return out


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
