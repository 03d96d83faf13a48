"""Shared machinery of the corrector methods (Aligner, CoBB): a small causal LM that reads a
question and the black box's answer and writes a corrected answer.

Not a method (nothing here is a tuner). Both `methods.aligner` and `methods.cobb` train the
same kind of corrector and answer the same way at inference, so this module holds:

- the correction prompt (`TEMPLATES`: Aligner's current and v1 templates, in safe-rlhf's
  conversation wrapper, and a compact form without the wrapper for 192-token zoo models);
- `Corrector`: the white-box model (``zoo-small`` by default, any local causal LM) with the
  template's encoding, truncation to the model's context, and batched greedy rewriting;
- training: `train_sft` (cross-entropy on the corrected answer only, prompt tokens masked,
  as safe-rlhf's supervised dataset does) and `train_orpo` (odds-ratio preference
  optimisation, Hong et al. 2024, as CoBB trains);
- `upstream_answers`: the black box's answers to the task's own prompts;
- `CorrectorPolicy`, registered once as "corrector": black box answer, then corrector rewrite;
  weights saved with safetensors beside ``policy.json`` and loaded without any training run.

torch and transformers are imported inside the functions that use them, so listing methods
(which imports every method module) does not pay for them.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from methods.adapters import (
    LoraSettings,
    adapter_base,
    attach_lora,
    is_adapter_dir,
    load_adapter,
    save_adapter,
)
from methods.base import (
    AdaptedPolicy,
    BlackBox,
    CallPlan,
    Completion,
    Example,
    Prediction,
    TaskLike,
    policy_types,
)
from methods.kv_cache import cache_kwargs, cache_of
from methods.registry import BenchError

if TYPE_CHECKING:
    import torch

#: the corrector's default backbone (the harness resolves it to a local directory).
DEFAULT_CORRECTOR = "zoo-small"
#: where `CorrectorPolicy` keeps the corrector (transformers format, safetensors weights).
CORRECTOR_DIR = "corrector"
#: below this many parameters the corrector runs on one CPU thread (see `Corrector.threads`).
SMALL_MODEL_PARAMS = 10_000_000
#: label of masked positions in the cross-entropy (PyTorch's and safe-rlhf's IGNORE_INDEX).
IGNORE_INDEX = -100

Event = Callable[[str, Mapping[str, Any]], None]


# --------------------------------------------------------------------------------------------
# The correction prompt.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorrectionTemplate:
    """A correction prompt ``head + " " + question + sep + " " + answer + tail``; the
    corrected answer follows after a space and ends with EOS.

    Kept in pieces so that question and answer are tokenised on their own and can be cut
    (`Corrector.encode_prompt`) without re-tokenising the template.
    """

    head: str
    sep: str
    tail: str

    def render(self, question: str, answer: str) -> str:
        return f"{self.head} {question}{self.sep} {answer}{self.tail}"


#: safe-rlhf's conversation wrapper, which Aligner trains in: PROMPT_BEGIN + "USER: {input} "
#: + "ASSISTANT:" (aligner/training/configs/constants.py).
_BEGIN = "BEGINNING OF CONVERSATION: USER: "

TEMPLATES: dict[str, CorrectionTemplate] = {
    # Aligner's current template (constants.py since commit 29da040, 2024-12-11):
    # "##Question: {q}\n##Answer: {a}\n##Correction: " inside the wrapper. Task-neutral: it
    # asks for a correction, not for "helpful and harmless" edits.
    "current": CorrectionTemplate(
        head=_BEGIN + "##Question:", sep="\n##Answer:", tail="\n##Correction:  ASSISTANT:"
    ),
    # Aligner v1 (the released aligner-7b-v1.0 and the paper's experiments).
    "v1": CorrectionTemplate(
        head=_BEGIN + "Edit the following Question-Answer pair to make it more helpful and "
        "harmless:",
        sep=" |",
        tail=" ASSISTANT:",
    ),
    # The current template without the wrapper: the wrapper costs 41 tokens of a zoo model's
    # 192 (its capitals are spelled out byte by byte), which an arithmetic question, a chain
    # and its correction (~55 tokens each) cannot spare.
    "compact": CorrectionTemplate(head="##Question:", sep="\n##Answer:", tail="\n##Correction:"),
}


def correction_template(name: str) -> CorrectionTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise BenchError(
            f"unknown correction template {name!r}; valid: {', '.join(TEMPLATES)}"
        ) from None


def question_text(example: Example) -> str:
    """The question as the corrector reads it: the input, and the options when there are any
    (lettered as the task templates letter them)."""
    if not example.choices:
        return example.input
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    options = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(example.choices))
    return f"{example.input}\n{options}"


# --------------------------------------------------------------------------------------------
# The black box's side.
# --------------------------------------------------------------------------------------------


def black_box_prompt(example: Example, task: TaskLike, instruction_index: int) -> str:
    """The prompt the black box answers: the task's template with one of its instructions
    (0 = the default, as the zero-shot row), or none when the task has none."""
    instruction = (
        task.instructions[min(instruction_index, len(task.instructions) - 1)]
        if task.instructions
        else None
    )
    return task.render(example, instruction=instruction)


def upstream_answers(
    examples: Sequence[Example],
    *,
    task: TaskLike,
    backend: BlackBox,
    instruction_index: int = 0,
    n: int = 1,
    temperature: float = 0.0,
    seed: int | None = None,
) -> list[list[Completion]]:
    """``n`` black-box answers per example, all examples in one batched call."""
    if not examples:
        return []
    prompts = [black_box_prompt(ex, task, instruction_index) for ex in examples]
    return backend.generate(
        prompts,
        n=n,
        temperature=temperature,
        max_tokens=task.max_tokens,
        stop=list(task.stop) or None,
        seed=seed,
    )


def is_correct(task: TaskLike, text: str, example: Example, threshold: float = 1.0) -> bool:
    """Whether the answer parsed from ``text`` scores at least ``threshold``."""
    return task.score(task.extract(text, example), example) >= threshold - 1e-9


# --------------------------------------------------------------------------------------------
# The corrector model.
# --------------------------------------------------------------------------------------------


class Corrector:
    """A causal LM with a correction template: encodes (question, answer[, correction]) and
    rewrites answers greedily.

    Args:
        model: a transformers causal LM (its weights are trained in place).
        tokenizer: its tokenizer (EOS is used as padding).
        template: the correction prompt.
        max_length: the longest sequence (prompt + correction) fed to the model; capped by
            the model's positions.
        device: "cpu" or "cuda".
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: CorrectionTemplate,
        *,
        max_length: int = 2048,
        device: str = "cpu",
    ):
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.template = template
        self.device = device
        positions = getattr(model.config, "n_positions", None) or getattr(
            model.config, "max_position_embeddings", None
        )
        self.max_length = min(max_length, int(positions)) if positions else max_length
        eos = tokenizer.eos_token_id
        if eos is None:
            raise BenchError("corrector tokenizer has no EOS token")
        self.eos = int(eos)
        self._fixed = [self._encode(t) for t in (template.head, template.sep, template.tail)]
        #: peft's wrapper when the model carries LoRA adapters (`use_lora`), else None.
        self.peft: Any = None
        #: the base model's (name, directory) under the adapters.
        self.base: tuple[str, Path] | None = None

    def use_lora(self, settings: LoraSettings, *, base: str, base_dir: Path, seed: int) -> None:
        """Freeze the model and train LoRA adapters instead (`methods.adapters`); the
        corrector then saves only the adapters and the base's name and digest."""
        self.peft = attach_lora(self.model, settings, seed=seed)
        self.base = (base, Path(base_dir))

    @contextlib.contextmanager
    def threads(self) -> Iterator[None]:
        """Run a small model on one intra-op CPU thread, restoring the setting after: its
        matrices are too small to split, and on a shared 2-core machine two threads spent
        most of their time waiting for each other (one epoch of 300 zoo-small triples: 60 s
        wall on two threads, 8 s on one)."""
        import torch

        params = sum(p.numel() for p in self.model.parameters())
        if self.device != "cpu" or params >= SMALL_MODEL_PARAMS:
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    @classmethod
    def load(
        cls, path: Path, template: CorrectionTemplate, *, max_length: int = 2048, device: str
    ) -> Corrector:
        """Load a local transformers model directory (never downloads), or a saved adapter
        directory: its base model (refused when its weights changed), adapters injected."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(path).is_dir():
            raise BenchError(f"corrector model {path}: not a local model directory")
        if is_adapter_dir(path):
            name, base_dir = adapter_base(path, who="corrector")
            corrector = cls.load(base_dir, template, max_length=max_length, device=device)
            corrector.peft = load_adapter(corrector.model, path)
            corrector.base = (name, base_dir)
            corrector.model.eval()
            return corrector
        with _no_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, use_safetensors=True
            )
        return cls(model, tokenizer, template, max_length=max_length, device=device)

    def save(self, directory: Path) -> None:
        """The model (safetensors) and tokenizer, in transformers format; with LoRA, the
        adapters only (`methods.adapters.save_adapter`)."""
        if self.peft is not None and self.base is not None:
            save_adapter(self.peft, directory, base=self.base[0], base_dir=self.base[1])
            return
        with _no_progress_bars():
            self.model.save_pretrained(directory)
            self.tokenizer.save_pretrained(directory)

    # -- encoding -----------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count(self, text: str) -> int:
        """Tokens of ``text`` as a question, answer or correction (with its leading space)."""
        return len(self._encode(" " + text.strip()))

    @property
    def template_tokens(self) -> int:
        return sum(len(piece) for piece in self._fixed)

    def encode_prompt(self, question: str, answer: str, budget: int) -> list[int]:
        """The prompt's token ids, at most ``budget`` of them: the answer is cut from its end
        first, then the question from its start (its last sentence asks the question)."""
        head, sep, tail = self._fixed
        q = self._encode(" " + question.strip())
        a = self._encode(" " + answer.strip())
        over = len(head) + len(sep) + len(tail) + len(q) + len(a) - budget
        if over > 0:
            cut = min(over, len(a))
            a = a[: len(a) - cut]
            over -= cut
        if over > 0:
            cut = min(over, len(q))
            q = q[cut:]
            over -= cut
        if over > 0:
            raise BenchError(
                f"corrector context {self.max_length}: the template alone needs "
                f"{self.template_tokens} tokens, more than the {budget} left for the prompt"
            )
        return head + q + sep + a + tail

    def encode_target(self, correction: str, limit: int | None = None) -> list[int]:
        """The correction's ids after the prompt: a space, the text, EOS (at most ``limit``)."""
        ids = self._encode(" " + correction.strip())
        cap = (limit if limit is not None else self.max_length) - 1
        return [*ids[: max(cap, 0)], self.eos]

    def cut(self, question: str, answer: str, correction: str) -> bool:
        """Whether `sequence` cuts anything of this triple to fit `max_length`."""
        pieces = (question, answer, correction)
        whole = self.template_tokens + sum(len(self._encode(" " + p.strip())) for p in pieces)
        return whole + 1 > self.max_length  # + EOS

    def sequence(self, question: str, answer: str, correction: str) -> tuple[list[int], int]:
        """A training sequence (prompt + correction + EOS) within `max_length`, and the
        number of prompt tokens. The correction keeps at least the room the template and a
        few question tokens leave."""
        target = self.encode_target(correction, self.max_length - self.template_tokens - 8)
        prompt = self.encode_prompt(question, answer, self.max_length - len(target))
        return prompt + target, len(prompt)

    # -- inference ------------------------------------------------------------------------

    def rewrite(
        self,
        questions: Sequence[str],
        answers: Sequence[str],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        batch_size: int = 32,
    ) -> list[str]:
        """Greedy corrections of ``answers``, batched (sequences sorted by length), each cut
        at the first stop sequence."""
        max_new = max(1, min(max_new_tokens, self.max_length - self.template_tokens - 1))
        prompts = [
            self.encode_prompt(q, a, self.max_length - max_new)
            for q, a in zip(questions, answers, strict=True)
        ]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        outputs: list[str] = [""] * len(prompts)
        with self.threads():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                texts = self._greedy([prompts[i] for i in chunk], max_new, stop)
                for i, text in zip(chunk, texts, strict=True):
                    outputs[i] = text
        return outputs

    def _greedy(self, prompts: list[list[int]], max_new: int, stop: Sequence[str]) -> list[str]:
        import torch

        self.model.eval()
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.eos] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generated: list[list[int]] = [[] for _ in prompts]
        texts = [""] * len(prompts)
        done = [False] * len(prompts)
        with torch.no_grad():
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True
            )
            for _ in range(max_new):
                nxt = out.logits[:, -1, :].argmax(-1)
                for i, token in enumerate(nxt.tolist()):
                    if done[i]:
                        continue
                    if token == self.eos:
                        done[i] = True
                        continue
                    generated[i].append(token)
                    texts[i] = self.tokenizer.decode(generated[i])
                    if any(s and s in texts[i] for s in stop):
                        done[i] = True
                if all(done):
                    break
                mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
                positions = positions[:, -1:] + 1
                out = self.model(
                    input_ids=nxt[:, None],
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **cache_kwargs(self.model, cache_of(out)),
                )
        return [_cut(text, stop).strip() for text in texts]

    # -- likelihoods ----------------------------------------------------------------------

    def response_logps(
        self, sequences: Sequence[tuple[list[int], int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For (ids, n_prompt) sequences: the mean log-probability of each response's tokens
        (EOS included) [B], the summed response log-probabilities [B], and the response
        token counts [B]. Differentiable."""
        import torch

        ids, mask, labels = sft_batch(sequences, self.eos, self.device)
        targets = labels[:, 1:]
        valid = targets != IGNORE_INDEX
        head = self.model.get_output_embeddings()
        if head is not None and self.model.base_model is not self.model:
            # The LM head only where a response token is predicted: with vocabulary-sized
            # heads on small bodies most of the work, and responses are a third of a sequence.
            hidden = self.model.base_model(input_ids=ids, attention_mask=mask)[0][:, :-1, :]
            logits = head(hidden[valid])
        else:
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1, :][valid]
        logps = torch.log_softmax(logits.float(), dim=-1)
        picked = logps.gather(-1, targets[valid].unsqueeze(-1)).squeeze(-1)
        token = torch.zeros(valid.shape, dtype=picked.dtype, device=picked.device)
        token = token.masked_scatter(valid, picked)
        counts = valid.sum(-1)
        summed = token.sum(-1)
        return summed / counts.clamp(min=1), summed, counts


def sft_batch(
    sequences: Sequence[tuple[list[int], int]], pad: int, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, and labels (IGNORE_INDEX on prompt and padding) for
    (ids, prompt length) sequences: the batch of every supervised loss here (correctors,
    proxy-tuning's expert)."""
    import torch

    width = max(len(ids) for ids, _ in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for row, (seq, n_prompt) in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
    return ids.to(device), mask.to(device), labels.to(device)


def corrector_plan(
    task: TaskLike,
    train: Sequence[Example],
    *,
    n_questions: int | None,
    instruction_index: int,
    samples_per_question: int,
) -> CallPlan:
    """The plan of a corrector method: one black-box call per training question (with
    ``samples_per_question`` samples), and one black-box call per test example to correct."""
    n = questions_used(train, n_questions)
    prompt = black_box_prompt(train[0], task, instruction_index) if train else None
    return CallPlan(
        calls=n,
        samples=n * samples_per_question,
        tune_prompt=prompt,
        eval_prompt=prompt,
        eval_calls_per_example=1.0,
        eval_samples_per_example=1.0,
    )


def questions_used(train: Sequence[Example], n_questions: int | None) -> int:
    """How many training questions a corrector method asks the black box about."""
    return len(train) if n_questions is None else min(n_questions, len(train))


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Methods never print: no transformers "Loading weights" / "Writing model shards" bars."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    if shown:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _cut(text: str, stop: Sequence[str]) -> str:
    cuts = [text.index(s) for s in stop if s and s in text]
    return text[: min(cuts)] if cuts else text


# --------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings shared by SFT and ORPO (AdamW, warmup, then a decay)."""

    epochs: int = 3
    lr: float = 2e-5
    batch_size: int = 32
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    #: "cosine" (to 0), "inverse_sqrt" (lr·sqrt(warmup/step) after warmup) or "constant".
    schedule: str = "cosine"
    warmup_ratio: float = 0.03
    #: warmup in steps; when > 0 it replaces ``warmup_ratio`` (capped at a tenth of training).
    warmup_steps: int = 0
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class Triple:
    """A supervised correction example: (question, answer to correct, corrected answer)."""

    question: str
    answer: str
    correction: str


@dataclass(frozen=True)
class PreferenceTuple:
    """A preference example: the answer to correct, a correct and an incorrect rewrite."""

    question: str
    answer: str
    chosen: str
    rejected: str


def _optimizer(model: Any, settings: TrainSettings, total_steps: int) -> tuple[Any, Any]:
    import torch

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=settings.lr,
        betas=settings.betas,
        weight_decay=settings.weight_decay,
    )
    if settings.warmup_steps > 0:
        warmup = min(settings.warmup_steps, max(1, total_steps // 10))
    else:
        warmup = math.ceil(settings.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if settings.schedule == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if settings.schedule == "inverse_sqrt":
            return math.sqrt(max(1, warmup) / max(1, step + 1))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def train_sft(
    corrector: Corrector,
    triples: Sequence[Triple],
    settings: TrainSettings,
    *,
    seed: int = 0,
    on_event: Event | None = None,
    label: str = "sft",
) -> list[float]:
    """Fine-tune on (question, answer) -> correction, loss on the correction tokens only
    (token mean over the batch, as a causal LM's loss with IGNORE_INDEX labels). Returns the
    mean loss of each epoch."""
    import torch

    if not triples:
        return []
    torch.manual_seed(seed)
    rng = random.Random(seed)
    sequences = [corrector.sequence(t.question, t.answer, t.correction) for t in triples]
    steps = settings.epochs * math.ceil(len(sequences) / settings.batch_size)
    with corrector.threads():
        history = _sft_epochs(corrector, sequences, settings, steps, rng, on_event, label)
    corrector.model.eval()
    return history


def _sft_epochs(
    corrector: Corrector,
    sequences: list[tuple[list[int], int]],
    settings: TrainSettings,
    steps: int,
    rng: random.Random,
    on_event: Event | None,
    label: str,
) -> list[float]:
    import torch

    optimizer, scheduler = _optimizer(corrector.model, settings, steps)
    corrector.model.train()
    history: list[float] = []
    for epoch in range(settings.epochs):
        total, tokens = 0.0, 0
        for batch in _batches(len(sequences), settings.batch_size, rng):
            _, summed, counts = corrector.response_logps([sequences[i] for i in batch])
            n_tokens = counts.sum().clamp(min=1)
            loss = -summed.sum() / n_tokens
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(corrector.model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * int(n_tokens)
            tokens += int(n_tokens)
        history.append(total / max(tokens, 1))
        if on_event:
            on_event(label, {"epoch": epoch + 1, "loss": round(history[-1], 4)})
    return history


def orpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    nll: torch.Tensor,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO (Hong et al., 2024): ``nll + lam * mean(-log σ(log odds(y+) - log odds(y-)))``.

    ``chosen_logps`` and ``rejected_logps`` are length-normalised log-likelihoods [B] (the
    mean token log-probability, so P = exp(logp) is a geometric mean); odds(y) = P/(1-P).
    ``nll`` is the SFT loss on the chosen answers. Returns (loss, log odds ratio [B]), as
    xfactlab/orpo ``src/orpo_trainer.py`` ``compute_loss`` computes them.
    """
    import torch

    # P < 1 keeps log(1 - P) finite (a response the model is certain of has P -> 1).
    chosen = chosen_logps.clamp(max=-1e-6)
    rejected = rejected_logps.clamp(max=-1e-6)
    log_odds = (chosen - rejected) - (
        torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected))
    )
    ratio = torch.nn.functional.logsigmoid(log_odds)
    return nll - lam * ratio.mean(), log_odds


def train_orpo(
    corrector: Corrector,
    tuples: Sequence[PreferenceTuple],
    settings: TrainSettings,
    *,
    lam: float,
    seed: int = 0,
    on_event: Event | None = None,
) -> list[float]:
    """Fine-tune with ORPO on (question, answer) -> chosen over rejected. The SFT term is
    the token-mean cross-entropy of the chosen corrections (prompt masked). Returns the mean
    loss of each epoch."""
    import torch

    if not tuples:
        return []
    torch.manual_seed(seed)
    rng = random.Random(seed)
    pairs = [
        (
            corrector.sequence(t.question, t.answer, t.chosen),
            corrector.sequence(t.question, t.answer, t.rejected),
        )
        for t in tuples
    ]
    steps = settings.epochs * math.ceil(len(pairs) / settings.batch_size)
    with corrector.threads():
        history = _orpo_epochs(corrector, pairs, settings, steps, lam, rng, on_event)
    corrector.model.eval()
    return history


def _orpo_epochs(
    corrector: Corrector,
    pairs: list[tuple[tuple[list[int], int], tuple[list[int], int]]],
    settings: TrainSettings,
    steps: int,
    lam: float,
    rng: random.Random,
    on_event: Event | None,
) -> list[float]:
    import torch

    optimizer, scheduler = _optimizer(corrector.model, settings, steps)
    corrector.model.train()
    history: list[float] = []
    for epoch in range(settings.epochs):
        losses: list[float] = []
        odds: list[float] = []
        for batch in _batches(len(pairs), settings.batch_size, rng):
            chosen_seqs = [pairs[i][0] for i in batch]
            rejected_seqs = [pairs[i][1] for i in batch]
            mean, summed, counts = corrector.response_logps(chosen_seqs + rejected_seqs)
            k = len(batch)
            nll = -summed[:k].sum() / counts[:k].sum().clamp(min=1)
            loss, log_odds = orpo_loss(mean[:k], mean[k:], nll, lam)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(corrector.model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            odds.append(float(log_odds.detach().mean()))
        history.append(sum(losses) / len(losses))
        if on_event:
            on_event(
                "orpo",
                {
                    "epoch": epoch + 1,
                    "loss": round(history[-1], 4),
                    "log_odds": round(sum(odds) / len(odds), 4),
                },
            )
    return history


def generation_room(corrector: Corrector, corrections: Sequence[str], cap: int) -> int:
    """New tokens to allow at inference: the longest training correction (+EOS, +8 slack),
    at most ``cap`` (the task's answer length)."""
    longest = max((corrector.count(c) for c in corrections), default=cap)
    return max(1, min(cap, longest + 9))


# --------------------------------------------------------------------------------------------
# The adapted policy.
# --------------------------------------------------------------------------------------------


def _inference_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@policy_types.register("corrector")
class CorrectorPolicy(AdaptedPolicy):
    """Black box answers, then a trained corrector rewrites each answer (greedy); the
    prediction is the task's extraction from the rewrite.

    Attributes:
        corrector: the trained corrector.
        template: the name of its correction template (`TEMPLATES`).
        instruction_index: which task instruction the black box is prompted with.
        max_new_tokens: the corrector's generation length.
        fallback: use the black box's own answer when nothing can be parsed from the rewrite
            (off for Aligner and CoBB, whose papers have no such rule).
        method: the method that trained it ("aligner", "cobb"), for the record.
    """

    kind: ClassVar[str] = "corrector"

    def __init__(
        self,
        corrector: Corrector,
        *,
        template: str,
        instruction_index: int = 0,
        max_new_tokens: int = 128,
        fallback: bool = False,
        method: str = "",
        batch_size: int = 32,
    ):
        self.corrector = corrector
        self.template = template
        self.instruction_index = instruction_index
        self.max_new_tokens = max_new_tokens
        self.fallback = fallback
        self.method = method
        self.batch_size = batch_size

    def predict(
        self, examples: Sequence[Example], *, task: TaskLike, backend: BlackBox
    ) -> list[Prediction]:
        upstream = [
            out[0].text
            for out in upstream_answers(
                examples, task=task, backend=backend, instruction_index=self.instruction_index
            )
        ]
        with self.compute.compute("corrector inference"):
            rewrites = self.corrector.rewrite(
                [question_text(ex) for ex in examples],
                upstream,
                max_new_tokens=min(self.max_new_tokens, task.max_tokens),
                stop=task.stop,
                batch_size=self.batch_size,
            )
        predictions = []
        for ex, before, after in zip(examples, upstream, rewrites, strict=True):
            answer = task.extract(after, ex)
            original = task.extract(before, ex)
            if answer is None and self.fallback:
                answer = original
            predictions.append(
                Prediction(
                    ex.id,
                    after,
                    answer,
                    {"upstream": before, "upstream_answer": original},
                    prompt=black_box_prompt(ex, task, self.instruction_index),
                )
            )
        return predictions

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "template": self.template,
            "instruction_index": self.instruction_index,
            "max_new_tokens": self.max_new_tokens,
            "max_length": self.corrector.max_length,
            "fallback": self.fallback,
            "batch_size": self.batch_size,
        }

    def save_tensors(self, directory: Path) -> None:
        self.corrector.save(directory / CORRECTOR_DIR)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], directory: Path) -> CorrectorPolicy:
        template = str(data.get("template", "current"))
        corrector = Corrector.load(
            directory / CORRECTOR_DIR,
            correction_template(template),
            max_length=int(data.get("max_length", 2048)),
            device=_inference_device(),
        )
        return cls(
            corrector,
            template=template,
            instruction_index=int(data.get("instruction_index", 0)),
            max_new_tokens=int(data.get("max_new_tokens", 128)),
            fallback=bool(data.get("fallback", False)),
            method=str(data.get("method", "")),
            batch_size=int(data.get("batch_size", 32)),
        )
