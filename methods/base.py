"""The contract between tuning methods and the harness.

A tuner (`BlackBoxTuner`) sees the model only through the `BlackBox` protocol defined here,
and sees the task only through `TaskLike`: `methods` never imports `benchmarks`. The harness
hands a tuner black boxes already bound to a role (task model, proposer, judge) and a phase
(tune, eval), so every call a method makes is metered and cached without its cooperation.

Life of a method: ``tuner = Tuner.from_budget("light", seed=0)``; ``policy = tuner.fit(train,
task=task, backend=bb, dev=dev, context=ctx)``; ``policy.predict(test, task=task,
backend=bb)``. Policies save to a directory (JSON for prompts, safetensors for weights) and
load back with `load_policy`, so a tuned artifact is re-evaluated without re-tuning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

from methods.registry import BenchError, Registry

if TYPE_CHECKING:
    from methods.artifacts import TrainingCache

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# Capabilities: the access levels a backend declares and a tuner requires.
# --------------------------------------------------------------------------------------------

GENERATE = "generate"  # text out, `n` samples, temperature, stop
LOGPROBS = "logprobs"  # top-k logprobs of the generated tokens
SCORE = "score"  # logprobs of a given continuation (completions `echo`)
NEXT_TOKEN_LOGITS = "next_token_logits"  # the full next-token distribution for a prefix
PROMPT_EMBEDS = "prompt_embeds"  # continuous prompt vectors as input

CAPABILITIES: dict[str, str] = {
    GENERATE: "text generation with n samples, temperature and stop sequences",
    LOGPROBS: "top-k logprobs of generated tokens",
    SCORE: "logprobs of a given continuation (echo)",
    NEXT_TOKEN_LOGITS: "the full next-token distribution for a prefix",
    PROMPT_EMBEDS: "continuous prompt vectors (soft prompts) as input",
}

#: a white-box model field set to this (or left at its default) is filled by the harness with
#: the companion that fits the black box (benchmarks/companions.py).
AUTO_MODEL = "auto"
#: what a white-box model does for a method: "token" combines next-token distributions with the
#: black box's (same vocabulary needed), "scorer" reads text, "corrector" writes text.
CompanionRole = Literal["token", "scorer", "corrector"]

BudgetName = Literal["light", "medium", "heavy", "paper"]
BUDGETS: tuple[str, ...] = ("light", "medium", "heavy", "paper")

# The common currency of the presets: model calls (one prompt sent, whatever its `n`) in the
# tuning phase. Every tuner's `light | medium | heavy` preset must plan within these caps
# (tests/methods/test_budgets.py checks it), which is what makes the presets comparable.
BUDGET_CALLS: dict[str, int] = {"light": 400, "medium": 2_000, "heavy": 10_000}


# --------------------------------------------------------------------------------------------
# Data the methods see.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One task instance.

    Attributes:
        id: stable identifier within the task.
        input: the question or text, without instruction or template.
        target: the canonical gold answer (what `TaskLike.extract` should return).
        rationale: a worked solution ending in the answer, when the data has one; used for
            few-shot demonstrations and as positives by output-space tuners.
        choices: the answer options for multiple-choice tasks (already shuffled).
        meta: anything else a task keeps (domain, category, all acceptable answers, ...).
    """

    id: str
    input: str
    target: str
    rationale: str | None = None
    choices: tuple[str, ...] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "input": self.input,
            "target": self.target,
            "rationale": self.rationale,
            "choices": list(self.choices) if self.choices is not None else None,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Example:
        choices = data.get("choices")
        return cls(
            id=str(data["id"]),
            input=str(data["input"]),
            target=str(data["target"]),
            rationale=data.get("rationale"),
            choices=tuple(choices) if choices is not None else None,
            meta=dict(data.get("meta") or {}),
        )


TaskKind = Literal["generation", "classification", "multiple_choice"]


