"""Shared machinery of the zoo tasks: instruction spaces tied to answer styles, the generated
world's names, the training-corpus API, and the proposer templates (OPRO, EvoPrompt).

The zoo is the offline testbed: small GPT-2-style models trained by the project on the
documents built here, then served as black boxes. Each zoo task (``zoo-arith``, ``zoo-hops``,
``zoo-truth``, ``zoo-sentiment``) has a SOURCE domain, what the black box is trained on
(`ZooTask.corpus`), and a TARGET domain, what `ZooTask.load_split` returns and the benchmark
scores. The design follows the probe measurements (research/zoo_probe.md):

- Exact procedures are learned all or nothing, and a shape never seen in training is never
  solved. So the target is shifted from the source by PROPORTIONS (long problems, rare words,
  rare entities are rare in the source, common in the target) and by held-out combinations of
  seen parts (a held-out person's facts are seen, questions about that person are not), never
  by wholly unseen shapes. The source is broad: many templates and synonyms per task.
- Label noise does not make a weak model (greedy decoding washes it out), so there is none.
  Headroom comes from real difficulty: answering without a chain, facts memorised with a
  long-tailed (Zipf) frequency, and mixtures of answer styles under ambiguous instructions.
- Prompt sensitivity comes from instructions tied to answer STYLES. Every instruction is a
  sequence of phrases from the task's `InstructionSpace`; a phrase either names a style
  (explicit: "Think step by step ." -> worked chain) or is neutral with a lean (a mixture of
  styles, e.g. 45% chain). An instruction made of neutral phrases only (the default,
  ``instructions[0]``, is one) makes the model mix styles, so the default is never the best
  instruction and there is a graded landscape for GrIPS, EvoPrompt and OPRO to climb.
- The black box is also the proposer of OPRO and EvoPrompt: the corpus holds a modest number
  of instruction-writing documents built from `opro_meta_prompt` and
  `evoprompt_crossover_prompt`, whose answers are recombinations of phrases of the given
  instructions, so proposals stay in the instruction space (well formed and meaningful).

Training-corpus API (for the zoo trainer): per task, `ZooTask.source_documents` (QA documents
in the evaluation format), ``fact_documents`` (zoo-hops, zoo-truth), `ZooTask.corpus` (all of
a task's kinds mixed) and `ZooTask.proposer_documents`; for the whole zoo, `zoo_corpus`. For
the methods and the property checks: `opro_meta_prompt`, `evoprompt_crossover_prompt`,
`parse_proposal`, `is_well_formed_instruction`, and each task's `InstructionSpace`
(``task.space``: the style an instruction asks for, its expected quality).

Document format: a task document is exactly ``task.render(example, instruction=...)`` + " " +
completion, so training and evaluation prompts match; the caller appends the EOS token. All
task text is pre-tokenised (single spaces between words and punctuation, one line per
completion) to keep a word-level tokenizer lossless; numbers should be split into digits.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from benchmarks.tasks.base import SPLITS, Split, Task
from methods.base import Example
from methods.prompting import (  # noqa: F401  (re-exported: the zoo's proposer API)
    evoprompt_answer,
    evoprompt_crossover_prompt,
    evoprompt_de_prompt,
    opro_answer,
    opro_meta_prompt,
    paraphrase_answer,
    paraphrase_prompt,
    parse_proposal,
)
from methods.registry import BenchError

#: the seed of the generated world (names, facts). Fixed: the zoo models are trained on it, so
#: changing it means retraining. The task option ``seed`` only changes the sampled splits.
WORLD_SEED = 0

_TOKEN = re.compile(r"####|\d|[A-Za-z']+|\n|[^\s\w]")


def approx_tokens(text: str) -> int:
    """Tokens of ``text`` under a word-level tokenizer with one token per digit, per
    punctuation mark and per newline (``####`` is one token)."""
    return len(_TOKEN.findall(text))


def zipf_weights(n: int, exponent: float = 1.0, offset: float = 3.0) -> list[float]:
    """Normalised weights ``1 / (rank + offset) ** exponent`` for ranks 0..n-1 (a Zipf law
    flattened at the head, so the first entity does not take a fifth of all documents)."""
    raw = [1.0 / (rank + offset) ** exponent for rank in range(n)]
    total = sum(raw)
    return [w / total for w in raw]


#: a bound on proposer documents, in `approx_tokens` (task documents: `ZooTask.max_doc_tokens`):
#: they must fit the zoo models' 192 positions whole, or the trainer skips them.
MAX_PROPOSER_TOKENS = 184

#: shares of the entities (people, topics) given to each split by `ZooTask.partition`, in
#: drawing order; the default sizes 500/100/200 need about 20/4/8 examples per entity.
PARTITION = {"test": 0.25, "dev": 0.125, "train": 0.625}


def allocate(
    items: Sequence[Any], sizes: Mapping[str, float], rng: random.Random
) -> dict[str, list[Any]]:
    """``items`` shuffled and cut into disjoint groups, one per split, in proportion to
    ``sizes`` (at least one item for a split with a positive size)."""
    order = list(items)
    rng.shuffle(order)
    total = sum(sizes.values()) or 1
    counts = {s: max(1, round(len(order) * n / total)) if n else 0 for s, n in sizes.items()}
    largest = max(counts, key=lambda s: counts[s])
    counts[largest] -= sum(counts.values()) - len(order)
    if counts[largest] < (1 if sizes[largest] else 0):
        raise BenchError(f"cannot split {len(order)} items into {dict(sizes)}")
    out: dict[str, list[Any]] = {}
    start = 0
    for split, count in counts.items():
        out[split] = order[start : start + count]
        start += count
    return out


def is_reserved(text: str, mod: int) -> bool:
    """Whether ``text`` falls in the hash bucket kept for target splits (1 in ``mod``).

    Generated target inputs are always reserved and source inputs never are, so no benchmark
    input can appear verbatim in the training corpus, whatever seeds and sizes are used.
    """
    if mod <= 1:
        return True
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) % mod == 0


