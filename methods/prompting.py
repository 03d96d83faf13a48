"""Shared machinery of the prompt-space tuners (GrIPS, EvoPrompt, OPRO, BBT): the proposer
templates of the papers, parsing of proposals, and batched scoring of instructions.

Not a method (nothing here is registered). The templates live on the method side because
they are part of the methods; the zoo imports them to train its black box as a proposer
(`benchmarks/tasks/_zoo.py`), so the zoo model meets exactly the prompts the methods send.

Scoring is batched: all (instruction, example) prompts of a round go to the black box in one
`generate` or `score` call, so the harness can send them concurrently and cache each one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from methods.base import (
    GENERATE,
    NEXT_TOKEN_LOGITS,
    SCORE,
    BlackBox,
    Example,
    Prediction,
    PromptPolicy,
    TaskLike,
    answer_with_prompts,
    policy_types,
)
from methods.registry import BenchError

# --------------------------------------------------------------------------------------------
# Proposer templates.
# --------------------------------------------------------------------------------------------

OPRO_HEADER = (
    "I have some texts along with their corresponding scores. The texts are arranged in "
    "ascending order based on their scores, where higher scores indicate better quality."
)
OPRO_EXEMPLAR_LEAD = (
    "The following exemplars show how to apply your text: you replace <INS> in each input "
    "with your text, then read the input and give an output."
)
OPRO_FOOTER = (
    "Write your new text that is different from the old ones and has a score as high as "
    "possible. Write the text in square brackets."
)


def opro_meta_prompt(
    scored: Sequence[tuple[str, float]], exemplars: Sequence[tuple[str, str]] = ()
) -> str:
    """OPRO's meta-prompt, text-bison variant (google-deepmind/opro, ``opt_utils.py``
    ``gen_meta_prompt``): past instructions with scores 0-100 in ascending order, optional
    ``(input, answer)`` exemplars with the instruction at Q_begin, then the request; the answer
    is expected in square brackets."""
    parts = [OPRO_HEADER]
    for text, score in sorted(scored, key=lambda pair: pair[1]):
        parts.append(f"text:\n{' '.join(text.split())}\nscore:\n{round(score)}")
    if exemplars:
        shown = [f"input:\nQ: <INS>\n{q}\nA:\noutput:\n{a}" for q, a in exemplars]
        parts.append("\n\n".join([OPRO_EXEMPLAR_LEAD, *shown]))
    parts.append(OPRO_FOOTER)
    return "\n\n".join(parts)


def opro_answer(instruction: str) -> str:
    """The completion a proposer gives to `opro_meta_prompt` (newline, then ``[text]``)."""
    return f"\n[{instruction}]"


def evoprompt_crossover_prompt(first: str, second: str) -> str:
    """EvoPrompt's GA request (Guo et al. 2024, ``data/template_ga.py``), without its one-shot
    demonstration: cross over two prompts, mutate, answer in ``<prompt></prompt>``."""
    return (
        "Please follow the instruction step-by-step to generate a better prompt.\n"
        "1. Cross over the following prompts and generate a new prompt:\n"
        f"Prompt 1: {' '.join(first.split())}\n"
        f"Prompt 2: {' '.join(second.split())}\n"
        "2. Mutate the prompt generated in Step 1 and generate a final prompt bracketed with "
        "<prompt> and </prompt>."
    )


def evoprompt_de_prompt(basic: str, first: str, second: str, best: str) -> str:
    """EvoPrompt's DE request (template v1, ``data/template_de.py``), without its one-shot
    demonstration: the difference of Prompt 1 and Prompt 2, mutated, merged into Prompt 3 (the
    current best), crossed over with the basic prompt; answer in ``<prompt></prompt>``."""
    return (
        "Please follow the instruction step-by-step to generate a better prompt.\n"
        "1. Identify the different parts between the Prompt 1 and Prompt 2:\n"
        f"Prompt 1: {' '.join(first.split())}\n"
        f"Prompt 2: {' '.join(second.split())}\n"
        "2. Randomly mutate the different parts\n"
        "3. Combine the different parts with Prompt 3, selectively replace it with the "
        "different parts in Step 2 and generate a new prompt.\n"
        f"Prompt 3: {' '.join(best.split())}\n"
        "4. Cross over the prompt in the Step 3 with the following basic prompt and generate a "
        "final prompt bracketed with <prompt> and </prompt>:\n"
        f"Basic Prompt: {' '.join(basic.split())}"
    )


def evoprompt_answer(instruction: str) -> str:
    """The completion a proposer gives to an EvoPrompt request (GA or DE)."""
    return f"\n<prompt>{instruction}</prompt>"


def paraphrase_prompt(instruction: str) -> str:
    """EvoPrompt's paraphrase request (``evoluter.py`` ``init_pop``, mode ``para_topk``), also
    the paraphraser of GrIPS's ``sub`` edit here (PEGASUS is not available offline)."""
    return (
        "Generate a variation of the following instruction while keeping the semantic "
        f"meaning.\nInput: {' '.join(instruction.split())}\nOutput:"
    )