@runtime_checkable
class TaskLike(Protocol):
    """What a tuner may know about a task: how to prompt, parse and score it."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> TaskKind: ...

    @property
    def labels(self) -> tuple[str, ...] | None:
        """Verbalizer words for classification tasks, in label order; None otherwise."""
        ...

    @property
    def instructions(self) -> tuple[str, ...]:
        """Hand-written instructions to start instruction search from; [0] is the default."""
        ...

    @property
    def max_tokens(self) -> int:
        """Generation length for an answer."""
        ...

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop sequences for an answer."""
        ...

    def render(
        self, example: Example, *, instruction: str | None = None, demos: Sequence[Example] = ()
    ) -> str:
        """The prompt for ``example``: instruction, demonstrations, then the input."""
        ...

    def render_target(self, example: Example) -> str:
        """The gold completion text for ``example`` (rationale and answer, in output format)."""
        ...

    def extract(self, text: str, example: Example) -> str | None:
        """The answer in ``text``, normalised like `Example.target`; None if there is none."""
        ...

    def score(self, answer: str | None, example: Example) -> float:
        """1.0 for a correct answer, 0.0 otherwise (or a fraction for graded metrics)."""
        ...


# --------------------------------------------------------------------------------------------
# What the methods see of the model.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """One generated sample.

    Attributes:
        text: the generated text, stop sequence excluded.
        finish_reason: "stop" (stop sequence or end of text) or "length".
        tokens: the generated tokens, when logprobs were asked for.
        token_logprobs: logprob of each generated token, when asked for.
        top_logprobs: the top-k alternatives at each position, when asked for.
    """

    text: str
    finish_reason: str = "stop"
    tokens: tuple[str, ...] | None = None
    token_logprobs: tuple[float, ...] | None = None
    top_logprobs: tuple[Mapping[str, float], ...] | None = None


@dataclass(frozen=True)
class ScoredText:
    """Logprobs of a given continuation after a prompt."""

    tokens: tuple[str, ...]
    token_logprobs: tuple[float, ...]

    @property
    def total(self) -> float:
        return float(sum(self.token_logprobs))


@runtime_checkable
class BlackBox(Protocol):
    """A model as a tuner reaches it. Calls outside `capabilities` raise `CapabilityError`.

    Each element of a batch is one model call for budgets and metering, whatever its `n`.
    """

    model: str
    capabilities: frozenset[str]
    #: the model's context window in tokens, where the backend knows it (else None).
    context_length: int | None

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text``: exact where the tokenizer is known, else an estimate."""
        ...

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        logprobs: int | None = None,
        sample_offset: int = 0,
    ) -> list[list[Completion]]:
        """`n` completions per prompt. ``sample_offset`` asks for samples beyond ones already
        drawn (the cache keys samples by index, so offset 8 with n=8 gives 8 new samples)."""
        ...

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[ScoredText]:
        """Logprobs of each continuation given its prompt (capability `score`)."""
        ...

    def next_token_logprobs(
        self, prompts: Sequence[str], *, soft_prompt: np.ndarray | None = None
    ) -> np.ndarray:
        """Log-distribution over the whole vocabulary after each prompt, shape [B, V]
        (capability `next_token_logits`). ``soft_prompt`` [k, d] vectors are placed before
        each prompt's token embeddings (capability `prompt_embeds`)."""
        ...

    def vocabulary(self) -> list[str]:
        """Token strings by id, for full distributions (`next_token_logits`)."""
        ...

    def embedding_stats(self) -> tuple[int, float, float]:
        """(dimension, mean, std) of the input embeddings (`prompt_embeds`)."""
        ...


class CapabilityError(BenchError):
    """A call the backend does not offer."""


def missing_capabilities(requires: frozenset[str], offered: frozenset[str]) -> list[str]:
    """The required capabilities a backend lacks, in canonical order.

    ``requires`` may hold alternatives written ``"a|b"`` (either satisfies it).
    """
    missing: list[str] = []
    for need in sorted(requires, key=_capability_order):
        options = need.split("|")
        if not any(option in offered for option in options):
            missing.append(need.replace("|", " or "))
    return missing


def _capability_order(name: str) -> int:
    order = list(CAPABILITIES)
    first = name.split("|")[0]
    return order.index(first) if first in order else len(order)


# --------------------------------------------------------------------------------------------
# Tuning context: what the harness offers a method besides the model.
# --------------------------------------------------------------------------------------------


class ComputeMeter(Protocol):
    """Times white-box work (adapter training, small-model inference). The block yielded
    by `compute` is filled on exit with what was measured (``seconds``, ``wall_s``,
    ``peak_mem_mb``), which the training cache stores with its entries."""

    def compute(self, label: str) -> contextlib.AbstractContextManager[dict[str, float]]: ...


class _NoCompute:
    @contextlib.contextmanager
    def compute(self, label: str) -> Iterator[dict[str, float]]:
        yield {}


DisclosureKind = Literal[
    "no-change", "truncated", "not-sent", "k-reduced", "substitute", "companion", "prompt-format"
]

