"""OPRO: Large Language Models as Optimizers (Yang et al., ICLR 2024; google-deepmind/opro).

Instruction search with an LLM as the optimizer. The history H holds every scored instruction
(text, training accuracy, step). Each step builds a meta-prompt from H (the top
``max_num_instructions`` = 20 by score, shown worst to best with scores round(acc * 100), those
under ``old_instruction_score_threshold`` left out) and three training exemplars showing
``<INS>`` at the instruction's position, asks the proposer (temperature 1.0) for eight new
instructions, drops duplicates, instructions over 500 characters, ones containing "INS" and
(arithmetic tasks) ones containing a digit, scores the rest greedily on the score set and adds
them to H. There is no early stop (the code has none). Reference: ``opro/optimization/
opt_utils.py`` (``gen_ins_and_score_pairs_substr`` L52, ``gen_meta_prompt`` L90,
``run_evolution`` L338) and ``optimize_instructions.py`` (defaults, lines cited on `OproConfig`).

The meta-prompt is the text-bison variant (answer in square brackets), `opro_meta_prompt` of
`methods.prompting`: the zoo black box was trained as a proposer on exactly that template. Its
exemplar preamble is the first sentence of the official one (which goes on: "We say your output
is wrong if ... we get wrong outputs on the following inputs."), shortened for the small window.

Instruction positions (``instruction_pos``), with the task's template ``{ins}\\n\\nQ: {q}\\nA:``:
- ``before_Q`` and ``Q_begin``: the task's own ``render`` (the instruction before the question);
  they differ only in the meta-prompt's exemplars (``<INS>\\nQ: q\\nA:`` vs ``Q: <INS>\\nq\\nA:``,
  as in the official code with ``include_qa=True``). Q_begin is the default, as in the README
  quickstart.
- ``Q_end``: the instruction on its own line after the question, before the answer cue ("A:").
- ``A_begin``: the instruction starts the answer (``A: {ins}``); the model continues it.
Gotcha of the official code: its CLI default is ``--instruction_pos=A_begin`` while
``include_qa`` is hard-coded False in the optimizer, and ``gen_meta_prompt`` asserts Q_begin or
Q_end without Q/A, so the default command fails; use Q_begin/Q_end (README) or include_qa.

Deviations, and why:
- n = 8 samples in ONE proposer call per step (the code makes 8 calls of one sample each:
  ``call_palm_server_from_cloud`` returns one text whatever its ``num_decodes``; the samples
  are the same independent T = 1 draws, and one call sends the meta-prompt once). So
  `plan` counts one proposer call (8 completions) per step; the seed of each call is derived
  from the cell's seed and the step, so every step draws new samples.
- The score set is ``num_score_examples`` training examples drawn with the cell's seed (the
  official GSM8K setting is 261 = 3.5% of the training set, np seed 0); the presets use fewer.
  The three exemplars of step t are drawn from it as the code draws them, with a generator
  seeded by t (``np.random.seed(i_step)``), sorted; they show the gold answer (``target``).
- Duplicates are detected after `normalize_instruction` (case and spacing), not by the md5 of
  the exact text, and also against the initial instructions (the code re-scores a regenerated
  initial instruction and shows it twice). The official ``polish_sentence`` is kept: "**"
  removed, first letter capitalised.
- The digit filter is the code's GSM8K-only rule; ``no_digits=None`` turns it on for tasks whose
  name contains "arith" or "gsm".
- A candidate whose scorer prompt would not fit the task model's context window is dropped
  (it could not be sent).
- The meta-prompt is cut to the proposer's context window (the zoo's is 192 tokens; the code
  never cuts): while ``count_tokens(meta) + answer tokens`` exceeds the window, the
  lowest-scored instructions are dropped down to ``min_shown_instructions`` (OPRO keeps the top
  ones, and a trajectory of fewer than three gives the proposer nothing to climb; the zoo
  proposer was trained on 3-6), then the exemplars (last first), then instructions down to one.
  The answer tokens are ``optimizer_max_tokens`` but at most a quarter of the window: the
  official 1024 would not leave a 192-token window any room, and a bracketed zoo instruction
  takes under 40 tokens.
- The light, medium and heavy presets bound the optimizer call: at most 128 tokens (the code
  keeps instructions of up to 500 characters, about 125 tokens) and a stop at "]", the end of
  the first bracketed text, the only text the code extracts. With the official 1024 tokens
  and no stop, a weak proposer wrote ~800 tokens of noise per sample after its instruction
  (one light cell ran past 15 minutes). The ``paper`` preset keeps 1024 and no stop: an
  answer with a stray "]" before its first "[" would be cut before its instruction.
- The official loop also scores every third step's candidates on an eval split, for reporting
  only (``eval_ratio`` is 0 for GSM8K). Here the search ends with a best-on-dev choice: the
  ``dev_top_k`` instructions with the highest training scores are scored on ``dev`` (its first
  ``num_dev_examples``) and the best on dev is returned (ties: higher training score, then the
  earlier instruction); without dev, the best training score wins.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from methods.base import (
    AdaptedPolicy,
    BlackBox,
    BlackBoxTuner,
    CallPlan,
    Example,
    Prediction,
    PromptPolicy,
    TaskKind,
    TaskLike,
    TuneContext,
    answer_with_prompts,
    policy_types,
    register_method,
)
from methods.prompting import (
    OPRO_EXEMPLAR_LEAD,
    OPRO_FOOTER,
    opro_meta_prompt,
    parse_proposal,
    reclose,
    score_instructions,
    unchanged_instruction,
    unique_instructions,
)
from methods.registry import BenchError

POSITIONS: tuple[str, ...] = ("before_Q", "Q_begin", "Q_end", "A_begin")
#: positions where the task's own ``render`` already places the instruction.
RENDER_POSITIONS = frozenset({"before_Q", "Q_begin"})
#: the official default I0 for GSM8K, used when a task has no hand-written instruction.
OFFICIAL_INITIAL_INSTRUCTION = "Let's solve the problem."
#: at most this share of the proposer's window is kept free for its answer.
ANSWER_WINDOW_SHARE = 0.25
#: the proposer call of the budget presets: an instruction is a sentence or two (the code
#: keeps at most 500 characters, about 125 tokens), and the code reads only the first
#: bracketed text, so the call stops at its "]" (see `OproConfig.optimizer_stop`).
_BOUNDED_PROPOSER: Mapping[str, Any] = {"optimizer_max_tokens": 128, "optimizer_stop": ("]",)}

# The exemplar inputs of ``gen_meta_prompt`` (text-bison, include_qa=True), by position.
_EXEMPLAR_INPUTS = {
    "before_Q": "<INS>\nQ: {q}\nA:",
    "Q_begin": "Q: <INS>\n{q}\nA:",
    "Q_end": "Q: {q}\n<INS>\nA:",
    "A_begin": "Q: {q}\nA: <INS>",
}


@dataclass(frozen=True)
class OproConfig:
    #: optimisation steps (``num_search_steps`` 200, optimize_instructions.py L708).
    num_search_steps: int = 200
    #: proposals per step (``num_generated_instructions_in_each_step`` 8, L707), drawn as n=8
    #: samples of one proposer call.
    num_generated_per_step: int = 8
    #: training exemplars in each meta-prompt (``few_shot_qa_pairs`` True with
    #: ``num_few_shot_questions_for_instruction_refinement`` 3, L701; selection "random", L718).
    num_exemplars: int = 3
    #: instructions shown in the meta-prompt, the top ones by score (``max_num_instructions``
    #: 20, L727).
    max_num_instructions: int = 20
    #: instructions scoring below this accuracy are not shown (``old_instruction_score_threshold``
    #: 0.0 with a text-bison scorer, 0.3 with GPT scorers). 0 shows all, as in the code.
    old_instruction_score_threshold: float = 0.0
    #: shown score = round(accuracy * buckets) (``num_score_buckets`` 100, L731).
    num_score_buckets: int = 100
    #: optimizer sampling temperature (1.0 for text-bison and GPT optimizers: optimizer
    #: model configs of optimize_instructions.py).
    optimizer_temperature: float = 1.0
    #: optimizer decode length (``max_decode_steps`` 1024 for text-bison, 512 for GPT); at most
    #: a quarter of a small window is kept for it (see the module docstring). The budget
    #: presets bound it to 128, the longest instruction the code keeps (500 characters).
    optimizer_max_tokens: int = 1024
    #: stop sequences of the optimizer call: none in the code; the budget presets stop at "]",
    #: the end of the first bracketed text, which is all the code extracts
    #: (``extract_string_in_square_brackets``: the first ``[...]``), so a proposer that
    #: rambles on after its instruction is not paid for.
    optimizer_stop: tuple[str, ...] = ()
    #: training examples the instructions are scored on (261 on GSM8K: train_ratio 0.035, L644).
    num_score_examples: int = 261
    #: where the instruction goes: before_Q, Q_begin, Q_end or A_begin (Q_begin: the README).
    instruction_pos: str = "Q_begin"
    #: "default": I0 = the task's default instruction (the code's I0 is one instruction, "Let's
    #: solve the problem." for GSM8K); "all": every hand-written instruction of the task.
    initial_instructions: str = "default"
    #: drop proposals containing a digit (the code does for GSM8K); None: on for tasks whose
    #: name contains "arith" or "gsm".
    no_digits: bool | None = None
    #: drop proposals longer than this many characters (500 in the code).
    max_instruction_chars: int = 500
    #: the fewest instructions the window cut keeps before it drops exemplars (see docstring).
    min_shown_instructions: int = 3
    #: the top instructions by training score re-scored on dev for the final choice (0: none).
    dev_top_k: int = 3
    #: dev examples used for the final choice (the first ones); None: all of dev.
    num_dev_examples: int | None = None


@register_method("opro")
class Opro(BlackBoxTuner):
    """OPRO: the proposer LLM writes new instructions from a meta-prompt of scored past ones."""

    Config = OproConfig
    config: OproConfig
    variant: str | None = None
    # Tuning calls (upper bound; duplicates and filtered proposals are never scored):
    #   S * (|I0| + steps * per_step) scorer prompts + top_k * dev prompts + steps proposer calls
    #   light:  12 * (1 + 6 * 4)  + 2 * 32  + 6  =   370 <=    400
    #   medium: 24 * (1 + 9 * 8)  + 3 * 64  + 9  = 1,953 <=  2,000
    #   heavy:  32 * (1 + 36 * 8) + 4 * 100 + 36 = 9,684 <= 10,000
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "light": {
            **_BOUNDED_PROPOSER,
            "num_search_steps": 6,
            "num_generated_per_step": 4,
            "num_score_examples": 12,
            "dev_top_k": 2,
            "num_dev_examples": 32,
        },
        "medium": {
            **_BOUNDED_PROPOSER,
            "num_search_steps": 9,
            "num_generated_per_step": 8,
            "num_score_examples": 24,
            "dev_top_k": 3,
            "num_dev_examples": 64,
        },
        "heavy": {
            **_BOUNDED_PROPOSER,
            "num_search_steps": 36,
            "num_generated_per_step": 8,
            "num_score_examples": 32,
            "dev_top_k": 4,
            "num_dev_examples": 100,
        },
    }

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        cfg = self.config
        if cfg.instruction_pos not in POSITIONS:
            raise BenchError(
                f"opro: unknown instruction_pos {cfg.instruction_pos!r}; "
                f"valid: {', '.join(POSITIONS)}"
            )
        if cfg.initial_instructions not in ("default", "all"):
            raise BenchError(
                f"opro: unknown initial_instructions {cfg.initial_instructions!r}; "
                "valid: default, all"
            )
        #: every scored instruction: (text, training accuracy, step; -1 for I0), in order.
        self.history: list[tuple[str, float, int]] = []
        #: dev accuracy of the instructions compared on dev at the end.
        self.dev_scores: dict[str, float] = {}

    # -- planning --------------------------------------------------------------------------

    def plan(self, *, task: TaskLike, train: Sequence[Example], dev: Sequence[Example]) -> CallPlan:
        cfg = self.config
        n_score = min(cfg.num_score_examples, len(train))
        n_initial = len(self._initial(task))
        candidates = n_initial + cfg.num_search_steps * cfg.num_generated_per_step
        n_dev = self._n_dev(dev)
        top_k = min(cfg.dev_top_k, candidates) if n_dev else 0
        calls = n_score * candidates + (top_k * n_dev if top_k > 1 else 0)
        prompt = (
            positioned_prompt(task, train[0], self._initial(task)[0], cfg.instruction_pos)
            if train
            else None
        )
        return CallPlan(
            calls=calls,
            samples=calls,
            proposer_calls=cfg.num_search_steps,
            proposer_samples=cfg.num_search_steps * cfg.num_generated_per_step,
            tune_prompt=prompt,
            eval_prompt=prompt,
        )

    # -- tuning ----------------------------------------------------------------------------

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
        context = context or TuneContext()
        proposer = proposer or backend
        if not train:
            raise BenchError(f"opro: task {task.name} has no training examples to score on")
        pos = cfg.instruction_pos
        scorer_task = PositionedTask(task, pos)
        n_score = min(cfg.num_score_examples, len(train))
        picked = np.random.RandomState(context.seed).choice(len(train), n_score, replace=False)
        score_set = [train[i] for i in sorted(picked)]
        dev_set = list(dev or [])[: self._n_dev(dev or [])]
        no_digits = self._no_digits(task)
        fits = _window_check(backend, task, pos, [*score_set, *dev_set])
        self.history = []
        self.dev_scores = {}
        window = getattr(proposer, "context_length", None)
        cuts = 0
        # what the window cut kept per step: (instructions shown, of; exemplars shown, of)
        kept_counts: list[tuple[int, int, int, int]] = []
        unfit = new = 0  # new proposals whose scorer prompts did not fit / passed the filters

        initial = self._initial(task)
        for text, acc in zip(
            initial,
            score_instructions(initial, score_set, task=scorer_task, backend=backend),
            strict=True,
        ):
            self.history.append((text, acc, -1))
        seen: list[str] = list(initial)

        for step in range(cfg.num_search_steps):
            shown = shown_instructions(
                self.history,
                max_num=cfg.max_num_instructions,
                threshold=cfg.old_instruction_score_threshold,
                buckets=cfg.num_score_buckets,
            )
            picks = exemplar_indices(len(score_set), cfg.num_exemplars, step)
            exemplars = [(_question(task, score_set[i]), score_set[i].target) for i in picks]
            meta, kept, kept_ex = fit_meta_prompt(
                shown,
                exemplars,
                pos,
                count_tokens=proposer.count_tokens,
                window=window,
                answer_tokens=cfg.optimizer_max_tokens,
                min_shown=cfg.min_shown_instructions,
            )
            cuts += len(kept) < len(shown) or len(kept_ex) < len(exemplars)
            kept_counts.append((len(kept), len(shown), len(kept_ex), len(exemplars)))
            max_tokens = cfg.optimizer_max_tokens
            if window:
                max_tokens = min(max_tokens, window - proposer.count_tokens(meta))
            outputs = proposer.generate(
                [meta],
                n=cfg.num_generated_per_step,
                temperature=cfg.optimizer_temperature,
                max_tokens=max(1, max_tokens),
                stop=list(cfg.optimizer_stop) or None,
                seed=_step_seed(context.seed, step),
            )[0]
            texts = [
                # An answer cut at "]" lost it; one cut by length keeps its open bracket.
                reclose(c.text, "[", "]")
                if "]" in cfg.optimizer_stop and c.finish_reason == "stop"
                else c.text
                for c in outputs
            ]
            parsed = [polish_sentence(parse_proposal(t)) for t in texts]
            fresh = unique_instructions(parsed, seen)
            seen += [p for p in parsed if p]
            filtered = [
                text
                for text in fresh
                if keep_candidate(text, max_chars=cfg.max_instruction_chars, no_digits=no_digits)
            ]
            accepted = [text for text in filtered if fits(text)]
            new += len(filtered)
            unfit += len(filtered) - len(accepted)
            scores = score_instructions(accepted, score_set, task=scorer_task, backend=backend)
            self.history += [(text, acc, step) for text, acc in zip(accepted, scores, strict=True)]
            context.on_event(
                "opro_step",
                {
                    "step": step,
                    "proposed": len(outputs),
                    "parsed": sum(p is not None for p in parsed),
                    "scored": len(accepted),
                    "shown": len(kept),
                    "exemplars": len(kept_ex),
                    "best": max(acc for _, acc, _ in self.history),
                    # the trace: what the proposer saw and wrote, and the scores
                    "meta_prompt": [{"instruction": t, "score": v} for t, v in kept],
                    "proposals": parsed,
                    "candidates": [
                        {"instruction": t, "score": a}
                        for t, a in zip(accepted, scores, strict=True)
                    ],
                    "unfit": [t for t in filtered if t not in accepted],
                },
            )

        self.variant = (
            f"meta-prompt cut to the {window}-token window in {cuts}/{cfg.num_search_steps} steps"
            if cuts
            else None
        )
        if cuts:
            context.disclose("truncated", self._cut_detail(window, cuts, kept_counts))
        if unfit:
            context.disclose(
                "not-sent",
                f"{unfit} of {new} new proposals never scored: their prompts did not fit the "
                f"task model's {getattr(backend, 'context_length', None)}-token window",
            )
        best = self._select(dev_set, scorer_task, backend)
        context.on_event(
            "opro_done",
            {
                "initial": [{"instruction": t, "score": a} for t, a, s in self.history if s < 0],
                "dev_scores": [{"instruction": t, "score": a} for t, a in self.dev_scores.items()],
                "chosen": best,
            },
        )
        same = unchanged_instruction(best, initial, task)
        if same is not None:
            proposals = sum(step >= 0 for _, _, step in self.history)
            context.disclose(
                "no-change",
                f"returned its starting instruction, {same}: none of the {proposals} scored "
                "proposals beat it",
            )
        if pos in RENDER_POSITIONS:
            return PromptPolicy(instruction=best)
        return PositionedPromptPolicy(instruction=best, position=pos)

    def _cut_detail(
        self, window: int | None, cuts: int, kept: Sequence[tuple[int, int, int, int]]
    ) -> str:
        """The window cut in one line: in how many steps, and how much of the official
        meta-prompt (up to `max_num_instructions` instructions and `num_exemplars`
        exemplars) was left."""
        cfg = self.config

        def span(values: Sequence[int]) -> str:
            low, high = min(values), max(values)
            return f"{low}" if low == high else f"{low}-{high}"

        return (
            f"meta-prompt cut to the proposer's {window}-token window in {cuts} of "
            f"{len(kept)} steps: {span([k[0] for k in kept])} of {span([k[1] for k in kept])} "
            f"scored instructions shown (official: up to {cfg.max_num_instructions}) and "
            f"{span([k[2] for k in kept])} of {span([k[3] for k in kept])} exemplars "
            f"(official: {cfg.num_exemplars})"
        )

    def _select(self, dev: Sequence[Example], scorer_task: TaskLike, backend: BlackBox) -> str:
        """The best instruction: by dev accuracy among the top ``dev_top_k`` by training
        accuracy when there is dev to compare on, else by training accuracy."""
        order = sorted(range(len(self.history)), key=lambda i: (-self.history[i][1], i))
        top = order[: max(1, self.config.dev_top_k)]
        if len(top) < 2 or not dev:
            return self.history[order[0]][0]
        texts = [self.history[i][0] for i in top]
        dev_acc = score_instructions(texts, dev, task=scorer_task, backend=backend)
        self.dev_scores = dict(zip(texts, dev_acc, strict=True))
        rank = {i: r for r, i in enumerate(top)}
        winner = max(top, key=lambda i: (dev_acc[rank[i]], self.history[i][1], -i))
        return self.history[winner][0]

    def _initial(self, task: TaskLike) -> list[str]:
        manual = [" ".join(t.split()) for t in task.instructions if t.strip()]
        if not manual:
            return [OFFICIAL_INITIAL_INSTRUCTION]
        if self.config.initial_instructions == "all":
            return unique_instructions(manual, [])
        return manual[:1]

    def _n_dev(self, dev: Sequence[Example]) -> int:
        limit = self.config.num_dev_examples
        return len(dev) if limit is None else min(limit, len(dev))

    def _no_digits(self, task: TaskLike) -> bool:
        if self.config.no_digits is not None:
            return self.config.no_digits
        name = task.name.lower()
        return "arith" in name or "gsm" in name


# --------------------------------------------------------------------------------------------
# The meta-prompt.
# --------------------------------------------------------------------------------------------


def shown_instructions(
    history: Sequence[tuple[str, float, int]], *, max_num: int, threshold: float, buckets: int
) -> list[tuple[str, float]]:
    """The instructions of the meta-prompt with their shown scores, worst to best: the top
    ``max_num`` by accuracy (a stable sort, as the code's), minus those under ``threshold``
    (none when it is 0), scores as round(accuracy * buckets)
    (``gen_ins_and_score_pairs_substr``)."""
    top = sorted(history, key=lambda item: item[1])[-max_num:] if max_num > 0 else []
    return [
        (text, float(round(acc * buckets)))
        for text, acc, _ in top
        if not threshold or acc >= threshold
    ]


def exemplar_indices(pool: int, k: int, step: int) -> list[int]:
    """The exemplars of step ``step``: ``k`` of ``pool`` positions drawn without replacement by
    a generator seeded with the step, sorted (the code's "random" criterion,
    ``np.random.seed(i_step)``)."""
    k = min(k, pool)
    if k <= 0:
        return []
    return sorted(int(i) for i in np.random.RandomState(step).choice(pool, k, replace=False))


def meta_prompt(
    shown: Sequence[tuple[str, float]], exemplars: Sequence[tuple[str, str]], position: str
) -> str:
    """OPRO's text-bison meta-prompt with exemplars showing ``<INS>`` at ``position``.

    Q_begin is `opro_meta_prompt` itself; the other positions use the exemplar inputs of the
    official ``gen_meta_prompt`` (include_qa=True) in the same layout."""
    if position == "Q_begin" or not exemplars:
        return opro_meta_prompt(shown, exemplars)
    base = opro_meta_prompt(shown)
    template = _EXEMPLAR_INPUTS[position]
    blocks = ["input:\n" + template.replace("{q}", q) + f"\noutput:\n{a}" for q, a in exemplars]
    head = base[: -len(OPRO_FOOTER)]
    return head + "\n\n".join([OPRO_EXEMPLAR_LEAD, *blocks]) + "\n\n" + OPRO_FOOTER


def fit_meta_prompt(
    shown: Sequence[tuple[str, float]],
    exemplars: Sequence[tuple[str, str]],
    position: str,
    *,
    count_tokens: Callable[[str], int],
    window: int | None,
    answer_tokens: int,
    min_shown: int,
) -> tuple[str, list[tuple[str, float]], list[tuple[str, str]]]:
    """The meta-prompt cut to ``window`` with room for the answer: drop the lowest-scored
    instructions down to ``min_shown``, then exemplars (last first), then instructions down to
    one. Returns the prompt and what it kept."""
    kept, kept_ex = list(shown), list(exemplars)
    meta = meta_prompt(kept, kept_ex, position)
    if not window:
        return meta, kept, kept_ex
    reserve = min(answer_tokens, int(window * ANSWER_WINDOW_SHARE))

    def over() -> bool:
        return count_tokens(meta) + reserve > window

    while over() and len(kept) > min_shown:
        kept.pop(0)
        meta = meta_prompt(kept, kept_ex, position)
    while over() and kept_ex:
        kept_ex.pop()
        meta = meta_prompt(kept, kept_ex, position)
    while over() and len(kept) > 1:
        kept.pop(0)
        meta = meta_prompt(kept, kept_ex, position)
    if count_tokens(meta) >= window:
        raise BenchError(
            f"opro: the meta-prompt ({count_tokens(meta)} tokens) does not fit the proposer's "
            f"context window of {window} tokens"
        )
    return meta, kept, kept_ex


def _question(task: TaskLike, example: Example) -> str:
    format_input = getattr(task, "format_input", None)
    return str(format_input(example)) if callable(format_input) else example.input


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed & (2**63 - 1), step]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------
# Candidates.
# --------------------------------------------------------------------------------------------


def polish_sentence(text: str | None) -> str | None:
    """The official ``polish_sentence``: stripped, "**" removed, first letter capitalised."""
    if text is None:
        return None
    text = text.strip().replace("**", "")
    if len(text) > 1:
        text = text[0].upper() + text[1:]
    return text or None


def keep_candidate(text: str, *, max_chars: int, no_digits: bool) -> bool:
    """The code's filters: at most ``max_chars`` characters, no "INS", no digit on GSM8K."""
    if len(text) > max_chars or "INS" in text:
        return False
    return not (no_digits and re.search(r"\d", text))


def _window_check(
    backend: BlackBox, task: TaskLike, position: str, examples: Sequence[Example]
) -> Callable[[str], bool]:
    """Whether an instruction's prompt on the longest of ``examples`` fits the task model's
    window (a prompt that fills it cannot be sent)."""
    window = getattr(backend, "context_length", None)
    if not window or not examples:
        return lambda text: True
    longest = max(examples, key=lambda ex: backend.count_tokens(task.render(ex)))
    return lambda text: (
        backend.count_tokens(positioned_prompt(task, longest, text, position)) < window
    )


# --------------------------------------------------------------------------------------------
# Instruction positions and the positioned policy.
# --------------------------------------------------------------------------------------------


def positioned_prompt(
    task: TaskLike,
    example: Example,
    instruction: str | None,
    position: str,
    demos: Sequence[Example] = (),
) -> str:
    """The task's prompt for ``example`` with ``instruction`` at ``position``.

    before_Q / Q_begin: the task's ``render``. Q_end: the instruction on its own line between
    the question and the last line of the prompt (the answer cue, "A:"). A_begin: the
    instruction after the answer cue. A prompt of one line has no cue: Q_end appends the
    instruction on a new line."""
    if position not in POSITIONS:
        valid = ", ".join(POSITIONS)
        raise BenchError(f"unknown instruction position {position!r}; valid: {valid}")
    text = " ".join((instruction or "").split())
    if position in RENDER_POSITIONS or not text:
        return task.render(example, instruction=text or None, demos=demos)
    bare = task.render(example, demos=demos)
    if position == "A_begin":
        return f"{bare} {text}"
    head, newline, cue = bare.rpartition("\n")
    return f"{head}\n{text}\n{cue}" if newline else f"{bare}\n{text}"


class PositionedTask:
    """``task`` whose ``render`` puts the instruction at ``position`` (so the shared
    `score_instructions` scores positioned prompts); everything else is the task's."""

    def __init__(self, task: TaskLike, position: str):
        self.task = task
        self.position = position

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def kind(self) -> TaskKind:
        return self.task.kind

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.task.labels

    @property
    def instructions(self) -> tuple[str, ...]:
        return self.task.instructions

    @property
    def max_tokens(self) -> int:
        return self.task.max_tokens

    @property
    def stop(self) -> tuple[str, ...]:
        return self.task.stop

    def render(
        self, example: Example, *, instruction: str | None = None, demos: Sequence[Example] = ()
    ) -> str:
        return positioned_prompt(self.task, example, instruction, self.position, demos)

    def render_target(self, example: Example) -> str:
        return self.task.render_target(example)

    def extract(self, text: str, example: Example) -> str | None:
        return self.task.extract(text, example)

    def score(self, answer: str | None, example: Example) -> float:
        return self.task.score(answer, example)


@policy_types.register("positioned-prompt")
@dataclass
class PositionedPromptPolicy(AdaptedPolicy):
    """An instruction placed at an OPRO position (before_Q, Q_begin, Q_end, A_begin) of the
    task's template.

    Attributes:
        instruction: the instruction text, or None for the task's bare template.
        position: where the instruction goes (see `positioned_prompt`).
    """

    kind: ClassVar[str] = "positioned-prompt"
    instruction: str | None = None
    position: str = "Q_begin"

    def prompt(self, example: Example, task: TaskLike) -> str:
        return positioned_prompt(task, example, self.instruction, self.position)

    def predict(
        self, examples: Sequence[Example], *, task: TaskLike, backend: BlackBox
    ) -> list[Prediction]:
        prompts = [self.prompt(ex, task) for ex in examples]
        return answer_with_prompts(prompts, examples, task=task, backend=backend)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], directory: Path) -> PositionedPromptPolicy:
        position = str(data.get("position", "Q_begin"))
        if position not in POSITIONS:
            raise BenchError(f"positioned-prompt policy: unknown position {position!r}")
        return cls(instruction=data.get("instruction"), position=position)