# --------------------------------------------------------------------------------------------
# The generated world's names.
# --------------------------------------------------------------------------------------------

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_KINDS = (("person", 160, 2, True), ("town", 16, 3, True), ("creature", 100, 2, False))
#: English words a made-up name must not spell.
_NOT_NAMES = frozenset(
    "bane base bike bone data dime dine dome done fame fate file fine fire fume gale game gate "
    "kite lake lame lane late life like lime line live lobe lone lose love made make male mane "
    "mare mate mile mine mole more mule mute name nose note pale pane pike pile pine pole pope "
    "pose rage rake rate ride rise robe rode role rope rose rude rule safe sale same sane side "
    "site sole some sore tale tame tape tide tile time tone tune vase vine vote wake zone".split()
)


@functools.cache
def world_names() -> dict[str, tuple[str, ...]]:
    """Made-up names of the world, by kind: "person" (capitalised, CVCV), "town"
    (capitalised, CVCVCV) and "creature" (lower case, CVCVC); distinct across kinds."""
    rng = random.Random(f"zoo/names/{WORLD_SEED}")
    used: set[str] = set()
    out: dict[str, tuple[str, ...]] = {}
    for kind, count, syllables, capital in _KINDS:
        names: list[str] = []
        while len(names) < count:
            word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
            if not capital:
                word += rng.choice("lmnrst")
            if word in used or word in _NOT_NAMES:
                continue
            used.add(word)
            names.append(word.capitalize() if capital else word)
        out[kind] = tuple(names)
    return out


# --------------------------------------------------------------------------------------------
# Instruction spaces: phrases tied to answer styles.
# --------------------------------------------------------------------------------------------

_PHRASE = re.compile(r"[^.?!]+[.?!]+|[^.?!]+$")


def split_phrases(instruction: str) -> list[str]:
    """The sentences of ``instruction`` (each with its end mark), whitespace-normalised."""
    text = " ".join(instruction.split())
    return [p.strip() for p in _PHRASE.findall(text) if p.strip()]