#: what each kind of disclosure tells a reader of the cell's accuracy (leaderboard legends).
DISCLOSURE_KINDS: dict[str, str] = {
    "no-change": "returned its starting prompt or point: the row measures the untuned start",
    "truncated": "a meta-prompt, demonstrations or training sequences were cut to fit a window",
    "not-sent": "requests the method made were never sent (they did not fit the window)",
    "k-reduced": "fewer demonstrations, examples or calls than configured",
    "substitute": "a stand-in for what the method as published reads or trains on",
    "companion": "the white-box model that filled a companion role",
    "prompt-format": "prompts reached the model in a format other than its default",
}


@dataclass(frozen=True)
class Disclosure:
    """Where a cell departs from its method as published, said where it happens.

    Attributes:
        kind: one of `DISCLOSURE_KINDS`.
        detail: one line with the counts (e.g. "40 of 48 DE requests not sent: ...").
    """

    kind: DisclosureKind
    detail: str

    def __post_init__(self) -> None:
        if self.kind not in DISCLOSURE_KINDS:
            raise BenchError(
                f"unknown disclosure kind {self.kind!r}; valid: {', '.join(DISCLOSURE_KINDS)}"
            )


@dataclass
class TuneContext:
    """Everything a tuner gets besides data and models.

    Attributes:
        seed: the cell's seed; a tuner derives all its randomness from it.
        compute: times white-box work: ``with context.compute.compute("train adapter"):``.
        on_event: progress callback ``(event, fields)``; methods never print.
        device: "cuda" when a GPU is available for white-box work, else "cpu".
        workdir: a scratch directory for large intermediate files, or None.
        resolve_model: a white-box model name (``zoo-small``) or local directory -> the local
            directory holding it (transformers format). Methods never download: the harness
            resolves names to local files and raises a one-line error for unknown ones.
        training_cache: where `train` keeps training outcomes (a `methods.artifacts.
            TrainingCache`), or None to always train.
        disclosures: what `disclose` collected (the harness adds its own and records them).
        trace: every event sent through ``on_event``, in order, as ``{"event": name, **fields}``:
            the tuner's trace (proposals and scores, populations, losses), saved with the cell.
    """

    seed: int = 0
    compute: ComputeMeter = field(default_factory=_NoCompute)
    on_event: Callable[[str, Mapping[str, Any]], None] = lambda event, fields: None
    device: str = "cpu"
    workdir: Path | None = None
    resolve_model: Callable[[str], Path] = field(default=lambda name: _local_model_dir(name))
    training_cache: TrainingCache | None = None
    disclosures: list[Disclosure] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        send = self.on_event

        def on_event(event: str, fields: Mapping[str, Any]) -> None:
            self.trace.append({"event": event, **fields})
            send(event, fields)

        self.on_event = on_event

    def disclose(self, kind: DisclosureKind, detail: str) -> None:
        """Say where this cell departs from the method as published (`DISCLOSURE_KINDS`),
        with the counts in ``detail``; the leaderboard marks the cell's accuracy with it."""
        item = Disclosure(kind, detail)
        if item not in self.disclosures:
            self.disclosures.append(item)

    def train(
        self, label: str, fn: Callable[[], T], *, inputs: Any, state: Sequence[Any] = ()
    ) -> T:
        """Run white-box training ``fn`` timed as compute ``label``. With a training cache,
        a step that ran before with the same ``inputs`` (everything ``fn`` reads besides
        ``state``: texts, settings, seed), starting ``state`` (modules, optimizers,
        schedulers: changed in place), torch random state and code is loaded instead, so a
        replay skips it. ``fn`` returns JSON (losses, indices); tuples come back as lists."""
        if self.training_cache is None:
            with self.compute.compute(label):
                return fn()
        return self.training_cache.run(
            label, fn, inputs=inputs, state=state, meter=self.compute, device=self.device
        )


def _local_model_dir(name: str) -> Path:
    path = Path(name)
    if not path.is_dir():
        raise BenchError(f"white-box model {name!r}: not a local model directory")
    return path


@dataclass(frozen=True)
class Prediction:
    """A policy's output for one example: the raw text, the extracted answer, and the prompt
    the black box was sent for it (the first one, for methods that send several)."""

    example_id: str
    output: str
    answer: str | None
    extra: Mapping[str, Any] = field(default_factory=dict)
    prompt: str | None = None


