"""Step-wise decoding from several next-token distributions over one vocabulary.

Not a method (nothing here is a tuner). Proxy-tuning and contrastive decoding are one idea:
at every step, the next-token distributions of the black box and of local white-box causal
LMs are combined by a formula into one score per token, and the next token is chosen from
those scores. This module holds the machinery; each method supplies its formula:

- `LocalLM`: a local transformers causal LM stepped token by token, one KV cache per batch of
  rows (rows are selected and reordered with the cache, for finished rows and beams);
- `check_vocabulary`: the black box and the local models must share ONE vocabulary (token
  strings by id, rows padded past the tokenizer allowed); otherwise a one-line `BenchError`;
- `decode`: the loop. All live sequences of a step go to the black box in ONE call
  (`next_token_logprobs`), each local model advances them in one batched forward pass, the
  ``formula`` maps ``{name: [R, V] log-probs}`` to ``[R, V]`` scores, and the next token is
  the argmax (greedy), a sample (``temperature`` > 0), or the top beams (``num_beams`` > 1,
  beam scores summing the formula's scores). Stop strings are matched on decoded text, EOS
  ends a sequence, and the forward passes of every model are counted per example;
- `DecodingPolicy`: the adapted policy both methods return (prompt, decode, extract).

The formula sees log-probabilities (``log_softmax`` of each model's logits), not raw logits:
the black box only gives those, and a per-row constant does not change a softmax, an argmax or
a plausibility cutoff relative to the row's maximum, so formulas written on logits (proxy-
tuning's ``z_M + α(z+ - z-)``, O'Brien & Lewis' ``(1+β)z_E - βz_A``) give the same tokens.

Top-k approximation (``top_k_only``): a backend with top-k ``logprobs`` but no full
distribution (an API such as GPT-3.5, the proxy-tuning paper's black-box case study) is asked
for one greedy token with its top-``top_logprobs`` alternatives per step; the black box's row
is -inf outside those k tokens, so the combination is restricted to them (every token outside
the black box's top-k scores -inf after the formula, whatever the local models say). Where the
backend chose EOS it reports no alternatives, and the row is EOS alone.

The black box reads text (the prompt plus the decoded continuation, re-tokenized by the
server) while the local models read token ids (the prompt's ids plus the chosen ids); with one
byte-level BPE the two agree except where a chosen token sequence is not the tokenizer's own
segmentation of its text.

torch and transformers are imported inside the functions that use them, so listing methods
(which imports every method module) does not pay for them.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from methods.base import (
    LOGPROBS,
    NEXT_TOKEN_LOGITS,
    AdaptedPolicy,
    BlackBox,
    CapabilityError,
    ComputeMeter,
    Example,
    Prediction,
    TaskLike,
)
from methods.kv_cache import cache_kwargs, cache_of
from methods.registry import BenchError

if TYPE_CHECKING:
    import torch

#: the key of the black box's distribution in the formula's input.
BLACK_BOX = "black_box"

#: ``{model name: [R, V] log-probs}`` -> ``[R, V]`` scores (-inf: not allowed).
Formula = Callable[[Mapping[str, "torch.Tensor"]], "torch.Tensor"]
#: what a local model reads: the whole prompt, or only its last token (Li et al.'s amateur
#: with ``--ignore_prefix yes``), then the continuation.
ContextMode = Literal["full", "last_token"]


def default_device(requested: str | None = None) -> str:
    """``requested``, else "cuda" when a GPU is available, else "cpu"."""
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------
# Local white-box models.
# --------------------------------------------------------------------------------------------


class LocalLM:
    """A local causal LM decoded step by step with a KV cache.

    Args:
        model: a transformers causal LM (put in eval mode and on ``device``).
        tokenizer: its tokenizer.
        device: "cpu" or "cuda".
    """

    def __init__(self, model: Any, tokenizer: Any, *, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        eos = tokenizer.eos_token_id
        if eos is None:
            raise BenchError("white-box model: its tokenizer has no EOS token")
        self.eos_id = int(eos)
        #: tokens the tokenizer knows: the width of every distribution in the combination.
        self.vocab_size = len(tokenizer)
        positions = getattr(model.config, "n_positions", None) or getattr(
            model.config, "max_position_embeddings", None
        )
        self.context_length: int | None = int(positions) if positions else None
        self._vocab: list[str] | None = None

    @classmethod
    def load(cls, directory: Path | str, *, device: str = "cpu") -> LocalLM:
        """Load a local transformers model directory (never downloads)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = Path(directory)
        if not path.is_dir():
            raise BenchError(f"white-box model {path}: not a local model directory")
        bar = hf_logging.is_progress_bar_enabled()
        if bar:  # methods never print: no "Loading weights" bar on stderr
            hf_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, use_safetensors=True
            )
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        return cls(model, tokenizer, device=device)

    def save(self, directory: Path) -> None:
        """Model (safetensors) and tokenizer in transformers format, without progress bars."""
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        if bar:
            hf_logging.disable_progress_bar()
        try:
            self.model.save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)
        finally:
            if bar:
                hf_logging.enable_progress_bar()

    def vocabulary(self) -> list[str]:
        """Token strings by id, one per row of the model's output (rows past the tokenizer,
        padding of the embedding matrix, have no text), as the serving engine lists them."""
        if self._vocab is None:
            rows = int(self.model.get_output_embeddings().weight.shape[0])
            known = min(self.vocab_size, rows)
            texts = self.tokenizer.batch_decode(
                [[i] for i in range(known)], clean_up_tokenization_spaces=False
            )
            self._vocab = [*texts, *([""] * (rows - known))]
        return self._vocab

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as a prompt, as the serving engine encodes it (special tokens
        added; an empty prompt is the start token)."""
        ids = list(self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
        return ids or [self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        return str(
            self.tokenizer.decode(
                list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
        )

    def start(self, contexts: Sequence[Sequence[int]]) -> LocalState:
        """Read ``contexts`` (left-padded into one batch); the state holds the next-token
        log-probs of each row and the cache to continue them."""
        import torch

        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), self.eos_id, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for row, context in enumerate(contexts):
            ids[row, width - len(context) :] = torch.tensor(list(context), dtype=torch.long)
            mask[row, width - len(context) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True
            )
        logprobs = out.logits[:, -1, : self.vocab_size].float().log_softmax(-1)
        return LocalState(cache_of(out), mask, positions[:, -1] + 1, logprobs)

    def advance(self, state: LocalState, tokens: torch.Tensor) -> None:
        """Append one token per row of ``state`` and update its log-probs."""
        import torch

        tokens = tokens.to(self.device)
        mask = torch.cat([state.mask, state.mask.new_ones((state.mask.shape[0], 1))], dim=1)
        with torch.inference_mode():
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=state.next_position[:, None],
                use_cache=True,
                **cache_kwargs(self.model, state.past),
            )
        state.past = cache_of(out)
        state.mask = mask
        state.next_position = state.next_position + 1
        state.logprobs = out.logits[:, -1, : self.vocab_size].float().log_softmax(-1)


@dataclass
class LocalState:
    """A batch of rows being decoded by one `LocalLM`: cache, mask, positions, log-probs."""

    past: Any
    mask: torch.Tensor
    next_position: torch.Tensor
    logprobs: torch.Tensor

    def select(self, rows: Sequence[int]) -> None:
        """Keep ``rows`` in this order (repeats allowed: beams that share a prefix)."""
        import torch

        if list(rows) == list(range(self.mask.shape[0])):
            return  # nothing finished, no beam moved
        index = torch.tensor(list(rows), dtype=torch.long, device=self.mask.device)
        self.past.reorder_cache(index)
        self.mask = self.mask.index_select(0, index)
        self.next_position = self.next_position.index_select(0, index)
        self.logprobs = self.logprobs.index_select(0, index)


def weights_digest(directory: Path | str) -> str:
    """sha256 over a model directory's weight files (safetensors, else .bin), to tell at
    load time whether a model recorded by path is still the one a policy was tuned with."""
    path = Path(directory)
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def load_recorded(
    directory: str, digest: str | None, *, role: str, who: str, device: str
) -> LocalLM:
    """Load a model a policy recorded by its resolved directory, refusing (one line) when
    it is gone or its weights changed since tuning."""
    if not Path(directory).is_dir():
        raise BenchError(f"{who}: the {role} {directory} is not a local model directory")
    if digest is not None and weights_digest(directory) != digest:
        raise BenchError(
            f"{who}: the {role} at {directory} has changed since the policy was tuned "
            f"(weights {weights_digest(directory)}, recorded {digest})"
        )
    return LocalLM.load(directory, device=device)


# --------------------------------------------------------------------------------------------
# One vocabulary.
# --------------------------------------------------------------------------------------------


def check_vocabulary(
    black_box: Sequence[str], local: Sequence[str], *, size: int, who: str, other: str
) -> None:
    """Refuse (one-line `BenchError`) unless ``black_box`` and ``local`` list the same token
    strings for the ``size`` ids the tokenizer knows; rows past them must be text-less
    padding in both."""
    if len(black_box) < size or len(local) < size:
        raise BenchError(
            f"{who}: {other} has {len(black_box)} tokens, the local tokenizer {size}; "
            "the distributions cannot be combined over one vocabulary"
        )
    for i in range(size):
        if black_box[i] != local[i]:
            raise BenchError(
                f"{who}: {other}'s vocabulary differs from the local tokenizer's (id {i}: "
                f"{black_box[i]!r} vs {local[i]!r}); the distributions cannot be combined"
            )
    extra = [t for t in (*black_box[size:], *local[size:]) if t]
    if extra:
        raise BenchError(
            f"{who}: {other} has tokens the local tokenizer lacks (e.g. {extra[0]!r}); "
            "the distributions cannot be combined over one vocabulary"
        )


def black_box_vocabulary(black_box: BlackBox) -> list[str] | None:
    """The black box's vocabulary, or None where it does not expose one."""
    try:
        return list(black_box.vocabulary())
    except CapabilityError:
        return None