def _norm(phrase: str) -> str:
    return re.sub(r"\s+([.,?!;:])", r"\1", " ".join(phrase.lower().split()))


class InstructionSpace:
    """The instructions a zoo task trains with: phrases, each tied to an answer style or
    neutral with a lean, composed into instructions of one to three phrases.

    Args:
        styles: the answer styles, e.g. ("chain", "direct").
        best: the style that scores best on the target (the gold rationale's style).
        explicit: style -> phrases that ask for exactly that style.
        neutral: phrase -> mixture over styles the model is trained to follow under it.
        handwritten: the task's hand-written instructions, the ones the training corpus
            draws from (their order fixes the corpus, so it stays as trained).
        default: the untuned instruction (``Task.instructions[0]``, what zero-shot uses):
            neutral phrases of the space only, so a mixture that is not the best; None:
            ``handwritten[0]``, which the zoo tasks use: an instruction the corpus trains with
            (a default outside ``handwritten`` appears only in rare random compositions, and
            what the model does under it changed with every retraining: zoo-notes.md,
            experiment 5). The other hand-written ones follow it in `instructions`.
        none_mix: the mixture under no instruction (and under unknown phrases only).
        score_range: (low, high) percent scores simulated in OPRO documents for an
            instruction whose best-style probability is 0 or 1.
        cue_shift: under neutral-only (or no) instructions, the best style's probability is
            raised by this much on inputs that carry the task's cue (`ZooTask.cue`) and
            lowered by it on the others. Greedy decoding follows the MODE of the trained
            mixture, so an unconditioned 50/50 mixture makes zero-shot accuracy a knife edge
            that flips with training length; conditioned on a visible cue, the mode is the
            best style on cue inputs and another style elsewhere, so greedy accuracy sits near
            the cue's share in the target while sampling still finds the best style (pass@k).
    """

    def __init__(
        self,
        *,
        styles: Sequence[str],
        best: str,
        explicit: Mapping[str, Sequence[str]],
        neutral: Mapping[str, Mapping[str, float]],
        handwritten: Sequence[str],
        none_mix: Mapping[str, float],
        score_range: tuple[float, float],
        cue_shift: float = 0.0,
        default: str | None = None,
    ):
        self.styles = tuple(styles)
        self.best = best
        self.explicit = {s: tuple(explicit[s]) for s in self.styles}
        self.neutral = {p: _normalised_mix(m, self.styles) for p, m in neutral.items()}
        self.handwritten = tuple(handwritten)
        self.none_mix = _normalised_mix(none_mix, self.styles)
        self.score_range = score_range
        self.cue_shift = cue_shift
        self._lookup: dict[str, tuple[str, str]] = {}
        for style, phrases in self.explicit.items():
            for p in phrases:
                self._lookup[_norm(p)] = ("explicit", style)
        for p in self.neutral:
            self._lookup[_norm(p)] = ("neutral", p)
        self.default = default or self.handwritten[0]
        for text in (self.default, *self.handwritten):
            unknown = [p for p in split_phrases(text) if _norm(p) not in self._lookup]
            if unknown:
                raise ValueError(f"hand-written instruction {text!r} has unknown phrases {unknown}")
        if self._base_mix(self.default)[1]:
            raise ValueError(f"the default instruction {self.default!r} names a style")
        if self.quality(self.default) >= max(self.quality(t) for t in self.handwritten):
            raise ValueError("the default instruction must not be the best one")

    @property
    def instructions(self) -> tuple[str, ...]:
        """The task's instructions: the default first, then the other hand-written ones."""
        return (self.default, *(t for t in self.handwritten if t != self.default))

    # -- styles -------------------------------------------------------------------------

    def phrases(self) -> list[str]:
        """Every phrase of the space, explicit then neutral."""
        return [p for ps in self.explicit.values() for p in ps] + list(self.neutral)

    def style_mix(self, instruction: str | None, cue: bool | None = None) -> dict[str, float]:
        """The mixture of answer styles the model is trained to produce under ``instruction``:
        one explicit style -> that style; conflicting explicit styles -> uniform over them;
        neutral phrases only -> the mean of their leans; nothing known -> `none_mix`. With
        ``cue`` given, a mixture that is not explicit is shifted by `cue_shift` (see there)."""
        mix, explicit = self._base_mix(instruction)
        if cue is None or not self.cue_shift or explicit:
            return mix
        best = min(0.95, max(0.05, mix[self.best] + (self.cue_shift if cue else -self.cue_shift)))
        rest = 1.0 - mix[self.best]
        return {
            s: best
            if s == self.best
            else ((1.0 - best) * (mix[s] / rest if rest else 1.0 / (len(self.styles) - 1)))
            for s in self.styles
        }

    def _base_mix(self, instruction: str | None) -> tuple[dict[str, float], bool]:
        explicit: list[str] = []
        leans: list[Mapping[str, float]] = []
        for phrase in split_phrases(instruction or ""):
            kind, value = self._lookup.get(_norm(phrase), ("unknown", ""))
            if kind == "explicit" and value not in explicit:
                explicit.append(value)
            elif kind == "neutral":
                leans.append(self.neutral[value])
        if explicit:
            return {s: (1.0 / len(explicit) if s in explicit else 0.0) for s in self.styles}, True
        if leans:
            return {s: sum(m[s] for m in leans) / len(leans) for s in self.styles}, False
        return dict(self.none_mix), False

    def sample_style(
        self, instruction: str | None, rng: random.Random, cue: bool | None = None
    ) -> str:
        mix = self.style_mix(instruction, cue)
        return rng.choices(self.styles, weights=[mix[s] for s in self.styles])[0]

    def quality(self, instruction: str | None) -> float:
        """Probability of the best style under ``instruction`` (what instruction search finds)."""
        return self.style_mix(instruction)[self.best]

    def simulated_score(self, instruction: str, rng: random.Random) -> int:
        """A plausible dev score in percent for OPRO documents: linear in `quality`, noisy."""
        low, high = self.score_range
        score = low + (high - low) * self.quality(instruction) + rng.gauss(0.0, 4.0)
        return round(min(100.0, max(0.0, score)))

    # -- sampling -----------------------------------------------------------------------

    def sample(self, rng: random.Random) -> str | None:
        """A training instruction: none (12%), a hand-written one (48%) or a composition."""
        r = rng.random()
        if r < 0.12:
            return None
        if r < 0.60:
            return rng.choice(self.handwritten)
        return self.compose(rng)

    def compose(self, rng: random.Random) -> str:
        """A random instruction of one to three phrases (rarely with conflicting styles)."""
        parts: list[str] = []
        if rng.random() < 0.6:
            parts.append(rng.choice(list(self.neutral)))
        if not parts or rng.random() < 0.75:
            style = rng.choice(self.styles)
            k = 2 if rng.random() < 0.2 and len(self.explicit[style]) > 1 else 1
            parts += rng.sample(self.explicit[style], k)
            if len(parts) < 3 and rng.random() < 0.06:
                other = rng.choice([s for s in self.styles if s != style])
                parts.append(rng.choice(self.explicit[other]))
        if len(parts) > 1 and rng.random() < 0.2:
            rng.shuffle(parts)
        return " ".join(parts[:3])

    def recombine(self, first: str, second: str, rng: random.Random) -> str:
        """Crossover (a head of ``first`` + a tail of ``second``, phrase-wise) then, usually, a
        mutation (a phrase swapped for a synonym of the same kind, added or deleted)."""
        a, b = split_phrases(first), split_phrases(second)
        child = a[: rng.randint(0, len(a))] + b[rng.randint(0, len(b)) :]
        if not child:
            child = [rng.choice(a + b)]
        child = list(dict.fromkeys(child))
        if rng.random() < 0.7:
            child = self._mutate(child, rng)
        return " ".join(child[:3])

    def _mutate(self, phrases: list[str], rng: random.Random) -> list[str]:
        out = list(phrases)
        op = rng.choice(("swap", "swap", "add", "delete"))
        if op == "delete" and len(out) > 1:
            del out[rng.randrange(len(out))]
        elif op == "add" and len(out) < 3:
            mix = self.style_mix(" ".join(out))
            style = max(self.styles, key=lambda s: mix[s])
            pool = [*self.explicit[style], *self.neutral]
            new = rng.choice(pool)
            if new not in out:
                out.insert(rng.randint(0, len(out)), new)
        else:
            i = rng.randrange(len(out))
            kind, value = self._lookup.get(_norm(out[i]), ("unknown", ""))
            if kind == "explicit":
                out[i] = rng.choice(self.explicit[value])
            elif kind == "neutral":
                out[i] = rng.choice(list(self.neutral))
        return list(dict.fromkeys(out))

    def synonym(self, phrase: str, rng: random.Random) -> str:
        """Another phrase of the same kind as ``phrase`` (same explicit style, or neutral),
        or ``phrase`` itself for unknown phrases."""
        kind, value = self._lookup.get(_norm(phrase), ("unknown", ""))
        if kind == "explicit":
            return rng.choice(self.explicit[value])
        if kind == "neutral":
            return rng.choice(list(self.neutral))
        return phrase

    def vocabulary(self) -> set[str]:
        """Lower-cased words of all phrases (for `is_well_formed_instruction`)."""
        return {w for p in self.phrases() for w in re.findall(r"[a-z']+", p.lower())}