# --------------------------------------------------------------------------------------------
# Adapted policies: what `fit` returns, and what can be saved and re-evaluated.
# --------------------------------------------------------------------------------------------

policy_types: Registry[type[AdaptedPolicy]] = Registry("policy type")


class AdaptedPolicy(ABC):
    """The result of tuning: something that answers examples through the black box."""

    #: the key under which the policy type is registered (written into policy.json).
    kind: ClassVar[str]
    #: times white-box work at inference (adapter scoring, small-model forward passes); the
    #: harness sets it to the cell's meter before predicting, in the eval phase.
    compute: ComputeMeter = _NoCompute()

    @abstractmethod
    def predict(
        self, examples: Sequence[Example], *, task: TaskLike, backend: BlackBox
    ) -> list[Prediction]:
        """Answer a batch of examples (the inference phase)."""

    @abstractmethod
    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable state (weights go to `save_tensors`)."""

    @classmethod
    @abstractmethod
    def from_json(cls, data: Mapping[str, Any], directory: Path) -> AdaptedPolicy:
        """Rebuild from `to_json` output and the files saved beside it."""

    def save_tensors(self, directory: Path) -> None:
        """Write weights (safetensors) into ``directory``; prompt policies have none."""
        return None

    def save(self, directory: Path) -> None:
        """Write ``policy.json`` (and any weights) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        self.save_tensors(directory)
        payload = {"kind": self.kind, **self.to_json()}
        tmp = directory / "policy.json.tmp"
        tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False), encoding="utf-8")
        tmp.replace(directory / "policy.json")


def load_policy(directory: Path) -> AdaptedPolicy:
    """Load a policy saved with `AdaptedPolicy.save`."""
    path = directory / "policy.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BenchError(f"no policy at {path}") from exc
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    cls = policy_types.get(str(data.pop("kind", "")))
    return cls.from_json(data, directory)


def answer_with_prompts(
    prompts: Sequence[str], examples: Sequence[Example], *, task: TaskLike, backend: BlackBox
) -> list[Prediction]:
    """Greedy answers to rendered prompts, parsed by the task: the common inference step."""
    outputs = backend.generate(
        prompts, n=1, temperature=0.0, max_tokens=task.max_tokens, stop=list(task.stop) or None
    )
    return [
        Prediction(ex.id, out[0].text, task.extract(out[0].text, ex), prompt=prompt)
        for ex, out, prompt in zip(examples, outputs, prompts, strict=True)
    ]


@policy_types.register("prompt")
@dataclass
class PromptPolicy(AdaptedPolicy):
    """An instruction plus demonstrations placed in the task's template (prompt-space tuners).

    Attributes:
        instruction: the instruction text, or None for the task's bare template.
        demos: in-context demonstrations, rendered with their rationale.
    """

    kind: ClassVar[str] = "prompt"
    instruction: str | None = None
    demos: tuple[Example, ...] = ()

    def prompt(self, example: Example, task: TaskLike) -> str:
        return task.render(example, instruction=self.instruction, demos=self.demos)

    def predict(
        self, examples: Sequence[Example], *, task: TaskLike, backend: BlackBox
    ) -> list[Prediction]:
        prompts = [self.prompt(ex, task) for ex in examples]
        return answer_with_prompts(prompts, examples, task=task, backend=backend)

    def to_json(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "demos": [d.to_json() for d in self.demos]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], directory: Path) -> PromptPolicy:
        return cls(
            instruction=data.get("instruction"),
            demos=tuple(Example.from_json(d) for d in data.get("demos", [])),
        )


# --------------------------------------------------------------------------------------------
# The tuner interface.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallPlan:
    """A tuner's projection of what it will spend, before anything is spent.

    Attributes:
        calls: tuning-phase calls (prompts sent) to the task model.
        samples: completions those calls return in all (calls × n).
        proposer_calls: tuning-phase calls to the proposer role.
        proposer_samples: completions those calls return in all (0: one each).
        tune_prompt: a representative tuning prompt, for token estimates (None: as `eval_prompt`).
        eval_prompt: a representative inference prompt (None: the task's zero-shot prompt).
        eval_calls_per_example: inference calls per test example.
        eval_samples_per_example: completions per test example.
    """

    calls: int = 0
    samples: int = 0
    proposer_calls: int = 0
    proposer_samples: int = 0
    tune_prompt: str | None = None
    eval_prompt: str | None = None
    eval_calls_per_example: float = 1.0
    eval_samples_per_example: float = 1.0


