"""Aligner: a small corrector trained to rewrite the black box's answers (Ji et al.,
"Aligner: Efficient Alignment by Learning to Correct", NeurIPS 2024, arXiv 2402.02416;
official code PKU-Alignment/aligner, a safe-rlhf fork: ``aligner/scripts/sft-correction.sh``,
``aligner/training/configs/constants.py``, ``aligner/training/datasets/supervised.py``).

Training data are triples (question, upstream answer, corrected answer). Here the upstream
model is the black box itself: for each training question one black-box answer to the task's
prompt (greedy, the task's default instruction, one call per question), and the gold
completion (`TaskLike.render_target`: the worked rationale and the answer) as the correction.
The corrector, a causal LM initialised from ``zoo-small`` (any local model directory), is
fine-tuned on ``template(q, a) -> " " + c + EOS`` with the loss on the correction tokens only
(safe-rlhf masks the prompt with IGNORE_INDEX), 3 epochs, no early stopping. At inference the
black box answers (one greedy call per example, metered by the harness), the corrector
rewrites the answer greedily, and the prediction is the task's extraction from the rewrite.

Choices where the paper leaves room:
- Upstream answers: the paper's data pair each query with ONE answer of a weak upstream model
  (Alpaca-7B) and a correction by GPT-4 / Llama2-70B-chat / annotators; here the answer is the
  black box's own greedy answer (the model Aligner is then stacked on) and the correction is
  the gold completion. ``answers_per_question > 1`` draws several sampled answers per question
  in the same single call (n > 1) for more training pairs; off by default.
- Template: the current one (constants.py since commit 29da040, "##Question: {q}\\n##Answer:
  {a}\\n##Correction: " in the "BEGINNING OF CONVERSATION: USER: ... ASSISTANT:" wrapper) is
  the default: it asks for a correction and is task-neutral, while v1 ("Edit the following
  Question-Answer pair to make it more helpful and harmless: {q} | {a}") is about
  helpfulness and harmlessness (kept selectable: ``template="v1"``). The light/medium/heavy
  presets use "compact", the current template without the wrapper: the wrapper costs 41
  tokens of zoo-small's 192-token context (capitals are spelled out byte by byte).
- Identity warm-up: the paper describes first training on the identity mapping (q, a) -> a
  before the residual correction (q, a) -> c; ``sft-correction.sh`` runs the correction stage
  only. ``identity_warmup`` (a share of the triples, one epoch) turns the warm-up on; the
  default follows the official script (off).
- No copy safeguard at inference: neither the paper nor the code falls back to the upstream
  answer; ``fallback=True`` adds one (when nothing can be parsed from the rewrite), off by
  default.

Deviations forced by the setting:
- Hyperparameters of ``sft-correction.sh`` (3 epochs, lr 2e-5, cosine, warmup ratio 0.03,
  weight decay 0, batch 4 x 8 accumulation per device, max length 2048, AdamW betas (0.9,
  0.95)) form the ``paper`` preset. They fine-tune a pretrained 2-13B model on 20K+ triples;
  zoo-small is a 0.4M-parameter model pretrained at lr 1e-3 (its ``training.json``) and the
  budgets give it a few hundred triples, for which 2e-5 learns the output format but
  corrects less than 3e-4 (see `Aligner.presets`), so the budget presets raise the learning
  rate and shrink the batch.
- Sequences are cut to the corrector's context (192 tokens for zoo models): the upstream
  answer first, then the start of the question (`Corrector.encode_prompt`).
- The dev split is not used: the official recipe trains a fixed number of epochs.
- LoRA for pretrained correctors (``adapter="auto"``, `methods.adapters`): the paper fine-tunes
  all weights. A zoo corrector still does (0.24M parameters; the committed baselines); a
  pretrained one (SmolLM2-135M and up) trains LoRA adapters (Hu et al. 2021, Table 11's GPT-2
  setting: r 4, α 32, dropout 0.1 on the query and value projections), because a full
  fine-tune saved a 538 MB copy of the model per cell and as much again in the training
  cache; a LoRA cell saves the adapters (about 0.9 MB for SmolLM2-135M) and the base's name
  and digest. ``adapter="full"`` restores the paper's full fine-tune, saved whole.
- Learning rate and batch size at the pretrained scale (`Aligner.pretrained_presets`, used
  instead of the zoo-tuned budget values unless set explicitly): with LoRA lr 2e-4 and batch
  8 (Hu et al. 2021, Table 11, GPT-2 on E2E); with a full fine-tune sft-correction.sh's lr
  2e-5 (the batch stays the budget's: a few hundred triples give a 32-batch ten steps an epoch).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from methods.adapters import config_for_model, lora_settings
from methods.base import (
    AdaptedPolicy,
    BlackBox,
    BlackBoxTuner,
    CallPlan,
    CompanionRole,
    Example,
    TaskLike,
    TuneContext,
    register_method,
)
from methods.corrector import (
    DEFAULT_CORRECTOR,
    Corrector,
    CorrectorPolicy,
    TrainSettings,
    Triple,
    correction_template,
    corrector_plan,
    generation_room,
    question_text,
    questions_used,
    train_sft,
    upstream_answers,
)


@dataclass(frozen=True)
class AlignerConfig:
    #: the corrector's backbone: a zoo model name or a local causal-LM directory (the paper
    #: uses Gemma-2B / Llama2-7B / Llama2-13B; zoo-small is the zoo's small model).
    corrector: str = DEFAULT_CORRECTOR
    #: correction prompt: "current" (constants.py since commit 29da040), "v1" (the paper's
    #: released model), or "compact" (current without the conversation wrapper).
    template: str = "current"
    #: training questions drawn (seeded) from the train split; None = all of them (the paper
    #: trains on its whole correction set, aligner-20K). One black-box call per question.
    n_questions: int | None = None
    #: black-box answers per question: 1, as the paper's data pair each query with one
    #: upstream answer; more are sampled in the same call (n > 1, ``temperature``).
    answers_per_question: int = 1
    #: sampling temperature when ``answers_per_question > 1`` (1 answer: greedy).
    temperature: float = 1.0
    #: the task instruction the black box answers with (0 = the default, as zero-shot).
    instruction_index: int = 0
    #: sft-correction.sh: ``--epochs 3``.
    epochs: int = 3
    #: sft-correction.sh: ``--learning_rate 2e-5``.
    lr: float = 2e-5
    #: sft-correction.sh: ``--per_device_train_batch_size 4`` x
    #: ``--gradient_accumulation_steps 8`` (one device).
    batch_size: int = 32
    #: sft-correction.sh: ``--lr_scheduler_type cosine``.
    schedule: str = "cosine"
    #: sft-correction.sh: ``--lr_warmup_ratio 0.03``.
    warmup_ratio: float = 0.03
    #: sft-correction.sh: ``--weight_decay 0.0``.
    weight_decay: float = 0.0
    #: sft-correction.sh: ``--max_length 2048`` (cut to the corrector's context).
    max_length: int = 2048
    #: share of the triples for a one-epoch identity warm-up (q, a) -> a before the
    #: correction stage (the paper's warm-up); 0 as in sft-correction.sh (no warm-up stage).
    identity_warmup: float = 0.0
    #: answer with the black box's own answer when the rewrite has none (not in the paper).
    fallback: bool = False
    #: what trains: "full" (all weights, as sft-correction.sh), "lora" (adapters, base
    #: frozen), or "auto": full for a zoo corrector, LoRA for a pretrained one (not in the
    #: paper; see the module docstring).
    adapter: Literal["auto", "full", "lora"] = "auto"
    #: LoRA rank r: 4 (Hu et al. 2021, Table 11, GPT-2 M/L on E2E).
    lora_rank: int = 4
    #: LoRA α: 32 (ibid.).
    lora_alpha: int = 32
    #: LoRA dropout: 0.1 (ibid.).
    lora_dropout: float = 0.1
    #: adapted modules; None: peft's default per architecture, the query and value
    #: projections (the paper's W_q, W_v, Section 7.1).
    lora_targets: tuple[str, ...] | None = None


#: hyperparameters of a pretrained corrector, by adapter (`methods.adapters.config_for_model`).
PRETRAINED_PRESETS: Mapping[str, Mapping[str, Any]] = {
    # Hu et al. 2021, Table 11 (GPT-2 M/L, E2E): lr 2e-4, batch 8.
    "lora": {"lr": 2e-4, "batch_size": 8},
    # sft-correction.sh: --learning_rate 2e-5 (a full fine-tune of a pretrained model).
    "full": {"lr": 2e-5},
}


@register_method("aligner")
class Aligner(BlackBoxTuner):
    """Aligner: a small corrector, fine-tuned on (question, black-box answer, gold answer),
    rewrites the black box's answers at inference."""

    Config = AlignerConfig
    config: AlignerConfig
    uses_white_box: ClassVar[bool] = True
    companions: ClassVar[Mapping[str, CompanionRole]] = {"corrector": "corrector"}
    variant: str | None = None
    pretrained_presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRETRAINED_PRESETS
    # Budget presets: questions (= tuning calls) within 400 / 2,000 / 10,000. The learning
    # rate is raised from the official 2e-5 (for a pretrained multi-billion model) to 3e-4
    # and batches shrunk so a few hundred triples still make ~100 steps: of 2e-5, 3e-4 and
    # 1e-3 (zoo-small's own pretraining rate), 3e-4 corrected best on zoo-truth (see
    # tests/methods/test_aligner.py's docstring). "compact" drops the 41-token wrapper.
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "light": {
            "n_questions": 300,
            "epochs": 3,
            "lr": 3e-4,
            "batch_size": 8,
            "template": "compact",
        },
        "medium": {
            "n_questions": 1500,
            "epochs": 3,
            "lr": 3e-4,
            "batch_size": 16,
            "template": "compact",
        },
        "heavy": {
            "n_questions": 8000,
            "epochs": 3,
            "lr": 3e-4,
            "batch_size": 32,
            "template": "compact",
        },
    }

    def plan(self, *, task: TaskLike, train: Sequence[Example], dev: Sequence[Example]) -> CallPlan:
        return corrector_plan(
            task,
            train,
            n_questions=self.config.n_questions,
            instruction_index=self.config.instruction_index,
            samples_per_question=self.config.answers_per_question,
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
        ctx = context or TuneContext()
        model_dir = ctx.resolve_model(self.config.corrector)
        cfg, adapter, scaled = config_for_model(
            self.config,
            model_dir,
            table=self.pretrained_presets,
            explicit=self.explicit,
            who="aligner",
        )
        if adapter == "lora" or scaled:
            ctx.on_event("corrector", {"adapter": adapter, **scaled})
        self.config = cfg  # the record shows the values trained with
        rng = random.Random(ctx.seed)
        questions = rng.sample(list(train), questions_used(train, self.config.n_questions))
        sampled = cfg.answers_per_question > 1
        answers = upstream_answers(
            questions,
            task=task,
            backend=backend,
            instruction_index=cfg.instruction_index,
            n=cfg.answers_per_question,
            temperature=cfg.temperature if sampled else 0.0,
            seed=ctx.seed if sampled else None,
        )
        triples = [
            Triple(question_text(ex), completion.text, task.render_target(ex))
            for ex, outs in zip(questions, answers, strict=True)
            for completion in outs
        ]
        correct = sum(
            task.score(task.extract(t.answer, ex), ex)
            for t, ex in zip(triples, _repeat(questions, cfg.answers_per_question), strict=True)
        )
        ctx.on_event(
            "data",
            {
                "questions": len(questions),
                "triples": len(triples),
                "upstream_accuracy": round(correct / max(len(triples), 1), 4),
            },
        )
        template = correction_template(cfg.template)
        corrector = Corrector.load(
            model_dir, template, max_length=cfg.max_length, device=ctx.device
        )
        if adapter == "lora":
            corrector.use_lora(
                lora_settings(cfg), base=cfg.corrector, base_dir=model_dir, seed=ctx.seed
            )
        settings = TrainSettings(
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            weight_decay=cfg.weight_decay,
            betas=(0.9, 0.95),  # constants.py (safe-rlhf's Adam betas)
            schedule=cfg.schedule,
            warmup_ratio=cfg.warmup_ratio,
        )

        def fit_corrector() -> list[float]:
            if cfg.identity_warmup > 0:
                k = max(1, round(cfg.identity_warmup * len(triples)))
                identity = [Triple(t.question, t.answer, t.answer) for t in triples[:k]]
                train_sft(
                    corrector,
                    identity,
                    dataclasses.replace(settings, epochs=1),
                    seed=ctx.seed,
                    on_event=ctx.on_event,
                    label="identity warmup",
                )
            return train_sft(corrector, triples, settings, seed=ctx.seed, on_event=ctx.on_event)

        cut = sum(corrector.cut(t.question, t.answer, t.correction) for t in triples)
        if cut:
            ctx.disclose(
                "truncated",
                f"{cut} of {len(triples)} training sequences cut to the corrector's "
                f"{corrector.max_length}-token window (the answer's end first, then the "
                "question's start)",
            )
        losses = ctx.train(
            "train corrector",
            fit_corrector,
            inputs={
                "triples": triples,
                "settings": settings,
                "identity_warmup": cfg.identity_warmup,
                "seed": ctx.seed,
                # alpha and dropout are not in the state the key digests
                **({"lora": lora_settings(cfg)} if adapter == "lora" else {}),
            },
            state=[corrector.model],
        )
        # the epochs' losses, also when the training cache skipped training (and its events)
        ctx.on_event("train_loss", {"label": "train corrector", "losses": losses})
        return CorrectorPolicy(
            corrector,
            template=cfg.template,
            instruction_index=cfg.instruction_index,
            max_new_tokens=generation_room(
                corrector, [t.correction for t in triples], task.max_tokens
            ),
            fallback=cfg.fallback,
            method="aligner",
        )


def _repeat(items: Sequence[Example], k: int) -> list[Example]:
    return [item for item in items for _ in range(k)]
