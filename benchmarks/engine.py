"""A local Hugging Face causal LM in process: generation, scoring and next-token distributions.

`HFEngine` is the model behind both the ``hf`` backend and the OpenAI-compatible server
(`benchmarks.server`). It decodes with its own KV-cached loop rather than ``model.generate``
so that it controls exactly what OpenAI reports: the logprob of each sampled token under the
untempered model (``log_softmax`` of the raw logits), stop strings matched on decoded text,
and samples that are reproducible per (seed, sample index) whatever the batch they ran in.

Prompts are text (tokenized with the tokenizer's special tokens, e.g. a BOS) or token ids
(used as given, e.g. a chat template already rendered and tokenized). Batches are left-padded
with explicit position ids, so a prompt gives the same tokens alone or in a batch.
"""

from __future__ import annotations

import inspect
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from methods.base import Completion
from methods.kv_cache import cache_kwargs, cache_of

#: a prompt as text, or as token ids used verbatim.
Prompt = str | Sequence[int]

T = TypeVar("T")

# Rows per forward pass, and tokens per scoring pass: bounds on memory, not tuning knobs.
MAX_BATCH_ROWS = 64
MAX_SCORE_TOKENS = 16_384


@dataclass(frozen=True)
class Sample:
    """One generated sample.

    Attributes:
        text: the generated text, stop sequence and EOS excluded.
        finish_reason: "stop" (stop sequence or EOS) or "length" (``max_tokens`` reached).
        token_ids: ids of the tokens that make up ``text`` (tokens decoded after a stop
            sequence began are dropped; EOS is not included).
        tokens: those tokens as text.
        token_logprobs: the logprob of each token under the untempered model.
        top_logprobs: the ``k`` most likely tokens at each position, when asked for.
        billed_tokens: tokens the model generated for this sample, EOS and stop included.
    """

    text: str
    finish_reason: str
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    token_logprobs: tuple[float, ...]
    top_logprobs: tuple[dict[str, float], ...] | None
    billed_tokens: int

    def to_completion(self, *, logprobs: bool) -> Completion:
        """As a `methods.base.Completion`, with token details only when ``logprobs``."""
        if not logprobs:
            return Completion(self.text, self.finish_reason)
        return Completion(
            self.text, self.finish_reason, self.tokens, self.token_logprobs, self.top_logprobs
        )


@dataclass(frozen=True)
class Generation:
    """The samples for one prompt and what they cost.

    Attributes:
        samples: ``n`` samples.
        prompt_tokens: tokens of the prompt as fed (after any truncation), counted once.
        completion_tokens: generated tokens of all samples together.
    """

    samples: list[Sample]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ScoredTokens:
    """Logprobs of given tokens.

    Attributes:
        token_ids: the scored tokens.
        tokens: the tokens as text.
        token_logprobs: the logprob of each token given everything before it; None for a
            token with nothing before it (the first token of an echoed prompt).
        top_logprobs: the ``k`` most likely tokens at each position, when asked for (None at
            a position with nothing before it).
        prompt_tokens: tokens fed to the model in all (context and scored tokens).
    """

    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    token_logprobs: tuple[float | None, ...]
    top_logprobs: tuple[dict[str, float] | None, ...] | None
    prompt_tokens: int


def resolve_device(device: str | None = None) -> str:
    """``device``, or "cuda" when a GPU is available, else "cpu"."""
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def sample_seed(seed: int, index: int) -> int:
    """The generator seed of sample ``index`` for request ``seed``: a sample is the same
    whatever ``n`` or batch it was drawn in."""
    return int(np.random.SeedSequence([seed & (2**63 - 1), index]).generate_state(1)[0])