def paraphrase_answer(instruction: str) -> str:
    """The completion a proposer gives to `paraphrase_prompt`."""
    return f" <prompt>{instruction}</prompt>"


def reclose(text: str, opener: str, closer: str) -> str:
    """``text`` with ``closer`` put back after an API stopped at it (a stop sequence is not
    part of the answer): when an ``opener`` follows the last ``closer``."""
    return text + closer if text.rfind(opener) > text.rfind(closer) else text


_TAGGED = re.compile(r"<prompt>(.*?)</prompt>", re.S)
_BRACKETED = re.compile(r"\[([^\[\]]*)\]")


def parse_proposal(text: str) -> str | None:
    """The instruction in a proposer's output: the last ``<prompt>...</prompt>`` (EvoPrompt),
    else the first ``[...]`` (OPRO); None if there is neither or it is empty."""
    tagged = _TAGGED.findall(text)
    found = tagged[-1] if tagged else None
    if found is None:
        bracketed = _BRACKETED.search(text)
        found = bracketed.group(1) if bracketed else None
    found = " ".join(found.split()) if found is not None else None
    return found or None


def normalize_instruction(text: str | None) -> str:
    """A key for de-duplicating instructions: lower case, single spaces, no space before
    punctuation."""
    return re.sub(r"\s+([.,?!;:])", r"\1", " ".join((text or "").lower().split()))


# --------------------------------------------------------------------------------------------
# Scoring instructions on a score set.
# --------------------------------------------------------------------------------------------


def score_instructions(
    instructions: Sequence[str | None],
    examples: Sequence[Example],
    *,
    task: TaskLike,
    backend: BlackBox,
    demos: Sequence[Example] = (),
) -> list[float]:
    """Mean task score of each instruction on ``examples`` (greedy answers parsed from text,
    as OPRO and EvoPrompt score): all prompts of all instructions in one batch."""
    if not instructions:
        return []
    if not examples:
        raise BenchError(f"task {task.name}: no examples to score instructions on")
    prompts = [
        task.render(ex, instruction=ins, demos=demos) for ins in instructions for ex in examples
    ]
    repeated = [ex for _ in instructions for ex in examples]
    predictions = answer_with_prompts(prompts, repeated, task=task, backend=backend)
    scores = [task.score(p.answer, ex) for p, ex in zip(predictions, repeated, strict=True)]
    n = len(examples)
    return [float(np.mean(scores[i * n : (i + 1) * n])) for i in range(len(instructions))]


def label_mode(task: TaskLike, backend: BlackBox) -> str:
    """How `label_logprobs` reads labels on ``backend``: "score" (logprob of each label word as
    a continuation, GrIPS's echo path), "next_token" (the first token of each label word in
    the full next-token distribution), or "parsed" (greedy text, parsed by the task)."""
    if not task.labels:
        raise BenchError(f"task {task.name} has no label words; label scoring needs them")
    if SCORE in backend.capabilities:
        return "score"
    if NEXT_TOKEN_LOGITS in backend.capabilities:
        return "next_token"
    if GENERATE in backend.capabilities:
        return "parsed"
    raise BenchError(f"backend {backend.model} offers neither score, next_token_logits nor text")


def label_logprobs(
    prompts: Sequence[str], *, task: TaskLike, backend: BlackBox, mode: str | None = None
) -> np.ndarray:
    """Log-probabilities over the task's labels after each prompt, normalised over the label
    set (GrIPS ``get_regular_label_probs``), shape [B, L]. In "parsed" mode a row is one-hot
    on the parsed label (uniform when no label was found)."""
    labels = list(task.labels or ())
    mode = mode or label_mode(task, backend)
    if not prompts:
        return np.zeros((0, len(labels)))
    if mode == "score":
        flat = [p for p in prompts for _ in labels]
        conts = [" " + label for _ in prompts for label in labels]
        totals = np.array([s.total for s in backend.score(flat, conts)])
        raw = totals.reshape(len(prompts), len(labels))
    elif mode == "next_token":
        ids = label_token_ids(labels, backend.vocabulary())
        raw = backend.next_token_logprobs(list(prompts))[:, ids]
    elif mode == "parsed":
        outs = backend.generate(
            list(prompts),
            n=1,
            temperature=0.0,
            max_tokens=task.max_tokens,
            stop=list(task.stop) or None,
        )
        raw = np.full((len(prompts), len(labels)), -np.inf)
        for row, out in enumerate(outs):
            text = out[0].text.strip().lower()
            hit = next((i for i, lab in enumerate(labels) if text.startswith(lab.lower())), None)
            if hit is None:
                raw[row] = 0.0
            else:
                raw[row, hit] = 0.0
    else:
        raise BenchError(f"unknown label mode {mode!r}; valid: score, next_token, parsed")
    return raw - _logsumexp(raw)