def top_k_mode(backend: BlackBox, forced: bool, who: str) -> bool:
    """Whether decoding goes through the top-k approximation on ``backend``: when forced or
    when it serves no full distribution (then it must offer top-k logprobs)."""
    offered = backend.capabilities
    if NEXT_TOKEN_LOGITS in offered and not forced:
        return False
    if LOGPROBS not in offered:
        raise BenchError(
            f"{who}: {backend.model} offers neither next-token distributions nor top-k logprobs"
        )
    return True


def top_k_detail(backend: BlackBox, k: int, forced: bool) -> str:
    """The "substitute" disclosure of the top-k approximation (`top_k_mode`)."""
    why = "top_k_only is set" if forced else f"{backend.model} serves no full distribution"
    return (
        f"decoded from the black box's top-{k} logprobs, not its full next-token distribution "
        f"({why})"
    )


def task_instruction(task: TaskLike, index: int) -> str | None:
    """The task's instruction ``index`` (the last one if fewer), None if it has none."""
    if not task.instructions:
        return None
    return task.instructions[min(index, len(task.instructions) - 1)]


def check_models(
    black_box: BlackBox, white_boxes: Mapping[str, LocalLM], *, who: str, top_k_only: bool
) -> None:
    """All local models share the first one's vocabulary, and so does the black box. With
    the top-k approximation a black box that lists no vocabulary passes here; each token
    string it returns is then checked as it comes."""
    names = list(white_boxes)
    if not names:
        raise BenchError(f"{who}: no white-box model to combine with the black box")
    ref = white_boxes[names[0]]
    for name in names[1:]:
        check_vocabulary(
            white_boxes[name].vocabulary(),
            ref.vocabulary(),
            size=ref.vocab_size,
            who=who,
            other=f"white-box model {name}",
        )
    vocab = black_box_vocabulary(black_box)
    if vocab is None:
        if top_k_only:
            return
        raise BenchError(f"{who}: {black_box.model} exposes no vocabulary")
    check_vocabulary(
        vocab, ref.vocabulary(), size=ref.vocab_size, who=who, other=f"black box {black_box.model}"
    )


