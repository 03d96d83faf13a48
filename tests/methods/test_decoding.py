"""The shared decoding loop on scripted distributions: no network, no model."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from methods import BenchError, CapabilityError, Completion
from methods.decoding import (
    BLACK_BOX,
    Decoded,
    check_vocabulary,
    decode,
    task_instruction,
    top_k_mode,
    weights_digest,
)

EOS = 0
#: id -> text; " c\nx" holds a stop string inside one token.
VOCAB = ["<eos>", " a", " b", " c", "\n", " c\nx", " d"]
V = len(VOCAB)

Script = Callable[[tuple[int, ...]], Mapping[int, float]]


def _encode(text: str) -> list[int]:
    """Longest-match tokenization over VOCAB (the scripted models' tokenizer)."""
    ids: list[int] = []
    while text:
        best = max(
            (i for i, t in enumerate(VOCAB) if i != EOS and text.startswith(t)),
            key=lambda i: len(VOCAB[i]),
            default=None,
        )
        if best is None:
            text = text[1:]  # characters of the prompt outside VOCAB: skipped
            continue
        ids.append(best)
        text = text[len(VOCAB[best]) :]
    return ids


def _logprobs(probs: Mapping[int, float]) -> list[float]:
    """A full log-distribution: the given probabilities, the rest shared by the others."""
    rest = [i for i in range(V) if i not in probs]
    left = max(0.0, 1.0 - sum(probs.values()))
    row = [-math.inf] * V
    for i, p in probs.items():
        row[i] = math.log(p)
    for i in rest:
        row[i] = math.log(left / len(rest)) if left > 0 else -math.inf
    return row


class _State:
    def __init__(self, lm: ScriptedLM, contexts: list[list[int]]):
        self.lm = lm
        self.contexts = contexts
        self.logprobs = self._rows()

    def _rows(self) -> torch.Tensor:
        return torch.tensor([_logprobs(self.lm.script(tuple(c))) for c in self.contexts])

    def select(self, rows: Sequence[int]) -> None:
        self.contexts = [list(self.contexts[i]) for i in rows]
        self.logprobs = self.logprobs[list(rows)]


class ScriptedLM:
    """A `LocalLM` stand-in whose next-token probabilities are a function of its context."""

    def __init__(self, script: Script, *, vocab: Sequence[str] = VOCAB):
        self.script = script
        self._vocab = list(vocab)
        self.vocab_size = V
        self.eos_id = EOS
        self.context_length: int | None = None
        self.started: list[list[int]] = []
        self.passes = 0

    def vocabulary(self) -> list[str]:
        return self._vocab

    def encode(self, text: str) -> list[int]:
        return _encode(text) or [EOS]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(VOCAB[i] for i in ids if i != EOS)

    def start(self, contexts: Sequence[Sequence[int]]) -> _State:
        self.started = [list(c) for c in contexts]
        self.passes += len(contexts)
        return _State(self, [list(c) for c in contexts])

    def advance(self, state: _State, tokens: torch.Tensor) -> None:
        self.passes += len(state.contexts)
        state.contexts = [[*c, int(t)] for c, t in zip(state.contexts, tokens, strict=True)]
        state.logprobs = state._rows()


class ScriptedBox:
    """A black box whose distribution is a function of the text after the prompt."""

    model = "scripted"
    context_length: int | None = None

    def __init__(
        self,
        script: Callable[[str], Mapping[int, float]],
        *,
        vocab: Sequence[str] = VOCAB,
        full: bool = True,
    ):
        self.script = script
        self._vocab = list(vocab)
        self.capabilities = frozenset(
            {"generate", "logprobs", *(["next_token_logits"] if full else [])}
        )
        self.batches: list[list[str]] = []
        self.generate_args: list[dict[str, Any]] = []

    def vocabulary(self) -> list[str]:
        return self._vocab

    def next_token_logprobs(self, prompts: Sequence[str], **_: Any) -> np.ndarray:
        self.batches.append(list(prompts))
        return np.array([_logprobs(self.script(p)) for p in prompts], dtype=np.float32)

    def generate(self, prompts: Sequence[str], **kwargs: Any) -> list[list[Completion]]:
        self.batches.append(list(prompts))
        self.generate_args.append(kwargs)
        k = kwargs["logprobs"]
        out = []
        for p in prompts:
            row = _logprobs(self.script(p))
            top = sorted(range(V), key=lambda i: -row[i])[:k]
            if top[0] == EOS:
                out.append([Completion("", "stop", (), (), ())])
                continue
            tops = {VOCAB[i]: row[i] for i in top}
            out.append(
                [Completion(VOCAB[top[0]], "length", (VOCAB[top[0]],), (row[top[0]],), (tops,))]
            )
        return out


def _after(prompt: str) -> Callable[[Callable[[str], Mapping[int, float]]], Any]:
    """Decorator: a black-box script of the text after ``prompt``."""

    def wrap(fn: Callable[[str], Mapping[int, float]]) -> Callable[[str], Mapping[int, float]]:
        return lambda text: fn(text[len(prompt) :])

    return wrap


PROMPT = "Q: go\nA:"


@_after(PROMPT)
def _abc(cont: str) -> Mapping[int, float]:
    """a -> b -> EOS, with c second everywhere."""
    return {"": {1: 0.6, 3: 0.3}, " a": {2: 0.5, 3: 0.4}, " a b": {EOS: 0.9}}.get(cont, {EOS: 1.0})


def _flat(context: tuple[int, ...]) -> Mapping[int, float]:
    return {}


def _only_black_box(d: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return d[BLACK_BOX]


def test_greedy_decodes_the_black_box_and_counts_passes() -> None:
    box, lm = ScriptedBox(_abc), ScriptedLM(_flat)
    (out,) = decode(
        [PROMPT], black_box=box, white_boxes={"small": lm}, formula=_only_black_box, max_tokens=10
    )
    assert out.text == " a b"
    assert out.token_ids == [1, 2]
    assert out.finish_reason == "stop"
    # three steps (a, b, EOS): one black-box call each, one local pass each
    assert out.steps == 3
    assert out.passes == {BLACK_BOX: 3, "small": 3}
    assert box.batches == [[PROMPT], [PROMPT + " a"], [PROMPT + " a b"]]
    assert out.stats()["passes_per_token"] == 3.0
    assert out.score == pytest.approx(math.log(0.6) + math.log(0.5) + math.log(0.9))


def test_the_formula_steers_the_choice_and_all_live_rows_share_one_call() -> None:
    # The local "expert" puts everything on c after " a": the sum picks c over b.
    def expert(context: tuple[int, ...]) -> Mapping[int, float]:
        return {3: 0.97} if context[-1:] == (1,) else {}

    box = ScriptedBox(_abc)
    outs = decode(
        [PROMPT, PROMPT],
        black_box=box,
        white_boxes={"expert": ScriptedLM(expert), "flat": ScriptedLM(_flat)},
        formula=lambda d: d[BLACK_BOX] + d["expert"] - d["flat"],
        max_tokens=2,
    )
    assert [o.text for o in outs] == [" a c", " a c"]
    # a batch per step holding both examples
    assert [len(b) for b in box.batches] == [2, 2]
    assert all(o.finish_reason == "length" for o in outs)


def test_stop_strings_cut_the_text_and_length_caps() -> None:
    @_after(PROMPT)
    def newline(cont: str) -> Mapping[int, float]:
        return {1: 0.9} if cont == "" else {4: 0.9}

    @_after(PROMPT)
    def inside(cont: str) -> Mapping[int, float]:
        return {1: 0.9} if cont == "" else {5: 0.9}

    lm = ScriptedLM(_flat)
    (out,) = decode(
        [PROMPT],
        black_box=ScriptedBox(newline),
        white_boxes={"m": lm},
        formula=_only_black_box,
        max_tokens=10,
        stop=("\n",),
    )
    assert (out.text, out.token_ids, out.finish_reason) == (" a", [1], "stop")
    (out,) = decode(
        [PROMPT],
        black_box=ScriptedBox(inside),
        white_boxes={"m": lm},
        formula=_only_black_box,
        max_tokens=10,
        stop=("\n",),
    )
    # " c\nx" carries the stop string: the text is cut before it, the token is dropped
    assert (out.text, out.token_ids, out.finish_reason) == (" a c", [1], "stop")
    (out,) = decode(
        [PROMPT],
        black_box=ScriptedBox(newline),
        white_boxes={"m": lm},
        formula=_only_black_box,
        max_tokens=1,
        stop=("\n",),
    )
    assert (out.text, out.finish_reason, out.steps) == (" a", "length", 1)


def test_vocabulary_mismatch_is_refused_in_one_line() -> None:
    other = [*VOCAB[:2], " B", *VOCAB[3:]]
    with pytest.raises(BenchError, match=r"vocabulary differs .*id 2: ' B' vs ' b'") as err:
        decode(
            [PROMPT],
            black_box=ScriptedBox(_abc, vocab=other),
            white_boxes={"m": ScriptedLM(_flat)},
            formula=_only_black_box,
            max_tokens=3,
            who="proxy-tuning",
        )
    assert "\n" not in str(err.value) and str(err.value).startswith("proxy-tuning:")
    # padding rows without text past the tokenizer are fine; real extra tokens are not
    check_vocabulary([*VOCAB, "", ""], VOCAB, size=V, who="x", other="y")
    with pytest.raises(BenchError, match="tokens the local tokenizer lacks"):
        check_vocabulary([*VOCAB, " e"], VOCAB, size=V, who="x", other="y")
    with pytest.raises(BenchError, match="cannot be combined"):
        check_vocabulary(VOCAB[:3], VOCAB, size=V, who="x", other="y")
    # two local models must agree too
    with pytest.raises(BenchError, match="white-box model b"):
        decode(
            [PROMPT],
            black_box=ScriptedBox(_abc),
            white_boxes={"a": ScriptedLM(_flat), "b": ScriptedLM(_flat, vocab=other)},
            formula=_only_black_box,
            max_tokens=3,
        )


def test_top_k_restricts_the_combination_to_the_black_box_top_k() -> None:
    # The expert wants d (id 6), which is outside the black box's top-2 (a, c) at step 1.
    def expert(context: tuple[int, ...]) -> Mapping[int, float]:
        return {6: 0.99}

    box = ScriptedBox(_abc, full=False)
    formula = lambda d: d[BLACK_BOX] + 5 * (d["expert"] - d["flat"])  # noqa: E731
    (out,) = decode(
        [PROMPT],
        black_box=box,
        white_boxes={"expert": ScriptedLM(expert), "flat": ScriptedLM(_flat)},
        formula=formula,
        max_tokens=2,
        top_k_only=True,
        top_logprobs=2,
    )
    assert 6 not in out.token_ids and out.token_ids == [1, 2]
    # even a formula that ignores the black box stays within its top-k
    (own,) = decode(
        [PROMPT],
        black_box=ScriptedBox(_abc, full=False),
        white_boxes={"expert": ScriptedLM(expert)},
        formula=lambda d: d["expert"],
        max_tokens=2,
        top_k_only=True,
        top_logprobs=2,
    )
    assert own.token_ids[0] in (1, 3)
    assert box.generate_args[0] == {
        "n": 1,
        "temperature": 0.0,
        "max_tokens": 1,
        "logprobs": 2,
    }
    # with the full distribution the expert gets its token
    (full,) = decode(
        [PROMPT],
        black_box=ScriptedBox(_abc),
        white_boxes={"expert": ScriptedLM(expert), "flat": ScriptedLM(_flat)},
        formula=formula,
        max_tokens=2,
    )
    assert full.token_ids[0] == 6


def test_top_k_eos_and_unknown_tokens() -> None:
    # After " a b" the black box's greedy token is EOS: no alternatives come back, EOS wins.
    (out,) = decode(
        [PROMPT],
        black_box=ScriptedBox(_abc, full=False),
        white_boxes={"m": ScriptedLM(_flat)},
        formula=_only_black_box,
        max_tokens=10,
        top_k_only=True,
    )
    assert (out.text, out.finish_reason) == (" a b", "stop")

    class Strange(ScriptedBox):
        def vocabulary(self) -> list[str]:
            raise CapabilityError("no vocabulary")

        def generate(self, prompts: Sequence[str], **kwargs: Any) -> list[list[Completion]]:
            return [[Completion(" zz", "length", (" zz",), (-0.1,), ({" zz": -0.1},))]]

    with pytest.raises(BenchError, match="' zz', which the local tokenizer does not have"):
        decode(
            [PROMPT],
            black_box=Strange(_abc, full=False),
            white_boxes={"m": ScriptedLM(_flat)},
            formula=_only_black_box,
            max_tokens=3,
            top_k_only=True,
        )


def test_beam_search_finds_the_better_sequence() -> None:
    # Greedy takes a (0.6) then faces four equal tokens (0.25 each): 0.15 in all.
    # b (0.4) is followed by EOS with certainty: 0.4. Two beams find it.
    @_after(PROMPT)
    def trap(cont: str) -> Mapping[int, float]:
        table = {
            "": {1: 0.6, 2: 0.4},
            " a": {3: 0.25, 4: 0.25, 5: 0.25, 6: 0.25},
            " b": {EOS: 1.0},
        }
        return table.get(cont, {EOS: 1.0})

    kwargs: dict[str, Any] = {
        "white_boxes": {"m": ScriptedLM(_flat)},
        "formula": _only_black_box,
        "max_tokens": 4,
    }
    (greedy,) = decode([PROMPT], black_box=ScriptedBox(trap), **kwargs)
    assert greedy.token_ids[0] == 1
    box = ScriptedBox(trap)
    (beam,) = decode([PROMPT], black_box=box, num_beams=2, length_penalty=0.0, **kwargs)
    assert (beam.text, beam.finish_reason) == (" b", "stop")
    assert beam.score == pytest.approx(math.log(0.4))
    # the second step sends both beams in one call, and the passes count beams
    assert len(box.batches[1]) == 2
    assert beam.passes[BLACK_BOX] == sum(len(b) for b in box.batches)


def test_amateur_reads_only_the_last_prompt_token_when_asked() -> None:
    full, last = ScriptedLM(_flat), ScriptedLM(_flat)
    decode(
        [" a b c"],
        black_box=ScriptedBox(lambda text: {EOS: 1.0}),
        white_boxes={"full": full, "last": last},
        formula=_only_black_box,
        max_tokens=2,
        contexts={"last": "last_token"},
    )
    assert full.started == [[1, 2, 3]]
    assert last.started == [[3]]


def test_nothing_allowed_falls_back_to_the_black_box_and_nan_is_not_allowed() -> None:
    (out,) = decode(
        [PROMPT],
        black_box=ScriptedBox(_abc),
        white_boxes={"m": ScriptedLM(_flat)},
        formula=lambda d: torch.full_like(d[BLACK_BOX], math.nan),
        max_tokens=5,
    )
    assert out.text == " a b"


def test_sampling_is_seeded_and_needs_one_beam() -> None:
    @_after(PROMPT)
    def even(cont: str) -> Mapping[int, float]:
        return {1: 0.25, 2: 0.25, 3: 0.25, 6: 0.25}

    def run(seed: int) -> list[Decoded]:
        return decode(
            [PROMPT] * 4,
            black_box=ScriptedBox(even),
            white_boxes={"m": ScriptedLM(_flat)},
            formula=_only_black_box,
            max_tokens=6,
            temperature=1.0,
            seed=seed,
        )

    first, again, other = run(0), run(0), run(1)
    assert [d.token_ids for d in first] == [d.token_ids for d in again]
    assert [d.token_ids for d in first] != [d.token_ids for d in other]
    assert len({tuple(d.token_ids) for d in first}) > 1  # each example its own stream
    with pytest.raises(BenchError, match="num_beams = 1"):
        decode(
            [PROMPT],
            black_box=ScriptedBox(even),
            white_boxes={"m": ScriptedLM(_flat)},
            formula=_only_black_box,
            max_tokens=2,
            temperature=1.0,
            num_beams=2,
        )


def test_prompts_that_fill_the_window_are_refused() -> None:
    box = ScriptedBox(_abc)
    box.context_length = 3
    with pytest.raises(BenchError, match="no room to decode in a context window of 3"):
        decode(
            [" a b c"],
            black_box=box,
            white_boxes={"m": ScriptedLM(_flat)},
            formula=_only_black_box,
            max_tokens=5,
        )
    (out,) = decode(  # 3 prompt tokens in a window of 5: 2 left
        [" a b c"],
        black_box=_with_window(5),
        white_boxes={"m": ScriptedLM(_flat)},
        formula=_only_black_box,
        max_tokens=5,
    )
    assert (len(out.token_ids), out.finish_reason) == (2, "length")


def _with_window(n: int) -> ScriptedBox:
    box = ScriptedBox(lambda text: {1: 0.9})
    box.context_length = n
    return box


def test_helpers(tmp_path: Any) -> None:
    box = ScriptedBox(_abc, full=False)
    assert top_k_mode(box, False, "m") is True
    assert top_k_mode(ScriptedBox(_abc), False, "m") is False
    assert top_k_mode(ScriptedBox(_abc), True, "m") is True
    box.capabilities = frozenset({"generate"})
    with pytest.raises(BenchError, match="neither next-token distributions nor top-k"):
        top_k_mode(box, False, "m")

    class Task:
        instructions = ("first", "second")

    assert task_instruction(Task(), 1) == "second"  # type: ignore[arg-type]
    assert task_instruction(Task(), 9) == "second"  # type: ignore[arg-type]
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    digest = weights_digest(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"abd")
    assert weights_digest(tmp_path) != digest