def _normalised_mix(mix: Mapping[str, float], styles: Sequence[str]) -> dict[str, float]:
    total = sum(mix.get(s, 0.0) for s in styles)
    if total <= 0 or set(mix) - set(styles):
        raise ValueError(f"bad style mixture {dict(mix)} for styles {tuple(styles)}")
    return {s: mix.get(s, 0.0) / total for s in styles}


_FORBIDDEN = ("####", "<ins>", "<prompt>", "</prompt>", "[", "]", "q:", "a:", "score:", "text:")
_INSTRUCTION_TOKEN = re.compile(r"[A-Za-z']+|[.,?!;:]")


def is_well_formed_instruction(
    text: str | None,
    *,
    existing: Iterable[str] = (),
    vocabulary: Iterable[str] | None = None,
) -> bool:
    """Whether ``text`` reads as a task instruction: one line of 2-40 words and punctuation,
    starting with a capital letter and ending with '.', '?' or '!', with no digits, no
    template markers (``####``, ``Q:``, ``<INS>``, brackets, ``score:``) and no word
    repeated three times in a row. With ``existing``, a copy of one of them (up to case and
    spacing) is rejected (a proposal must be new); with ``vocabulary``, every word must be in
    it (e.g. `InstructionSpace.vocabulary`)."""
    if text is None:
        return False
    stripped = text.strip()
    if not stripped or "\n" in stripped or len(stripped) > 300:
        return False
    lowered = stripped.lower()
    if any(marker in lowered for marker in _FORBIDDEN) or re.search(r"\d", stripped):
        return False
    if not stripped[0].isupper() or stripped[-1] not in ".?!":
        return False
    tokens = _INSTRUCTION_TOKEN.findall(stripped)
    if "".join(tokens) != re.sub(r"\s+", "", stripped):  # something that is neither
        return False
    words = [t.lower() for t in tokens if t[0].isalpha()]
    if not 2 <= len(words) <= 40:
        return False
    if any(words[i] == words[i + 1] == words[i + 2] for i in range(len(words) - 2)):
        return False
    if _norm(stripped) in {_norm(e) for e in existing}:
        return False
    return vocabulary is None or set(words) <= {w.lower() for w in vocabulary}