# --------------------------------------------------------------------------------------------
# The black box's row of a step.
# --------------------------------------------------------------------------------------------


def black_box_logprobs(
    black_box: BlackBox,
    texts: Sequence[str],
    *,
    vocab_size: int,
    top_k_only: bool = False,
    top_logprobs: int = 5,
    token_ids: Mapping[str, int] | None = None,
    eos_id: int = 0,
) -> torch.Tensor:
    """The black box's next-token log-probs after each text, [len(texts), vocab_size], in
    ONE call: the full distribution, or (``top_k_only``) -inf outside the top-k tokens of a
    one-token greedy generation."""
    import torch

    if not top_k_only:
        rows = black_box.next_token_logprobs(list(texts))
        if rows.shape[1] < vocab_size:
            raise BenchError(
                f"{black_box.model}: a distribution over {rows.shape[1]} tokens, the local "
                f"tokenizer has {vocab_size}"
            )
        return torch.from_numpy(rows[:, :vocab_size].copy()).float()
    if token_ids is None:
        raise BenchError("top-k approximation: no token-string map")
    outs = black_box.generate(
        list(texts), n=1, temperature=0.0, max_tokens=1, logprobs=top_logprobs
    )
    table = torch.full((len(texts), vocab_size), -math.inf)
    for row, samples in enumerate(outs):
        sample = samples[0]
        tops: dict[str, float] = dict(sample.top_logprobs[0]) if sample.top_logprobs else {}
        if sample.tokens and sample.token_logprobs:
            tops.setdefault(sample.tokens[0], float(sample.token_logprobs[0]))
        if not tops:
            # No token came back: the black box chose EOS (its alternatives go unreported).
            table[row, eos_id] = 0.0
            continue
        for token, logprob in tops.items():
            if token not in token_ids:
                raise BenchError(
                    f"{black_box.model} returned token {token!r}, which the local tokenizer "
                    "does not have; the distributions cannot be combined over one vocabulary"
                )
            table[row, token_ids[token]] = float(logprob)
    return table