class HFEngine:
    """A causal LM and its tokenizer, serving batched generation, scoring and distributions.

    All public methods are thread-safe (one lock around model use).

    Args:
        model: a transformers causal LM (moved to ``device`` and put in eval mode).
        tokenizer: its tokenizer.
        device: "cuda", "cpu", ...; default "cuda" when available.
        max_context: cap on the context window (default: the model's).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str | None = None,
        max_context: int | None = None,
    ):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self._lock = threading.Lock()
        config = model.config
        window = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        if not window:
            limit = getattr(tokenizer, "model_max_length", None)
            window = limit if isinstance(limit, int) and limit < 1_000_000 else 2048
        self.context_length: int = min(int(window), max_context or int(window))
        self.vocab_size: int = int(model.get_output_embeddings().weight.shape[0])
        eos = {
            tokenizer.eos_token_id,
            *_as_list(getattr(model.generation_config, "eos_token_id", None)),
        }
        self.eos_ids: frozenset[int] = frozenset(i for i in eos if i is not None)
        start = (
            tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        )
        # An empty prompt still needs one position to predict from.
        self._start_id: int = int(start if start is not None else 0)
        pad = tokenizer.pad_token_id
        self._pad_id: int = int(pad if pad is not None else self._start_id)
        self._vocab: list[str] | None = None
        # The Rust tokenizer behind a fast HF tokenizer, called directly: the same ids and
        # text as the wrapper's __call__/decode (no truncation or padding configured on it)
        # at a fraction of the per-call overhead, which matters per request and per step.
        backend = (
            getattr(tokenizer, "_tokenizer", None) if getattr(tokenizer, "is_fast", 0) else None
        )
        if backend is not None and (backend.truncation or backend.padding):
            backend = None
        self._rust: Any = backend
        # Models that can skip the LM head on all but the last position save a [B, L, V] matmul.
        self._keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters

    @classmethod
    def load(
        cls,
        directory: Path | str,
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        max_context: int | None = None,
    ) -> HFEngine:
        """Load a model directory (as written by ``save_pretrained``), never downloading.

        Args:
            directory: a local directory with config, tokenizer and weights.
            device: as for the constructor.
            dtype: weight dtype; default float32 on CPU and the checkpoint's dtype on GPU.
            max_context: as for the constructor.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        device = resolve_device(device)
        if dtype is None:
            dtype = torch.float32 if device == "cpu" else "auto"
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), local_files_only=True, dtype=dtype, use_safetensors=True
        )
        return cls(model, tokenizer, device=device, max_context=max_context)

    # ----------------------------------------------------------------------------------------
    # Tokens
    # ----------------------------------------------------------------------------------------

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt as the model is fed it (special tokens such as BOS added to
        text; ids kept as given); an empty prompt becomes the start token."""
        if isinstance(prompt, str):
            if self._rust is not None:
                ids = list(self._rust.encode(prompt, add_special_tokens=True).ids)
            else:
                ids = list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        else:
            ids = [int(i) for i in prompt]
        return ids or [self._start_id]

    def count_tokens(self, text: str) -> int:
        """Exact tokens of ``text`` as a prompt (what `generate` reports as prompt tokens)."""
        return len(self.encode(text))

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer has a chat template (plain LMs such as the zoo's have none)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_ids(self, turns: Sequence[Mapping[str, str]]) -> list[int]:
        """Token ids of ``turns`` through the tokenizer's chat template, the assistant's turn
        opened (``add_generation_prompt``). Ids, not text: the template writes its own special
        tokens, and encoding its text again would add a BOS twice.

        Raises:
            ValueError: the tokenizer has no chat template.
        """
        if not self.has_chat_template:
            raise ValueError("the tokenizer has no chat template")
        text = self.tokenizer.apply_chat_template(
            [dict(t) for t in turns], tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens dropped, spacing untouched."""
        if self._rust is not None:
            return str(self._rust.decode(list(ids), skip_special_tokens=True))
        return self.tokenizer.decode(
            list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def vocabulary(self) -> list[str]:
        """Token strings by id, one per row of the output distribution."""
        if self._vocab is None:
            known = min(len(self.tokenizer), self.vocab_size)
            texts = self.tokenizer.batch_decode(
                [[i] for i in range(known)], clean_up_tokenization_spaces=False
            )
            # Rows past the tokenizer (embedding matrices padded for speed) have no text.
            self._vocab = [*texts, *([""] * (self.vocab_size - known))]
        return self._vocab

    def embedding_stats(self) -> tuple[int, float, float]:
        """(dimension, mean, std) of the input embedding matrix."""
        weight = self.model.get_input_embeddings().weight.detach().float()
        return int(weight.shape[1]), float(weight.mean()), float(weight.std())

    # ----------------------------------------------------------------------------------------
    # Generation
    # ----------------------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
        logprobs: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Generation]:
        """``n`` samples per prompt.

        Args:
            prompts: text or token-id prompts; longer than the window they lose tokens from
                the left, keeping room for ``max_tokens``.
            n: samples per prompt.
            temperature: 0 decodes greedily (all ``n`` samples are then the same); otherwise
                samples from ``softmax(logits / temperature)``.
            top_p: nucleus sampling mass.
            max_tokens: most tokens per sample (capped below the context window).
            stop: strings that end a sample; the text is cut before the first one.
            seed: makes sampling reproducible; sample ``j`` depends only on the prompt, the
                sampling parameters, ``seed`` and ``j``.
            logprobs: also return the top-``logprobs`` alternatives at each position.
            should_stop: asked before each decoding step; True abandons the generation
                (the server's clients that went away).

        Returns:
            One `Generation` per prompt, in order.

        Raises:
            GenerationCancelled: ``should_stop`` said so.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        stops = tuple(s for s in ([stop] if isinstance(stop, str) else stop or ()) if s)
        max_new = min(max_tokens, self.context_length - 1)
        keep = self.context_length - max_new
        encoded = [self.encode(p)[-keep:] for p in prompts]
        greedy = temperature == 0
        # Rows: greedy samples are identical, so each prompt is decoded once and copied.
        rows = [(i, j) for i in range(len(encoded)) for j in range(1 if greedy else n)]
        decoded: list[Sample] = []
        if max_new == 0:
            decoded = [_empty_sample(with_top=logprobs is not None) for _ in rows]
        else:
            with self._lock, torch.inference_mode():
                for chunk in _chunks(rows, MAX_BATCH_ROWS):
                    generators = None
                    if not greedy:
                        # Unseeded rows draw fresh seeds: equal prompts in one batch differ.
                        generators = [
                            torch.Generator().manual_seed(
                                sample_seed(seed, j) if seed is not None else secrets.randbits(63)
                            )
                            for _, j in chunk
                        ]
                    decoded += self._decode(
                        [encoded[i] for i, _ in chunk],
                        temperature=temperature,
                        top_p=top_p,
                        max_new=max_new,
                        stops=stops,
                        top_k=logprobs,
                        generators=generators,
                        should_stop=should_stop,
                    )
        per_prompt = 1 if greedy else n
        results = []
        for i, ids in enumerate(encoded):
            mine = decoded[i * per_prompt : (i + 1) * per_prompt]
            samples = mine * n if greedy else mine
            results.append(Generation(samples, len(ids), sum(s.billed_tokens for s in samples)))
        return results

    def _decode(
        self,
        prompts: list[list[int]],
        *,
        temperature: float,
        top_p: float,
        max_new: int,
        stops: tuple[str, ...],
        top_k: int | None,
        generators: list[torch.Generator] | None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Sample]:
        rows = len(prompts)
        input_ids, mask = self._left_pad(prompts)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        extra = {"logits_to_keep": 1} if self._keep_last else {}
        past: Any = None
        out_ids: list[list[int]] = [[] for _ in range(rows)]
        out_lps: list[list[float]] = [[] for _ in range(rows)]
        out_top: list[list[dict[str, float]]] = [[] for _ in range(rows)]
        billed = [0] * rows
        finish: list[str | None] = [None] * rows
        cut: list[int | None] = [None] * rows
        longest_stop = max((len(s) for s in stops), default=0)
        seen_chars = [0] * rows
        vocab = self.vocabulary()
        step_ids, step_pos = input_ids, positions
        for _ in range(max_new):
            if should_stop is not None and should_stop():
                raise GenerationCancelled("generation abandoned: its requests went away")
            out = self.model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=step_pos,
                use_cache=True,
                **cache_kwargs(self.model, past),
                **extra,
            )
            past = cache_of(out)
            logits = out.logits[:, -1, :].float()
            logp = logits.log_softmax(-1)
            if generators is None:
                chosen = logits.argmax(-1)
            else:
                chosen = _sample(logits, temperature, top_p, generators)
            chosen_lp = logp.gather(1, chosen[:, None])[:, 0].tolist()
            top_vals: list[list[float]] = []
            top_idx: list[list[int]] = []
            if top_k:
                values, indices = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
                top_vals, top_idx = values.tolist(), indices.tolist()
            for r, token in enumerate(chosen.tolist()):
                if finish[r] is not None:
                    continue
                billed[r] += 1
                if token in self.eos_ids:
                    finish[r] = "stop"
                    continue
                out_ids[r].append(token)
                out_lps[r].append(chosen_lp[r])
                if top_k:
                    out_top[r].append(
                        {vocab[i]: v for i, v in zip(top_idx[r], top_vals[r], strict=True)}
                    )
                elif top_k is not None:
                    out_top[r].append({})
                if stops:
                    text = self.decode(out_ids[r])
                    # A stop string can only be new where it overlaps the latest token.
                    start = max(0, seen_chars[r] - longest_stop + 1)
                    hits = [i for s in stops if (i := text.find(s, start)) >= 0]
                    seen_chars[r] = len(text)
                    if hits:
                        cut[r] = min(hits)
                        finish[r] = "stop"
            if all(f is not None for f in finish):
                break
            step_ids = chosen[:, None]
            mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
            step_pos = step_pos[:, -1:] + 1
        return [
            self._sample_of(
                out_ids[r],
                out_lps[r],
                out_top[r] if top_k is not None else None,
                finish[r] or "length",
                cut[r],
                billed[r],
            )
            for r in range(rows)
        ]

    def _sample_of(
        self,
        ids: list[int],
        lps: list[float],
        top: list[dict[str, float]] | None,
        finish: str,
        cut: int | None,
        billed: int,
    ) -> Sample:
        text = self.decode(ids)
        if cut is not None:
            text = text[:cut]
            # Keep the tokens that contribute text before the stop string.
            kept = 0
            while kept < len(ids) and len(self.decode(ids[:kept])) < cut:
                kept += 1
            ids, lps = ids[:kept], lps[:kept]
            top = top[:kept] if top is not None else None
        vocab = self.vocabulary()
        return Sample(
            text=text,
            finish_reason=finish,
            token_ids=tuple(ids),
            tokens=tuple(vocab[i] for i in ids),
            token_logprobs=tuple(lps),
            top_logprobs=tuple(top) if top is not None else None,
            billed_tokens=billed,
        )

    # ----------------------------------------------------------------------------------------
    # Scoring
    # ----------------------------------------------------------------------------------------

    def score(
        self, prompts: Sequence[Prompt], continuations: Sequence[Prompt]
    ) -> list[ScoredTokens]:
        """Logprobs of each continuation's tokens after its prompt.

        Prompt and continuation are tokenized separately (the continuation without special
        tokens; token ids are used as given) and their ids concatenated, so the boundary is
        exact; an over-long prompt loses tokens from the left.
        """
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        seqs: list[list[int]] = []
        starts: list[int] = []
        for prompt, continuation in zip(prompts, continuations, strict=True):
            if isinstance(continuation, str):
                cont = list(self.tokenizer(continuation, add_special_tokens=False)["input_ids"])
            else:
                cont = [int(i) for i in continuation]
            if len(cont) >= self.context_length:
                raise ValueError(
                    f"continuation of {len(cont)} tokens does not fit the context window "
                    f"({self.context_length})"
                )
            context = self.encode(prompt)[-(self.context_length - len(cont)) :]
            seqs.append(context + cont)
            starts.append(len(context))
        return self._score_ids(seqs, starts, top_k=None)

    def prompt_logprobs(
        self, prompts: Sequence[Prompt], *, top_k: int | None = None
    ) -> list[ScoredTokens]:
        """Logprobs of every prompt token given the ones before it (the first has none): what
        an OpenAI ``echo`` request returns."""
        seqs = [self.encode(p) for p in prompts]
        for ids in seqs:
            if len(ids) > self.context_length:
                raise ValueError(
                    f"prompt of {len(ids)} tokens exceeds the context window "
                    f"({self.context_length})"
                )
        return self._score_ids(seqs, [0] * len(seqs), top_k=top_k)

    def _score_ids(
        self, seqs: list[list[int]], starts: list[int], *, top_k: int | None
    ) -> list[ScoredTokens]:
        vocab = self.vocabulary()
        results: list[ScoredTokens] = []
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        by_index: dict[int, ScoredTokens] = {}
        with self._lock, torch.inference_mode():
            for chunk in _token_chunks(order, [len(s) for s in seqs], MAX_SCORE_TOKENS):
                batch = [seqs[i] for i in chunk]
                input_ids, mask = self._right_pad(batch)
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits
                for row, i in enumerate(chunk):
                    ids, start = seqs[i], starts[i]
                    logp = logits[row, : len(ids) - 1].float().log_softmax(-1)
                    targets = torch.tensor(ids[1:], device=logp.device)
                    picked = logp.gather(1, targets[:, None])[:, 0].tolist()
                    lps: list[float | None] = [None, *picked][start:]
                    top: list[dict[str, float] | None] | None = None
                    if top_k is not None:
                        top = [None]
                        if top_k > 0 and len(ids) > 1:
                            values, indices = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
                            for vs, ix in zip(values.tolist(), indices.tolist(), strict=True):
                                top.append({vocab[t]: v for t, v in zip(ix, vs, strict=True)})
                        else:
                            top += [{} for _ in ids[1:]]
                        top = top[start:]
                    scored = ids[start:]
                    by_index[i] = ScoredTokens(
                        token_ids=tuple(scored),
                        tokens=tuple(vocab[t] for t in scored),
                        token_logprobs=tuple(lps),
                        top_logprobs=tuple(top) if top is not None else None,
                        prompt_tokens=len(ids),
                    )
        results = [by_index[i] for i in range(len(seqs))]
        return results

    # ----------------------------------------------------------------------------------------
    # Full distributions
    # ----------------------------------------------------------------------------------------

    def next_token_logprobs(
        self,
        prompts: Sequence[Prompt],
        *,
        soft_prompt: np.ndarray | None = None,
        soft_prompts: Sequence[np.ndarray | None] | None = None,
    ) -> np.ndarray:
        """The next-token log-distribution after each prompt, float32 [B, V].

        Args:
            prompts: text or token-id prompts.
            soft_prompt: [k, d] vectors placed before each prompt's token embeddings (and
                attended to like tokens); ``k`` may be 0.
            soft_prompts: instead, one soft prompt (or None) per prompt, so requests with
                different soft prompts share one forward pass.
        """
        if soft_prompts is not None and soft_prompt is not None:
            raise ValueError("give soft_prompt or soft_prompts, not both")
        if soft_prompts is None:
            soft_prompts = [soft_prompt] * len(prompts)
        if len(soft_prompts) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(soft_prompts)} soft prompts")
        embed = self.model.get_input_embeddings()
        softs: list[torch.Tensor | None] = []
        known: dict[int, torch.Tensor | None] = {}  # one tensor per distinct array
        for array in soft_prompts:
            if id(array) not in known:
                known[id(array)] = None if array is None else self._soft_tensor(array)
            softs.append(known[id(array)])
        encoded = [
            self.encode(p)[-(self.context_length - (0 if s is None else int(s.shape[0]))) :]
            for p, s in zip(prompts, softs, strict=True)
        ]
        dim = int(embed.weight.shape[1])
        out = np.empty((len(encoded), self.vocab_size), dtype=np.float32)
        with self._lock, torch.inference_mode():
            for lo in range(0, len(encoded), MAX_BATCH_ROWS):
                batch = encoded[lo : lo + MAX_BATCH_ROWS]
                batch_softs = softs[lo : lo + MAX_BATCH_ROWS]
                width = max(
                    len(ids) + (0 if s is None else int(s.shape[0]))
                    for ids, s in zip(batch, batch_softs, strict=True)
                )
                embeds = torch.zeros(
                    (len(batch), width, dim), dtype=embed.weight.dtype, device=self.device
                )
                mask = torch.zeros((len(batch), width), dtype=torch.long, device=self.device)
                for row, (ids, soft) in enumerate(zip(batch, batch_softs, strict=True)):
                    vectors = embed(torch.tensor(ids, device=self.device))
                    if soft is not None:
                        vectors = torch.cat([soft, vectors], dim=0)
                    embeds[row, width - vectors.shape[0] :] = vectors
                    mask[row, width - vectors.shape[0] :] = 1
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                extra = {"logits_to_keep": 1} if self._keep_last else {}
                logits = self.model(
                    inputs_embeds=embeds, attention_mask=mask, position_ids=positions, **extra
                ).logits[:, -1, :]
                out[lo : lo + len(batch)] = logits.float().log_softmax(-1).cpu().numpy()
        return out

    def check_soft_prompt(self, soft_prompt: np.ndarray) -> None:
        """Raise ValueError unless ``soft_prompt`` is a finite [k, d] array that leaves room
        in the context window (checked per request before requests share a batch)."""
        dim = int(self.model.get_input_embeddings().weight.shape[1])
        array = np.asarray(soft_prompt)
        if array.ndim != 2 or array.shape[1] != dim:
            raise ValueError(f"soft_prompt must have shape [k, {dim}], got {list(array.shape)}")
        if not np.isfinite(array).all():
            raise ValueError("soft_prompt contains NaN or infinite values")
        if array.shape[0] >= self.context_length:
            raise ValueError(f"soft prompt of {array.shape[0]} vectors fills the context window")

    def _soft_tensor(self, soft_prompt: np.ndarray) -> torch.Tensor:
        self.check_soft_prompt(soft_prompt)
        weight = self.model.get_input_embeddings().weight
        return torch.as_tensor(np.asarray(soft_prompt), dtype=weight.dtype, device=self.device)

    # ----------------------------------------------------------------------------------------
    # Padding
    # ----------------------------------------------------------------------------------------

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = [[self._pad_id] * (width - len(s)) + s for s in seqs]
        mask = [[0] * (width - len(s)) + [1] * len(s) for s in seqs]
        return _tensor(ids, self.device), _tensor(mask, self.device)

    def _right_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = [s + [self._pad_id] * (width - len(s)) for s in seqs]
        mask = [[1] * len(s) + [0] * (width - len(s)) for s in seqs]
        return _tensor(ids, self.device), _tensor(mask, self.device)


def _sample(
    logits: torch.Tensor, temperature: float, top_p: float, generators: list[torch.Generator]
) -> torch.Tensor:
    """One token per row from ``softmax(logits / temperature)`` restricted to the top-p mass,
    each row drawing its uniform from its own generator (by inverse CDF)."""
    probs = (logits / temperature).softmax(-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    if top_p < 1:
        # Drop tokens once the mass before them reaches top_p (the top token always stays).
        sorted_p = sorted_p.masked_fill(sorted_p.cumsum(-1) - sorted_p >= top_p, 0.0)
    cdf = sorted_p.cumsum(-1)
    uniforms = torch.stack([torch.rand((), generator=g) for g in generators]).to(cdf)
    picks = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True)
    picks = picks.clamp(max=cdf.shape[-1] - 1)
    # Guard against landing on a zero-probability tail token through rounding.
    picks = torch.minimum(picks, (sorted_p > 0).sum(-1, keepdim=True) - 1)
    return order.gather(1, picks)[:, 0]


def _empty_sample(*, with_top: bool) -> Sample:
    return Sample("", "length", (), (), (), () if with_top else None, 0)


def _tensor(rows: list[list[int]], device: str) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


class GenerationCancelled(Exception):
    """`HFEngine.generate` stopped because its ``should_stop`` said so."""


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for lo in range(0, len(items), size):
        yield items[lo : lo + size]


def _token_chunks(order: list[int], lengths: list[int], budget: int) -> Iterator[list[int]]:
    """Groups of indices (in ``order``, shortest first) whose padded size fits ``budget``."""
    chunk: list[int] = []
    for i in order:
        if chunk and (len(chunk) + 1) * lengths[i] > budget:
            yield chunk
            chunk = []
        chunk.append(i)
    if chunk:
        yield chunk


__all__: list[str] = [
    "Generation",
    "HFEngine",
    "Prompt",
    "Sample",
    "ScoredTokens",
    "resolve_device",
    "sample_seed",
]
