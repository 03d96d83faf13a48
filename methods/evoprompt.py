"""EvoPrompt (Guo et al., ICLR 2024): instruction search by an LLM acting as the operators of
a genetic algorithm (``evoprompt-ga``) or of differential evolution (``evoprompt-de``).

Official code: beeevita/EvoPrompt (``evoluter.py``, ``llm_client.py``, ``utils.py``,
``args.py``); the engineering brief is section 4 of research/methods_a.md.

Initialisation (``--initial all --initial_mode para_topk``): score every manual instruction
(``task.instructions``) on dev, keep the top N/2 and ask the evolution LLM once for a
paraphrase of each (`paraphrase_prompt`); the population is the top N/2 plus their
paraphrases.

GA (``GAEvoluter``): per iteration, draw a parent pool of N by roulette wheel (probability
proportional to dev accuracy, with replacement; ``sel_mode`` random and tour are options),
then for each of N children take two parents from the pool, ask the LLM to cross them over
and mutate the result (`evoprompt_crossover_prompt`, temperature 0.5), score the child on
dev, and keep the N best of the population and the children (``ga_mode topk``).

DE (``DEEvoluter``, template v1): per iteration, for each member x draw distinct others a, b
(and c), set c to the current best (unless ``donor_random``), ask the LLM for
`evoprompt_de_prompt` (basic=x, Prompt 1=a, Prompt 2=b, Prompt 3=c; temperature 0.5); the
child replaces x only if its dev score is strictly higher (ties keep x), and the current best
is updated at once, so the next member's Prompt 3 may already be this child.

Fitness is dev accuracy with greedy answers parsed from text (`score_instructions`, as the
official cls path parses the first label word), cached per normalised instruction so no
instruction is scored twice. All evolution and paraphrase requests go to the ``proposer``
black box (the task model when none is given); dev scoring goes to the task model.

Deviations from the official code, and why:

- Final choice by dev only: the best instruction by dev accuracy. The official code runs the
  top 3 by dev on the TEST set and reports the best test score among them
  (``infer.py:evaluate_optimized_prompt``): selection on the test set, which we avoid.
- No one-shot demonstration in the GA/DE requests: the official templates
  (``data/template_ga.py``, ``data/template_de.py``) open with a worked cross-task example;
  the zoo black box (192-token window) was trained on the requests without it, and the
  demonstration alone would not fit its window.
- The initial pool is the task's manual instructions only (the official pool also holds
  19-20 APE prompts per dataset, which the tasks here do not have). When the task has fewer
  than N/2 of them, or paraphrases fail, the population is padded with the remaining manual
  instructions (best first), then with further paraphrases of the top ones (at most
  ``N - M`` more requests); it may stay below N if those fail too. The official code needs
  an even N and asserts the population size.
- Malformed and duplicate proposals: the official code keeps whatever ``get_final_prompt``
  returns (the raw text when there is no ``<prompt>`` tag) and scores it. Here a child is
  parsed with `parse_proposal`; one that is missing, empty, a duplicate of a population
  member (or of another child of the step), or too long for the task model's window is
  dropped (GA) or keeps the parent (DE), with no retry, and is reported as a
  ``child`` event with ``valid: False`` and the reason. Paraphrase requests do not ask for
  tags, so an untagged paraphrase is read as the official code reads it (the raw text, here
  its first line); a tagged one (the zoo's answer format) is parsed.
- A request that leaves the proposer's window too little room for an answer as long as its
  longest parent is not sent (reason ``request_too_long``). With the current zoo tokenizer
  the DE request is about 160 tokens before the four prompts, so on zoo-large most DE
  requests do not fit until the DE template enters its training.
- Batching: the N crossover requests of a GA iteration go out in one batch and their
  children are scored in one batch (equivalent: a GA child does not depend on the others'
  scores). DE stays sequential, member by member, because the current best (Prompt 3)
  moves within an iteration; with ``donor_random`` nothing a request holds depends on the
  members before it, so the N requests go out in one batch and the children are scored in
  one batch, then are taken in member order (the same requests, scores and choices).
- Sampling seeds: each proposer request carries a seed derived from the cell's seed and the
  number of times that exact request was sent before, so a repeated request (the same
  parents drawn twice) gets a fresh sample and runs are reproducible.
- GA survival breaks dev-score ties in favour of incumbents, then children in order (the
  official code sorts a Python ``set``: arbitrary order).
- Bounded proposer requests in the light, medium and heavy presets: at most 128 tokens and a
  stop at "</prompt>" (the request asks for one tagged prompt; the official 1000 tokens
  with no stop let a weak proposer write hundreds of tokens of noise per request). The
  ``paper`` preset keeps 1000 tokens and no stop: ``get_final_prompt`` reads the LAST tagged
  prompt, which a stop at the first ``</prompt>`` would change when a proposer writes two.
- Dev set: the first ``dev_size`` examples of the harness's dev split (the official cls
  runs use a fixed 200-example dev file per seed); the training split when there is no dev.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

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
from methods.prompting import (
    evoprompt_answer,
    evoprompt_crossover_prompt,
    evoprompt_de_prompt,
    normalize_instruction,
    paraphrase_answer,
    paraphrase_prompt,
    parse_proposal,
    reclose,
    score_instructions,
    unchanged_instruction,
    unique_instructions,
)
from methods.registry import BenchError

SELECTION_MODES = ("wheel", "random", "tour")


@dataclass(frozen=True)
class EvoPromptConfig:
    #: population size N (``args.py --popsize 10``).
    population: int = 10
    #: iterations T (``args.py --budget 10``); each makes N children.
    iterations: int = 10
    #: dev examples scored per instruction (the cls dev files have 200 lines,
    #: ``data/cls/{ds}/seed*/dev.txt``).
    dev_size: int = 200
    #: temperature of the GA/DE requests (``evoluter.py``: ``llm_query(..., temperature=0.5)``).
    temperature: float = 0.5
    #: temperature of the initial paraphrases: ``init_pop`` calls ``paraphrase`` without one,
    #: so the API default of 1.0 applies (``llm_client.py:form_request`` sets none).
    paraphrase_temperature: float = 1.0
    #: answer length of a request (``llm_client.py:form_request``: max_tokens 1000); capped
    #: by the proposer's window. The budget presets bound it to 128 (see `BOUNDED_PROPOSER`).
    max_tokens: int = 1000
    #: stop sequences of a request: none in the code; the budget presets stop at "</prompt>",
    #: the end of the tagged instruction the request asks for.
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.population < 1 or self.iterations < 0 or self.dev_size < 1:
            raise BenchError("evoprompt: population and dev_size must be >= 1 and iterations >= 0")


@dataclass(frozen=True)
class EvoPromptGAConfig(EvoPromptConfig):
    #: parent selection (``args.py --sel_mode wheel``): "wheel" (roulette, probability
    #: proportional to dev score), "random" or "tour" (best of two random, twice).
    selection: str = "wheel"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.selection not in SELECTION_MODES:
            raise BenchError(
                f"evoprompt-ga: unknown selection {self.selection!r}; "
                f"valid: {', '.join(SELECTION_MODES)}"
            )


@dataclass(frozen=True)
class EvoPromptDEConfig(EvoPromptConfig):
    #: Prompt 3 is a random member instead of the current best (``args.py --donor_random``,
    #: off by default).
    donor_random: bool = False


# Presets scale N, T and the dev size to the call caps (400 / 2,000 / 10,000). A run makes
# at most (M + P + N*T) * dev_size task calls and P + N*T proposer calls, with M manual
# instructions and P = N//2 + max(0, N - M) paraphrases at most; with M <= 10 instructions:
# light 398, medium 1,912, heavy 9,310 calls at most. "paper" is the defaults.
#: the proposer requests of the budget presets: an instruction is a sentence or two (the
#: paper's evolved prompts are under 60 words), so 128 tokens, ending at the "</prompt>"
#: that closes it; the official 1000 tokens with no stop let a weak proposer ramble.
BOUNDED_PROPOSER: Mapping[str, Any] = {"max_tokens": 128, "stop": ("</prompt>",)}
PRESETS: Mapping[str, Mapping[str, Any]] = {
    "light": {**BOUNDED_PROPOSER, "population": 4, "iterations": 3, "dev_size": 16},
    "medium": {**BOUNDED_PROPOSER, "population": 8, "iterations": 6, "dev_size": 30},
    "heavy": {**BOUNDED_PROPOSER, "population": 10, "iterations": 10, "dev_size": 80},
}


def roulette(
    population: Sequence[str], fitness: Sequence[float], k: int, rng: random.Random
) -> list[str]:
    """``k`` members drawn with replacement, each with probability proportional to its
    fitness (``GAEvoluter.evolute``, ``sel_mode wheel``); uniform when all fitness is zero."""
    weights = [max(float(f), 0.0) for f in fitness]
    if sum(weights) <= 0:
        return rng.choices(list(population), k=k)
    return rng.choices(list(population), weights=weights, k=k)


def paraphrase_budget(population: int, manual: int) -> int:
    """Paraphrase requests at most: one per top-N/2 manual instruction, plus up to
    ``N - M`` more to pad a population the manual instructions cannot fill."""
    return min(population // 2, manual) + max(0, population - manual)


def _key(text: str) -> str:
    return normalize_instruction(text)


def _parse_paraphrase(text: str) -> str | None:
    """A tagged paraphrase (the zoo's answer format), else the first line of the raw text, as
    the official ``paraphrase`` keeps the raw output."""
    if "<prompt>" in text:
        return parse_proposal(text)
    for line in text.strip().splitlines():
        line = " ".join(line.split()).strip('"')
        if line:
            return line
    return None


class _Search:
    """One run's shared state: the dev set, the score cache, the proposer and the seeded
    randomness."""

    def __init__(
        self,
        config: EvoPromptConfig,
        *,
        task: TaskLike,
        backend: BlackBox,
        proposer: BlackBox,
        dev: Sequence[Example],
        seed: int,
        on_event: Callable[[str, Mapping[str, Any]], None],
    ):
        self.config = config
        self.task = task
        self.backend = backend
        self.proposer = proposer
        self.dev = list(dev)
        self.seed = seed
        self.rng = random.Random(seed)
        self.on_event = on_event
        self.scores: dict[str, float] = {}
        self._unfit: set[str] = set()
        self._sent: Counter[str] = Counter()
        #: proposer requests asked for and not sent (no room in the window), by operator
        self.asked: Counter[str] = Counter()
        self.unsent: Counter[str] = Counter()
        self._longest: Example | None = None
        if getattr(backend, "context_length", None):
            self._longest = max(
                self.dev, key=lambda ex: backend.count_tokens(task.render(ex, instruction=None))
            )

    def score_of(self, instruction: str) -> float:
        return self.scores[_key(instruction)]

    @property
    def unfit(self) -> int:
        """Instructions never scored: their prompts overflow the task model's window."""
        return len(self._unfit)

    def score(self, instructions: Sequence[str]) -> list[float | None]:
        """Dev accuracy of each instruction (None: its prompts overflow the task model's
        window). Instructions never scored before go to the task model in one batch."""
        new: list[str] = []
        for text in instructions:
            key = _key(text)
            if key in self.scores or key in self._unfit or key in {_key(t) for t in new}:
                continue
            if self._overflows(text):
                self._unfit.add(key)
            else:
                new.append(text)
        values = score_instructions(new, self.dev, task=self.task, backend=self.backend)
        for text, value in zip(new, values, strict=True):
            self.scores[_key(text)] = value
        return [self.scores.get(_key(text)) for text in instructions]

    def _overflows(self, instruction: str) -> bool:
        limit = getattr(self.backend, "context_length", None)
        if not limit or self._longest is None:
            return False
        prompt = self.task.render(self._longest, instruction=instruction)
        return self.backend.count_tokens(prompt) >= limit

    def propose(
        self, requests: Sequence[str], answers: Sequence[str], *, temperature: float, op: str
    ) -> list[str | None]:
        """The proposer's raw answer to each request; None for a request that leaves too
        little room for ``answers[i]`` (the expected answer's length) in its window, which
        is not sent. Request i carries a seed from the cell's seed and how often that exact
        request was sent before; one batch per seed. ``op`` names the operator, for the
        counts of requests not sent."""
        limit = getattr(self.proposer, "context_length", None)
        out: list[str | None] = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        self.asked[op] += len(requests)
        for i, (request, answer) in enumerate(zip(requests, answers, strict=True)):
            if limit:
                room = limit - self.proposer.count_tokens(request)
                if room < self.proposer.count_tokens(answer):
                    self.unsent[op] += 1
                    continue
            seed = self.seed * 1_000 + self._sent[request]
            self._sent[request] += 1
            groups.setdefault(seed, []).append(i)
        for seed, indices in groups.items():
            completions = self.proposer.generate(
                [requests[i] for i in indices],
                n=1,
                temperature=temperature,
                max_tokens=self.config.max_tokens,
                stop=list(self.config.stop) or None,
                seed=seed,
            )
            for i, completion in zip(indices, completions, strict=True):
                text = completion[0].text
                if "</prompt>" in self.config.stop and completion[0].finish_reason == "stop":
                    text = reclose(text, "<prompt>", "</prompt>")  # the stop is not returned
                out[i] = text
        return out

    def child_event(
        self, op: str, step: int, child: str | None, reason: str | None, score: float | None
    ) -> None:
        self.on_event(
            "child",
            {
                "op": op,
                "step": step,
                "valid": reason is None,
                "reason": reason,
                "instruction": child,
                "score": score,
            },
        )

    def initial_population(self) -> list[str]:
        """``init_pop`` with ``para_topk``: the top N/2 manual instructions by dev score and
        one paraphrase of each, padded as the module docstring says."""
        n = self.config.population
        manual = unique_instructions(self.task.instructions, [])
        if not manual:
            raise BenchError(f"evoprompt: task {self.task.name} has no manual instructions")
        scored = [(t, s) for t, s in zip(manual, self.score(manual), strict=True) if s is not None]
        if not scored:
            raise BenchError(
                f"evoprompt: no manual instruction of {self.task.name} fits the task model's "
                "context window"
            )
        ranked = [t for t, _ in sorted(scored, key=lambda pair: -pair[1])]  # stable
        top = ranked[: min(n // 2, len(ranked))]
        rest = ranked[len(top) :]
        population = list(top)
        budget = paraphrase_budget(n, len(manual))
        self._add_paraphrases(top, population)  # one paraphrase of each top instruction
        used = len(top)
        sources = top or ranked[:1]
        while len(population) < n:
            if rest:  # first the manual instructions left, best first
                candidate = rest.pop(0)
                if _key(candidate) not in {_key(p) for p in population}:
                    population.append(candidate)
                continue
            want = min(n - len(population), budget - used)
            if want <= 0:
                break
            batch = [sources[(used + i) % len(sources)] for i in range(want)]
            used += want
            self._add_paraphrases(batch, population)
        population = population[:n]
        self.on_event(
            "init",
            {
                "population": list(population),
                "scores": [self.score_of(p) for p in population],
                "manual_scores": dict(scored),
            },
        )
        return population

    def _add_paraphrases(self, sources: Sequence[str], population: list[str]) -> None:
        requests = [paraphrase_prompt(s) for s in sources]
        answers = [paraphrase_answer(s) for s in sources]
        raw = self.propose(
            requests, answers, temperature=self.config.paraphrase_temperature, op="paraphrase"
        )
        taken = {_key(p) for p in population}
        fresh: list[str] = []
        for text in raw:
            found = _parse_paraphrase(text) if text is not None else None
            if text is None:
                self.child_event("paraphrase", 0, None, "request_too_long", None)
            elif found is None:
                self.child_event("paraphrase", 0, None, "unparsed", None)
            elif _key(found) in taken:
                self.child_event("paraphrase", 0, found, "duplicate", None)
            else:
                taken.add(_key(found))
                fresh.append(found)
        for text, value in zip(fresh, self.score(fresh), strict=True):
            if value is None:
                self.child_event("paraphrase", 0, text, "overflow", None)
            else:
                self.child_event("paraphrase", 0, text, None, value)
                population.append(text)


class _EvoPrompt(BlackBoxTuner):
    """The part EvoPrompt-GA and -DE share: plan, initialisation, dev-only final choice."""

    requires: ClassVar[frozenset[str]] = frozenset({GENERATE})
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS
    config: EvoPromptConfig

    def plan(self, *, task: TaskLike, train: Sequence[Example], dev: Sequence[Example]) -> CallPlan:
        cfg = self.config
        pool = list(dev) or list(train)
        d = min(cfg.dev_size, len(pool))
        manual = len(unique_instructions(task.instructions, []))
        evolution = cfg.population * cfg.iterations
        proposer = paraphrase_budget(cfg.population, manual) + evolution
        calls = (manual + paraphrase_budget(cfg.population, manual) + evolution) * d
        tune_prompt = (
            task.render(pool[0], instruction=task.instructions[0])
            if pool and task.instructions
            else None
        )
        return CallPlan(
            calls=calls, samples=calls, proposer_calls=proposer, tune_prompt=tune_prompt
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
        context = context or TuneContext()
        pool = list(dev or ()) or list(train)
        if not pool:
            raise BenchError(f"{self.name}: no dev (or training) examples to score on")
        search = _Search(
            self.config,
            task=task,
            backend=backend,
            proposer=proposer if proposer is not None else backend,
            dev=pool[: self.config.dev_size],
            seed=context.seed,
            on_event=context.on_event,
        )
        population = search.initial_population()
        best = self.evolve(search, population)
        context.on_event("done", {"instruction": best, "dev_score": search.score_of(best)})
        self._disclose(context, search, best)
        return PromptPolicy(instruction=best)

    def _disclose(self, context: TuneContext, search: _Search, best: str) -> None:
        """Requests never sent, children never scored, and a search that returned one of the
        task's own instructions."""
        if search.unsent:
            counts = ", ".join(
                f"{search.unsent[op]} of {search.asked[op]} {op} requests"
                for op in search.asked
                if search.unsent[op]
            )
            context.disclose(
                "not-sent",
                f"{counts} not sent: request and answer did not fit the proposer's "
                f"{getattr(search.proposer, 'context_length', None)}-token window",
            )
        if search.unfit:
            context.disclose(
                "not-sent",
                f"{search.unfit} instructions never scored: their prompts did not fit "
                f"the task model's {getattr(search.backend, 'context_length', None)}-token window",
            )
        same = unchanged_instruction(best, search.task.instructions, search.task)
        if same is not None:
            context.disclose(
                "no-change",
                f"returned {same}, one it started from: no evolved instruction beat it on dev",
            )

    @abstractmethod
    def evolve(self, search: _Search, population: list[str]) -> str:
        """Run the iterations from ``population``; the best instruction by dev score."""


def _distinct(others: Sequence[str], k: int, rng: random.Random, fallback: str) -> list[str]:
    """``k`` distinct members of ``others`` when there are enough, else with replacement
    (``fallback`` alone when there are none)."""
    if len(others) >= k:
        return rng.sample(list(others), k)
    return [rng.choice(list(others) or [fallback]) for _ in range(k)]


@register_method("evoprompt-ga")
class EvoPromptGA(_EvoPrompt):
    """EvoPrompt-GA: roulette-wheel parents, LLM crossover + mutation, top-N survival."""

    Config = EvoPromptGAConfig
    config: EvoPromptGAConfig

    def evolve(self, search: _Search, population: list[str]) -> str:
        cfg = self.config
        rng = search.rng
        n = cfg.population
        for step in range(1, cfg.iterations + 1):
            fitness = [search.score_of(p) for p in population]
            if cfg.selection == "wheel":
                pool = roulette(population, fitness, n, rng)
            else:
                pool = list(population)
            parents: list[tuple[str, str]] = []
            for _ in range(n):
                if cfg.selection == "tour":
                    first = max(_distinct(pool, 2, rng, pool[0]), key=search.score_of)
                    second = max(_distinct(pool, 2, rng, pool[0]), key=search.score_of)
                else:
                    first, second = _distinct(pool, 2, rng, pool[0])
                parents.append((first, second))
            raw = search.propose(
                [evoprompt_crossover_prompt(a, b) for a, b in parents],
                [evoprompt_answer(max((a, b), key=len)) for a, b in parents],
                temperature=cfg.temperature,
                op="crossover",
            )
            taken = {_key(p) for p in population}
            children: list[str] = []
            for text in raw:
                child = parse_proposal(text) if text is not None else None
                if text is None:
                    search.child_event("crossover", step, None, "request_too_long", None)
                elif child is None:
                    search.child_event("crossover", step, None, "unparsed", None)
                elif _key(child) in taken:
                    search.child_event("crossover", step, child, "duplicate", None)
                else:
                    taken.add(_key(child))
                    children.append(child)
            survivors = list(population)
            for child, value in zip(children, search.score(children), strict=True):
                if value is None:
                    search.child_event("crossover", step, child, "overflow", None)
                else:
                    search.child_event("crossover", step, child, None, value)
                    survivors.append(child)
            # top-N of P and the children; a stable sort keeps incumbents first on ties
            population = sorted(survivors, key=lambda p: -search.score_of(p))[:n]
            search.on_event(
                "step",
                {
                    "step": step,
                    "best": search.score_of(population[0]),
                    "mean": sum(search.score_of(p) for p in population) / len(population),
                    "population": list(population),
                    "scores": [search.score_of(p) for p in population],
                },
            )
        return population[0]


@register_method("evoprompt-de")
class EvoPromptDE(_EvoPrompt):
    """EvoPrompt-DE: LLM differential evolution against the current best, strict-improvement
    replacement."""

    Config = EvoPromptDEConfig
    config: EvoPromptDEConfig

    def evolve(self, search: _Search, population: list[str]) -> str:
        cfg = self.config
        rng = search.rng
        best = max(population, key=search.score_of)  # the first of the best
        for step in range(1, cfg.iterations + 1):
            current = list(population)
            new: list[str] = []
            texts: list[str | None] = []
            if cfg.donor_random:  # no request depends on an earlier member: one batch each
                texts = self._random_donor_children(search, current)
            for j, basic in enumerate(current):
                if cfg.donor_random:
                    text = texts[j]
                else:
                    others = [p for i, p in enumerate(current) if i != j]
                    first, second, _ = _distinct(others, 3, rng, basic)
                    parents = (basic, first, second, best)
                    text = search.propose(
                        [evoprompt_de_prompt(basic=basic, first=first, second=second, best=best)],
                        [evoprompt_answer(max(parents, key=len))],
                        temperature=cfg.temperature,
                        op="DE",
                    )[0]
                child = parse_proposal(text) if text is not None else None
                reason: str | None = None
                value: float | None = None
                if text is None:
                    reason = "request_too_long"
                elif child is None:
                    reason = "unparsed"
                elif _key(child) in {_key(p) for p in (*current, *new)}:
                    reason = "duplicate"
                else:
                    value = search.score([child])[0]
                    reason = "overflow" if value is None else None
                search.child_event("de", step, child, reason, value)
                chosen = basic
                if child is not None and value is not None and value > search.score_of(basic):
                    chosen = child  # strictly better only: a tie keeps the parent
                new.append(chosen)
                if search.score_of(chosen) > search.score_of(best):
                    best = chosen
            population = new
            search.on_event(
                "step",
                {
                    "step": step,
                    "best": search.score_of(best),
                    "mean": sum(search.score_of(p) for p in population) / len(population),
                    "population": list(population),
                    "scores": [search.score_of(p) for p in population],
                },
            )
        return best

    def _random_donor_children(self, search: _Search, current: list[str]) -> list[str | None]:
        """The proposer's answers for every member of ``current`` (random donors), asked in
        one batch with the draws the member-by-member loop makes; the children that may be
        kept are scored in one batch too (the loop then finds their scores memoised)."""
        requests, answers = [], []
        for j, basic in enumerate(current):
            others = [p for i, p in enumerate(current) if i != j]
            first, second, donor = _distinct(others, 3, search.rng, basic)
            parents = (basic, first, second, donor)
            request = evoprompt_de_prompt(basic=basic, first=first, second=second, best=donor)
            requests.append(request)
            answers.append(evoprompt_answer(max(parents, key=len)))
        texts = search.propose(requests, answers, temperature=self.config.temperature, op="DE")
        members = {_key(p) for p in current}
        # A child equal to a member is never scored; one equal to an earlier child is that
        # child, scored once either way.
        children = [parse_proposal(t) for t in texts if t is not None]
        search.score([c for c in children if c is not None and _key(c) not in members])
        return texts