# --------------------------------------------------------------------------------------------
# The zoo task base.
# --------------------------------------------------------------------------------------------


class ZooTask(Task):
    """A generated zoo task: target-domain splits plus the source-domain training corpus.

    Options: ``seed`` (default 0) picks the sampled splits (the world is fixed, see
    `WORLD_SEED`); ``n_train``, ``n_dev``, ``n_test`` (500, 100, 200) their sizes. Splits are
    drawn test first, each from its own random stream, so the test set does not change when
    the train size does. Unknown options raise `BenchError`.

    Subclasses set `space` (and ``instructions = space.instructions``) and implement
    `source_example`, `target_example` and `completion`; tasks whose splits are partitioned
    by entity override `build_splits`, tasks with fact documents override `corpus`.
    """

    space: ClassVar[InstructionSpace]
    stop = ("\n",)
    #: 1 in ``reserve_mod`` inputs is reserved for target splits (see `is_reserved`); 1 = no
    #: reservation (tasks that partition by entity instead).
    reserve_mod: ClassVar[int] = 4
    #: a bound on every document of the task's corpus, in `approx_tokens`.
    max_doc_tokens: ClassVar[int] = 160

    options: ClassVar[Mapping[str, str]] = {
        "seed": "which sampled splits (default 0; the world is fixed)",
        "n_train": "train examples (default 500)",
        "n_dev": "dev examples (default 100)",
        "n_test": "test examples (default 200)",
    }

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        prompt_format: str = "raw",
        seed: int = 0,
        n_train: int = 500,
        n_dev: int = 100,
        n_test: int = 200,
        **options: Any,
    ):
        # The base refuses unknown options (``options`` holds only those).
        super().__init__(
            data_dir,
            prompt_format=prompt_format,
            seed=seed,
            n_train=n_train,
            n_dev=n_dev,
            n_test=n_test,
            **options,
        )
        sizes: dict[Split, int] = {"train": int(n_train), "dev": int(n_dev), "test": int(n_test)}
        if any(n < 0 for n in sizes.values()):
            raise BenchError(f"task {self.name}: split sizes must be >= 0, got {sizes}")
        self.seed = int(seed)
        self.sizes = sizes
        self._splits: dict[Split, list[Example]] | None = None

    # -- target splits -------------------------------------------------------------------

    def load_split(self, split: Split) -> list[Example]:
        if self._splits is None:
            self._splits = self.build_splits()
        return list(self._splits[split])

    def build_splits(self) -> dict[Split, list[Example]]:
        """Target examples per split: reserved inputs (`is_reserved`), distinct across splits."""
        return self.draw_splits(lambda split, rng: self.target_example(rng), reserve=True)

    def draw_splits(
        self,
        draw: Callable[[Split, random.Random], Example | None],
        *,
        reserve: bool,
        balance_targets: bool = False,
    ) -> dict[Split, list[Example]]:
        """``sizes[split]`` examples per split from ``draw(split, rng)`` (None = retry), test
        first, with inputs distinct across splits (and reserved when ``reserve``). With
        ``balance_targets`` a split takes at most half its size (rounded up) of any one
        target, for tasks whose rarer answer runs out of distinct inputs first."""
        seen: set[str] = set()
        out: dict[Split, list[Example]] = {}
        for split in self.split_order():
            rng = random.Random(f"{self.name}/target/{self.seed}/{split}")
            examples: list[Example] = []
            per_target: Counter[str] = Counter()
            for _ in range(200 * self.sizes[split] + 1000):
                if len(examples) == self.sizes[split]:
                    break
                ex = draw(split, rng)
                if ex is None or ex.input in seen:
                    continue
                if reserve and not is_reserved(ex.input, self.reserve_mod):
                    continue
                if balance_targets:
                    if per_target[ex.target] >= (self.sizes[split] + 1) // 2:
                        continue
                    per_target[ex.target] += 1
                seen.add(ex.input)
                examples.append(replace(ex, id=f"{split}-{len(examples)}"))
            else:
                raise BenchError(
                    f"task {self.name}: cannot draw {self.sizes[split]} {split} inputs"
                )
            out[split] = examples
        return {s: out[s] for s in SPLITS}

    def split_order(self) -> tuple[Split, ...]:
        """Splits in drawing order: test first, so its content does not depend on the others."""
        return ("test", "dev", "train")

    def partition(self, entities: Sequence[Any]) -> dict[str, list[Any]]:
        """``entities`` cut into disjoint per-split groups (tasks whose splits must not share
        a person or topic), in the fixed proportions `PARTITION`, so that a split's content
        does not depend on the other splits' sizes."""
        rng = random.Random(f"{self.name}/partition/{self.seed}")
        return allocate(entities, PARTITION, rng)

    @abstractmethod
    def target_example(self, rng: random.Random) -> Example:
        """One random target-domain example (id assigned by the caller)."""

    @abstractmethod
    def source_example(self, rng: random.Random) -> Example:
        """One random source-domain example (any input; reservation is checked by callers)."""

    def cue(self, example: Example) -> bool | None:
        """Whether ``example`` carries the task's style cue (see `InstructionSpace.cue_shift`);
        None for tasks without one."""
        return None

    @abstractmethod
    def completion(self, example: Example, style: str) -> str:
        """The completion of ``example`` in answer ``style`` (one line, answer included)."""

    # -- training corpus -------------------------------------------------------------------

    def draw_source(self, rng: random.Random) -> Example:
        """A source example whose input is not reserved for the target splits."""
        while True:
            ex = self.source_example(rng)
            if self.reserve_mod <= 1 or not is_reserved(ex.input, self.reserve_mod):
                return ex

    def document(self, example: Example, instruction: str | None, style: str) -> str:
        """``render(example, instruction)`` + " " + the completion in ``style``."""
        return self.render(example, instruction=instruction) + " " + self.completion(example, style)

    def source_documents(self, n: int, seed: int) -> list[str]:
        """``n`` source-domain QA documents: an instruction drawn from the space (or none),
        the prompt, and a completion in a style drawn from the instruction's mixture."""
        rng = random.Random(f"{self.name}/source/{seed}")
        docs = []
        for _ in range(n):
            example = self.draw_source(rng)
            instruction = self.space.sample(rng)
            docs.append(
                self.document(
                    example,
                    instruction,
                    self.space.sample_style(instruction, rng, self.cue(example)),
                )
            )
        return docs

    def corpus(self, n_docs: int, seed: int) -> list[str]:
        """All of the task's training documents, ``n_docs`` in all, shuffled."""
        return self.source_documents(n_docs, seed)

    #: the cycle of proposer document kinds: OPRO 40%, EvoPrompt GA, DE and paraphrase 20% each.
    PROPOSER_CYCLE: ClassVar[tuple[str, ...]] = ("opro", "ga", "opro", "de", "paraphrase")

    def proposer_documents(self, n: int, seed: int) -> list[str]:
        """``n`` instruction-writing documents in the methods' own templates
        (`methods.prompting`): OPRO meta-prompts (3-6 scored instructions of this task,
        ascending, sometimes a short exemplar), EvoPrompt GA crossover and DE requests, and
        paraphrase requests (EvoPrompt's initial population, GrIPS's substitution). Answers
        recombine phrases of the best (OPRO, DE) or both (GA) given instructions, or swap a
        phrase for one of the same kind (paraphrase), so proposals stay in the instruction
        space (well formed and meaningful)."""
        rng = random.Random(f"{self.name}/proposer/{seed}")
        docs: list[str] = []
        while len(docs) < n:
            kind = self.PROPOSER_CYCLE[len(docs) % len(self.PROPOSER_CYCLE)]
            if kind == "opro":
                docs.append(self._opro_document(rng))
            elif kind == "ga":
                first, second = self._distinct_instructions(rng, 2)
                new = self._new_instruction(rng, first, second, [first, second])
                docs.append(evoprompt_crossover_prompt(first, second) + evoprompt_answer(new))
            elif kind == "de":
                basic, first, second, best = self._distinct_instructions(rng, 4)
                if self.space.quality(basic) > self.space.quality(best):
                    basic, best = best, basic  # Prompt 3 is the current best
                new = self._new_instruction(rng, best, basic, [basic, first, second, best])
                docs.append(evoprompt_de_prompt(basic, first, second, best) + evoprompt_answer(new))
            else:
                (text,) = self._distinct_instructions(rng, 1)
                docs.append(
                    paraphrase_prompt(text) + paraphrase_answer(self._paraphrase(text, rng))
                )
        return docs

    def _paraphrase(self, text: str, rng: random.Random) -> str:
        """``text`` with phrases swapped for others of the same kind (same style, or neutral
        for neutral), at least one changed: the meaning, i.e. the style mixture, is kept."""
        for _ in range(20):
            new = " ".join(self.space.synonym(p, rng) for p in split_phrases(text))
            if _norm(new) != _norm(text):
                return new
        return self.space.compose(rng)

    def _opro_document(self, rng: random.Random) -> str:
        shown = self._distinct_instructions(rng, rng.randint(3, 6))
        scored = sorted(
            ((t, self.space.simulated_score(t, rng)) for t in shown), key=lambda p: p[1]
        )
        # a good optimiser: of three recombinations of the two best, usually the best one
        candidates = [
            self._new_instruction(rng, scored[-1][0], scored[-2][0], shown) for _ in range(3)
        ]
        new = max(candidates, key=self.space.quality) if rng.random() < 0.8 else candidates[0]
        exemplars: list[tuple[str, str]] = []
        if rng.random() < 0.5:
            example = self.draw_source(rng)
            exemplars = [(example.input, example.target)]
        doc = opro_meta_prompt(scored, exemplars) + opro_answer(new)
        if exemplars and approx_tokens(doc) > MAX_PROPOSER_TOKENS:
            doc = opro_meta_prompt(scored) + opro_answer(new)
        while approx_tokens(doc) > MAX_PROPOSER_TOKENS and len(scored) > 3:
            scored = scored[1:]  # drop the worst, as OPRO keeps the top instructions
            doc = opro_meta_prompt(scored) + opro_answer(new)
        return doc

    def _distinct_instructions(self, rng: random.Random, k: int) -> list[str]:
        out: list[str] = []
        while len(out) < k:
            text = self.space.sample(rng) or self.space.compose(rng)
            if _norm(text) not in {_norm(t) for t in out}:
                out.append(text)
        return out

    def _new_instruction(
        self, rng: random.Random, first: str, second: str, existing: Sequence[str]
    ) -> str:
        taken = {_norm(t) for t in existing}
        for _ in range(20):
            new = self.space.recombine(first, second, rng)
            if _norm(new) not in taken:
                return new
        while True:
            new = self.space.compose(rng)
            if _norm(new) not in taken:
                return new


def zoo_task_classes() -> tuple[type[ZooTask], ...]:
    """The four zoo task classes (imported here lazily: they import this module)."""
    from benchmarks.tasks.zoo_arith import ZooArith
    from benchmarks.tasks.zoo_hops import ZooHops
    from benchmarks.tasks.zoo_sentiment import ZooSentiment
    from benchmarks.tasks.zoo_truth import ZooTruth

    return (ZooArith, ZooHops, ZooTruth, ZooSentiment)


def zoo_corpus(n_docs_per_task: int, seed: int = 0, proposer_share: float = 0.12) -> list[str]:
    """The whole zoo training corpus: each task's `ZooTask.corpus` (``n_docs_per_task``
    documents) and its proposer documents (``proposer_share`` of that), shuffled. Documents
    carry no EOS; the trainer appends it."""
    docs: list[str] = []
    for cls in zoo_task_classes():
        task = cls()
        docs += task.corpus(n_docs_per_task, seed)
        docs += task.proposer_documents(round(n_docs_per_task * proposer_share), seed)
    random.Random(f"zoo/corpus/{seed}").shuffle(docs)
    return docs