ConfigT = TypeVar("ConfigT")


class BlackBoxTuner(ABC):
    """A method that adapts a black box. Subclasses set `name`, `requires`, `Config`, and
    `presets`, and implement `fit` (and `plan` when they make tuning calls).

    Hyperparameters go to the constructor (a `Config` dataclass whose defaults come from the
    paper or official code); data and models go to `fit`.
    """

    #: registry name, set by `register_method`.
    name: ClassVar[str] = ""
    #: capabilities needed from the task model's backend ("a|b" means either).
    requires: ClassVar[frozenset[str]] = frozenset({GENERATE})
    #: the hyperparameter dataclass.
    Config: ClassVar[type[Any]]
    #: overrides of `Config` fields per budget preset; "paper" is the defaults themselves.
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: whether the method trains or runs white-box models (so the executor can ask for a GPU).
    uses_white_box: ClassVar[bool] = False
    #: Config fields that name white-box models, with the role of each. Unless the user sets
    #: one (``--set method.field=MODEL``), the harness fills it with the model that fits the
    #: black box, and refuses while planning a model that cannot serve it.
    companions: ClassVar[Mapping[str, CompanionRole]] = {}
    #: One answer for every example by design (a constant baseline): the harness's "one answer
    #: throughout" warning, meant for methods whose outputs collapsed, is not raised for it.
    one_answer_by_design: ClassVar[bool] = False

    def __init__(self, config: Any = None, **overrides: Any):
        base = config if config is not None else self.Config()
        try:
            self.config = dataclasses.replace(base, **overrides)
        except TypeError as exc:
            valid = ", ".join(f.name for f in dataclasses.fields(self.Config)) or "none"
            raise BenchError(f"{self.name}: bad hyperparameter ({exc}); valid: {valid}") from exc
        #: the Config fields set by the caller, which scale-dependent defaults (a method's
        #: ``pretrained_presets``) leave alone; a whole ``config`` counts as set throughout.
        self.explicit: frozenset[str] = frozenset(
            [f.name for f in dataclasses.fields(self.config)] if config is not None else overrides
        )

    @classmethod
    def from_budget(cls, budget: str, **overrides: Any) -> BlackBoxTuner:
        """The tuner with the ``budget`` preset, then ``overrides``, applied."""
        if budget not in BUDGETS:
            raise BenchError(f"unknown budget {budget!r}; valid: {', '.join(BUDGETS)}")
        preset = {} if budget == "paper" else dict(cls.presets.get(budget, {}))
        preset.update(overrides)
        tuner = cls(**preset)
        tuner.explicit = frozenset(overrides)  # the budget's own values are not the user's
        return tuner

    def unsupported(self, task: TaskLike) -> str | None:
        """What ``task`` lacks for this method (e.g. "a classification task with label
        words"), or None. The harness refuses such a pair while planning, before anything is
        spent, and reports it as "n/a (needs ...)", like a missing capability."""
        return None

    def plan(self, *, task: TaskLike, train: Sequence[Example], dev: Sequence[Example]) -> CallPlan:
        """Projected calls (the default: no tuning calls, one greedy call per test example)."""
        return CallPlan()

    @abstractmethod
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
        """Tune on ``train`` (choosing on ``dev``) and return the adapted policy."""

    def hyperparameters(self) -> dict[str, Any]:
        """The config as plain JSON, for result records."""
        return dataclasses.asdict(self.config)


methods: Registry[type[BlackBoxTuner]] = Registry(
    "method", package="methods", entry_point_group="blackbox_bench.methods", name_attr="name"
)

TunerT = TypeVar("TunerT", bound=type[BlackBoxTuner])


def register_method(name: str, *aliases: str) -> Callable[[TunerT], TunerT]:
    """Class decorator: register a `BlackBoxTuner` subclass under ``name``."""

    def decorator(cls: TunerT) -> TunerT:
        if not (isinstance(cls, type) and issubclass(cls, BlackBoxTuner)):
            raise BenchError(f"@register_method({name!r}) must decorate a BlackBoxTuner subclass")
        methods.add(name, cls, *aliases)
        return cls

    return decorator


def get_method(name: str) -> type[BlackBoxTuner]:
    """The tuner class registered as ``name`` (in-tree or plugin)."""
    cls = methods.get(name)
    if not (isinstance(cls, type) and issubclass(cls, BlackBoxTuner)):
        raise BenchError(f"method {name!r} does not name a BlackBoxTuner subclass")
    return cls