# --------------------------------------------------------------------------------------------
# The decoding loop.
# --------------------------------------------------------------------------------------------


@dataclass
class Decoded:
    """One decoded continuation.

    Attributes:
        text: the text, stop string and EOS excluded.
        token_ids: the chosen token ids (those after a stop string dropped).
        finish_reason: "stop" (EOS or stop string) or "length".
        score: the summed formula scores of the chosen tokens (beam search: length-normalised).
        steps: decoding steps run for this example.
        passes: forward passes per model (black box: calls) for this example, over all its
            beams.
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    score: float
    steps: int = 0
    passes: dict[str, int] = field(default_factory=dict)

    def stats(self) -> dict[str, Any]:
        """What a prediction's ``extra`` reports: tokens, forward passes, passes per token."""
        tokens = max(1, len(self.token_ids))
        return {
            "tokens": len(self.token_ids),
            "steps": self.steps,
            "forward_passes": dict(self.passes),
            "passes_per_token": round(sum(self.passes.values()) / tokens, 3),
        }


@dataclass
class _Row:
    """A live sequence: its example, chosen ids, decoded text and summed score."""

    example: int
    ids: list[int]
    text: str
    score: float


@dataclass
class _Hypothesis:
    ids: list[int]
    text: str
    score: float
    finish: str