def label_token_ids(labels: Sequence[str], vocabulary: Sequence[str]) -> list[int]:
    """For each label word, the vocabulary id of its first token after a space: the longest
    vocabulary entry that is a prefix of " label" (BBT and GrIPS truncate labels to one token).
    Raises if two labels share their first token (they could not be told apart)."""
    by_text: dict[str, int] = {}
    for i, tok in enumerate(vocabulary):
        by_text.setdefault(tok, i)
    ids: list[int] = []
    for label in labels:
        target = " " + label
        best = next((target[:k] for k in range(len(target), 0, -1) if target[:k] in by_text), None)
        if best is None or best == " ":
            raise BenchError(f"label {label!r} has no first token in the vocabulary")
        ids.append(by_text[best])
    if len(set(ids)) < len(ids):
        by_id: dict[int, list[str]] = {}
        for label, i in zip(labels, ids, strict=True):
            by_id.setdefault(i, []).append(label)
        clashes = "; ".join(
            f"{', '.join(map(repr, group))} all start with token {vocabulary[i]!r}"
            for i, group in by_id.items()
            if len(group) > 1
        )
        raise BenchError(
            f"labels share a first token, so next-token scoring cannot tell them apart: {clashes}"
        )
    return ids


def _logsumexp(raw: np.ndarray) -> np.ndarray:
    top = np.max(raw, axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return top + np.log(np.sum(np.exp(raw - top), axis=1, keepdims=True))


def unchanged_instruction(
    returned: str | None, starts: Sequence[str | None], task: TaskLike
) -> str | None:
    """What ``returned`` is when it is one of the starting instructions ``starts`` (compared as
    `normalize_instruction`): 'the task's instruction 2 ("...")' for a hand-written one, else
    the quoted text; None when the search returned something else (a "no-change" test)."""
    key = normalize_instruction(returned)
    if not any(key == normalize_instruction(start) for start in starts):
        return None
    quoted = f'"{" ".join((returned or "").split())}"'
    for i, manual in enumerate(task.instructions):
        if normalize_instruction(manual) == key:
            return f"the task's hand-written instruction {i} ({quoted})"
    return quoted if returned else "no instruction"


def unique_instructions(candidates: Iterable[str | None], seen: Iterable[str | None]) -> list[str]:
    """``candidates`` without None, empties, repeats and anything in ``seen`` (normalised)."""
    taken = {normalize_instruction(s) for s in seen}
    out: list[str] = []
    for text in candidates:
        key = normalize_instruction(text)
        if text and key and key not in taken:
            taken.add(key)
            out.append(" ".join(text.split()))
    return out


# --------------------------------------------------------------------------------------------
# A prompt whose classification answers are read by likelihood.
# --------------------------------------------------------------------------------------------


@policy_types.register("label-likelihood")
@dataclass
class LabelLikelihoodPolicy(PromptPolicy):
    """An instruction whose classification answers are the most likely label word
    (`label_logprobs`, normalised over the label set), as GrIPS predicts. Falls back to
    parsing greedy text when the backend offers neither ``score`` nor ``next_token_logits``
    or the task has no label set."""

    kind: ClassVar[str] = "label-likelihood"

    def predict(
        self, examples: Sequence[Example], *, task: TaskLike, backend: BlackBox
    ) -> list[Prediction]:
        mode = label_mode(task, backend) if is_labelled(task) else "parsed"
        if mode not in ("score", "next_token"):
            return super().predict(examples, task=task, backend=backend)
        labels = list(task.labels or ())
        prompts = [self.prompt(ex, task) for ex in examples]
        logprobs = label_logprobs(prompts, task=task, backend=backend, mode=mode)
        out = []
        for ex, row, prompt in zip(examples, logprobs, prompts, strict=True):
            label = labels[int(np.argmax(row))]
            extra = {"label_logprobs": {lab: float(v) for lab, v in zip(labels, row, strict=True)}}
            out.append(Prediction(ex.id, label, label, extra, prompt=prompt))
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], directory: Path) -> LabelLikelihoodPolicy:
        return cls(
            instruction=data.get("instruction"),
            demos=tuple(Example.from_json(d) for d in data.get("demos", [])),
        )


def is_labelled(task: TaskLike) -> bool:
    """Whether ``task`` is a classification task with label words (likelihood scoring applies)."""
    return task.kind == "classification" and bool(task.labels)