def decode(
    prompts: Sequence[str],
    *,
    black_box: BlackBox,
    white_boxes: Mapping[str, LocalLM],
    formula: Formula,
    max_tokens: int,
    stop: Sequence[str] = (),
    num_beams: int = 1,
    length_penalty: float = 1.0,
    temperature: float = 0.0,
    seed: int = 0,
    top_k_only: bool = False,
    top_logprobs: int = 5,
    contexts: Mapping[str, ContextMode] | None = None,
    compute: ComputeMeter | None = None,
    who: str = "decoding",
    check: bool = True,
) -> list[Decoded]:
    """Decode a continuation of each prompt from the combined distributions.

    Args:
        prompts: the prompts (text), one per example.
        black_box: the black box (`BLACK_BOX` in the formula's input).
        white_boxes: local models by name (their names in the formula's input); the first
            one's tokenizer encodes prompts and decodes continuations.
        formula: ``{name: [R, V] log-probs}`` -> ``[R, V]`` scores; NaN and +inf count as
            -inf (not allowed).
        max_tokens: the most tokens per continuation (capped by the context windows).
        stop: strings that end a continuation (cut before the first one).
        num_beams: 1 decodes greedily (or samples); more runs beam search over the summed
            scores, an example finishing when ``num_beams`` hypotheses have ended.
        length_penalty: a finished hypothesis ranks by score / tokens**length_penalty.
        temperature: > 0 samples from softmax(scores / temperature) (``num_beams`` = 1).
        seed: the sampling seed (each example draws from its own generator).
        top_k_only: use the black box's top-``top_logprobs`` logprobs (one greedy token per
            call) instead of its full distribution: the labelled approximation.
        contexts: per local model, "full" (default) or "last_token" of the prompt.
        compute: times the local models' forward passes ("white-box decoding").
        who: the method's name, for error messages.
        check: refuse unless all models share one vocabulary (`check_models`).
    """
    import torch

    if num_beams < 1:
        raise BenchError(f"{who}: num_beams must be at least 1, got {num_beams}")
    if temperature > 0 and num_beams > 1:
        raise BenchError(f"{who}: sampling (temperature > 0) needs num_beams = 1")
    if not prompts:
        return []
    if check:
        check_models(black_box, white_boxes, who=who, top_k_only=top_k_only)
    names = list(white_boxes)
    ref = white_boxes[names[0]]
    contexts = dict(contexts or {})
    token_ids: dict[str, int] = {}
    if top_k_only:
        for i, text in enumerate(ref.vocabulary()[: ref.vocab_size]):
            token_ids.setdefault(text, i)

    prompt_ids = [ref.encode(p) for p in prompts]
    windows = [
        w
        for w in (black_box.context_length, *(m.context_length for m in white_boxes.values()))
        if w
    ]
    window = min(windows) if windows else None
    limits: list[int] = []
    for ids in prompt_ids:
        room = max_tokens if window is None else min(max_tokens, window - len(ids))
        if room < 1:
            raise BenchError(
                f"{who}: a prompt of {len(ids)} tokens leaves no room to decode in a context "
                f"window of {window}"
            )
        limits.append(room)

    n = len(prompts)
    passes = [dict.fromkeys([BLACK_BOX, *names], 0) for _ in range(n)]
    steps = [0] * n
    finished: list[list[_Hypothesis]] = [[] for _ in range(n)]
    generators = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(n)]
    rows = [_Row(i, [], "", 0.0) for i in range(n)]

    def context_of(name: str, ids: list[int]) -> list[int]:
        return ids[-1:] if contexts.get(name, "full") == "last_token" else ids

    with _timed(compute):
        states = {
            name: white_boxes[name].start([context_of(name, ids) for ids in prompt_ids])
            for name in names
        }

    while rows:
        texts = [prompts[r.example] + r.text for r in rows]
        bb = black_box_logprobs(
            black_box,
            texts,
            vocab_size=ref.vocab_size,
            top_k_only=top_k_only,
            top_logprobs=top_logprobs,
            token_ids=token_ids,
            eos_id=ref.eos_id,
        )
        inputs = {BLACK_BOX: bb, **{name: states[name].logprobs.cpu() for name in names}}
        scores = formula(inputs).float()
        scores = torch.where(torch.isnan(scores) | (scores == math.inf), -math.inf, scores)
        if top_k_only:
            scores = scores.masked_fill(~torch.isfinite(bb), -math.inf)
        # A row with nothing allowed falls back to the black box's own choice.
        empty = ~torch.isfinite(scores).any(dim=-1)
        if empty.any():
            scores[empty] = bb[empty]
        for example in {r.example for r in rows}:
            steps[example] += 1
        for r in rows:
            for name in (BLACK_BOX, *names):
                passes[r.example][name] += 1

        by_example: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            by_example.setdefault(r.example, []).append(i)
        sources: list[int] = []
        next_rows: list[_Row] = []
        for example, members in by_example.items():
            candidates = _candidates(
                scores, rows, members, num_beams, temperature, generators[example]
            )
            for index, row in _extend(
                candidates,
                rows,
                lm=ref,
                stop=stop,
                limit=limits[example],
                num_beams=num_beams,
                finished=finished[example],
            ):
                sources.append(index)
                next_rows.append(row)
        rows = next_rows
        if rows:
            tokens = torch.tensor([r.ids[-1] for r in rows], dtype=torch.long)
            with _timed(compute):
                for name in names:
                    states[name].select(sources)
                    white_boxes[name].advance(states[name], tokens)

    out: list[Decoded] = []
    for example in range(n):
        best = max(
            finished[example],
            key=lambda h: h.score / max(1, len(h.ids) + (h.finish == "stop")) ** length_penalty,
        )
        norm = max(1, len(best.ids) + (best.finish == "stop")) ** length_penalty
        score = best.score / norm if num_beams > 1 else best.score
        out.append(
            Decoded(best.text, best.ids, best.finish, score, steps[example], passes[example])
        )
    return out


def _candidates(
    scores: torch.Tensor,
    rows: Sequence[_Row],
    members: Sequence[int],
    num_beams: int,
    temperature: float,
    generator: torch.Generator,
) -> list[tuple[int, int, float]]:
    """(row index, token, summed score) continuations of one example's live rows, best
    first: the argmax or a sample for one beam, else the top 2·num_beams of beam score +
    step score over all its beams (as in beam search, so finished ones can be replaced)."""
    import torch

    if num_beams == 1:
        (index,) = members
        row = scores[index]
        if temperature > 0:
            probs = (row / temperature).softmax(-1)
            token = int(torch.multinomial(probs, 1, generator=generator).item())
        else:
            token = int(row.argmax().item())
        return [(index, token, rows[index].score + float(row[token]))]
    block = scores[list(members)]
    base = torch.tensor([rows[i].score for i in members], dtype=block.dtype)
    total = (block + base[:, None]).flatten()
    allowed = int(torch.isfinite(total).sum().item())
    k = min(2 * num_beams, max(1, allowed))
    values, flat = total.topk(k)
    width = block.shape[1]
    return [
        (members[int(f) // width], int(f) % width, float(v))
        for v, f in zip(values.tolist(), flat.tolist(), strict=True)
    ]


def _extend(
    candidates: Sequence[tuple[int, int, float]],
    rows: Sequence[_Row],
    *,
    lm: LocalLM,
    stop: Sequence[str],
    limit: int,
    num_beams: int,
    finished: list[_Hypothesis],
) -> list[tuple[int, _Row]]:
    """Walk one example's candidates best first: EOS, a stop string or the length cap end a
    hypothesis (appended to ``finished``), the others live on. Returns (source row, new
    row) for up to ``num_beams`` live rows; none once ``num_beams`` hypotheses have ended."""
    longest_stop = max((len(s) for s in stop), default=0)
    live: list[tuple[int, _Row]] = []
    for index, token, total in candidates:
        row = rows[index]
        ids = [*row.ids, token]
        if token == lm.eos_id:
            finished.append(_Hypothesis(row.ids, row.text, total, "stop"))
        else:
            text = lm.decode(ids)
            # A stop string can only be new where it overlaps the latest token.
            start = max(0, len(row.text) - longest_stop + 1)
            hits = [i for s in stop if s and (i := text.find(s, start)) >= 0]
            if hits:
                cut = min(hits)
                finished.append(_Hypothesis(_ids_before(lm, ids, cut), text[:cut], total, "stop"))
            elif len(ids) >= limit:
                finished.append(_Hypothesis(ids, text, total, "length"))
            else:
                live.append((index, _Row(row.example, ids, text, total)))
        if len(finished) >= num_beams:
            return []  # the example is done: its live beams go
        if len(live) >= num_beams:
            break
    return live


def _ids_before(lm: LocalLM, ids: list[int], cut: int) -> list[int]:
    """The leading ids whose text ends before character ``cut``, the stop string's start."""
    kept = 0
    while kept < len(ids) and len(lm.decode(ids[: kept + 1])) <= cut:
        kept += 1
    return ids[:kept]


def _timed(compute: ComputeMeter | None) -> contextlib.AbstractContextManager[object]:
    """``compute.compute("white-box decoding")`` when a meter is given, else nothing."""
    if compute is None:
        return contextlib.nullcontext()
    return compute.compute("white-box decoding")


# --------------------------------------------------------------------------------------------
# The adapted policy of decoding-time methods.
# --------------------------------------------------------------------------------------------


@dataclass
class DecodingPolicy(AdaptedPolicy):
    """The black box decoded together with local models, by a method's formula.

    Subclasses (one per method, registered in its own file under the method's name as
    ``kind``) name their local models in `white_boxes`, give the `formula`, and save what
    they need.

    Attributes:
        instruction: the instruction placed in the task's template.
        max_new_tokens: the most tokens per answer; None: the task's ``max_tokens``.
        top_k_only: decode from the black box's top-k logprobs even where the full
            distribution is available (the approximation, for backends without it).
        top_logprobs: k of the top-k approximation.
        device: where the local models run (None: a GPU when available).
    """

    instruction: str | None = None
    max_new_tokens: int | None = None
    top_k_only: bool = False
    top_logprobs: int = 5
    device: str | None = None

    @abstractmethod
    def white_boxes(self) -> Mapping[str, LocalLM]:
        """The local models by name (loaded on first use)."""

    @abstractmethod
    def formula(self) -> Formula:
        """Scores from the distributions."""

    def contexts(self) -> Mapping[str, ContextMode]:
        """What each local model reads of the prompt (default: all of it)."""
        return {}

    def beams(self) -> tuple[int, float]:
        """(num_beams, length_penalty); greedy by default."""
        return 1, 1.0

    def predict(
        self, examples: Sequence[Example], *, task: TaskLike, backend: BlackBox
    ) -> list[Prediction]:
        if not examples:
            return []
        prompts = [task.render(ex, instruction=self.instruction) for ex in examples]
        num_beams, length_penalty = self.beams()
        decoded = decode(
            prompts,
            black_box=backend,
            white_boxes=self.white_boxes(),
            formula=self.formula(),
            max_tokens=self.max_new_tokens or task.max_tokens,
            stop=task.stop,
            num_beams=num_beams,
            length_penalty=length_penalty,
            top_k_only=top_k_mode(backend, self.top_k_only, self.kind),
            top_logprobs=self.top_logprobs,
            contexts=self.contexts(),
            compute=self.compute,
            who=self.kind,
        )
        return [
            Prediction(ex.id, d.text, task.extract(d.text, ex), extra=d.stats(), prompt=prompt)
            for ex, d, prompt in zip(examples, decoded, prompts, strict=True)
        ]

    def decoding_json(self) -> dict[str, Any]:
        return {
            "instruction": self.instruction,
            "max_new_tokens": self.max_new_tokens,
            "top_k_only": self.top_k_only,
            "top_logprobs": self.top_logprobs,
        }
