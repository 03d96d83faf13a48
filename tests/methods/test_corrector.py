"""The corrector shared by Aligner and CoBB: templates, encoding and truncation, the ORPO loss
on a hand-built pair, SFT/ORPO training steps, batched greedy rewriting, and the policy's
predict / save / load on a scripted black box."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.backends.zoo import resolve_model_dir
from benchmarks.tasks.base import Task, extract_final_number
from methods import BenchError, Completion, Example, load_policy
from methods.corrector import (
    TEMPLATES,
    Corrector,
    CorrectorPolicy,
    PreferenceTuple,
    TrainSettings,
    Triple,
    correction_template,
    orpo_loss,
    question_text,
    train_orpo,
    train_sft,
)


class SumTask(Task):
    """Short additions: "What is 2 plus 3 ?" -> "2 + 3 = 5 . #### 5"."""

    name = "toy-sum"
    instructions = ("Add the numbers .",)
    max_tokens = 24
    stop = ("\n",)

    def load_split(self, split):  # type: ignore[no-untyped-def]
        offset = {"train": 0, "dev": 20, "test": 40}[split]
        out = []
        for i in range(8):
            a, b = (i + offset) % 7 + 1, (2 * i + offset) % 5 + 1
            out.append(
                Example(
                    f"{split}{i}",
                    f"What is {a} plus {b} ?",
                    str(a + b),
                    rationale=f"{a} + {b} = {a + b} . #### {a + b}",
                )
            )
        return out

    def extract(self, text: str, example: Example) -> str | None:
        return extract_final_number(text)


class ScriptedBlackBox:
    """Answers each prompt with ``answer(prompt, k)`` for sample k; records every call."""

    model = "scripted"
    capabilities = frozenset({"generate"})
    context_length = None

    def __init__(self, answer: Callable[[str, int], str]):
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompts: Sequence[str], **kwargs: Any) -> list[list[Completion]]:
        self.calls.append({"prompts": list(prompts), **kwargs})
        n = kwargs.get("n", 1)
        return [[Completion(self.answer(p, k)) for k in range(n)] for p in prompts]


class RecordingCompute:
    def __init__(self) -> None:
        self.labels: list[str] = []

    @contextlib.contextmanager
    def compute(self, label: str) -> Iterator[None]:
        self.labels.append(label)
        yield


def small_corrector(template: str = "compact") -> Corrector:
    return Corrector.load(
        resolve_model_dir("zoo-small"), correction_template(template), device="cpu"
    )


# -- templates and encoding -------------------------------------------------------------------


def test_templates_render_aligner_prompts_exactly() -> None:
    assert TEMPLATES["current"].render("Q?", "A.") == (
        "BEGINNING OF CONVERSATION: USER: ##Question: Q?\n##Answer: A.\n##Correction:  ASSISTANT:"
    )
    assert TEMPLATES["v1"].render("Q?", "A.") == (
        "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it "
        "more helpful and harmless: Q? | A. ASSISTANT:"
    )
    assert TEMPLATES["compact"].render("Q?", "A.") == "##Question: Q?\n##Answer: A.\n##Correction:"
    with pytest.raises(BenchError, match="valid: current, v1, compact"):
        correction_template("v2")


def test_question_text_letters_the_choices() -> None:
    ex = Example("1", "Which ?", "B", choices=("red", "blue"))
    assert question_text(ex) == "Which ?\nA. red\nB. blue"
    assert question_text(Example("2", "Plain ?", "x")) == "Plain ?"


def test_encoding_matches_the_rendered_prompt_and_cuts_answer_then_question() -> None:
    c = small_corrector()
    q, a = "What is 2 plus 3 ?", "2 + 3 = 6 . #### 6"
    full = c.encode_prompt(q, a, 10_000)
    assert c.tokenizer.decode(full) == c.template.render(q, a)
    # three tokens over: the answer loses its last three tokens, the question is intact
    cut = c.encode_prompt(q, a, len(full) - 3)
    assert len(cut) == len(full) - 3
    shorter = c.tokenizer.decode(c._encode(" " + a)[:-3]).strip()
    assert c.tokenizer.decode(cut) == c.template.render(q, shorter)
    # more than the whole answer over: the question loses its start
    a_len = len(c._encode(" " + a))
    cut = c.encode_prompt(q, a, len(full) - a_len - 2)
    text = c.tokenizer.decode(cut)
    assert "##Answer:\n##Correction:" in text and "plus 3 ?" in text and "What" not in text
    with pytest.raises(BenchError, match="template alone needs"):
        c.encode_prompt(q, a, c.template_tokens - 1)


def test_training_sequence_masks_the_prompt_and_ends_with_eos() -> None:
    c = small_corrector()
    ids, n_prompt = c.sequence("What is 2 plus 3 ?", "#### 6", "2 + 3 = 5 . #### 5")
    assert ids[-1] == c.eos
    assert c.tokenizer.decode(ids[n_prompt:-1]) == " 2 + 3 = 5 . #### 5"
    _, summed, counts = c.response_logps([(ids, n_prompt)])
    assert int(counts[0]) == len(ids) - n_prompt  # correction tokens + EOS, nothing else
    with torch.no_grad():
        logps = torch.log_softmax(c.model(input_ids=torch.tensor([ids])).logits[0, :-1], -1)
    expected = sum(float(logps[t - 1, ids[t]]) for t in range(n_prompt, len(ids)))
    assert float(summed[0].detach()) == pytest.approx(expected, rel=1e-4)


def test_long_sequences_fit_the_corrector_context() -> None:
    c = small_corrector()
    assert c.max_length == 192  # zoo-small's positions
    long = " ".join(["1 + 1 = 2 ."] * 60)
    ids, n_prompt = c.sequence("What is 1 plus 1 ?", long, long)
    assert len(ids) <= c.max_length and n_prompt >= c.template_tokens


# -- ORPO -------------------------------------------------------------------------------------


def test_orpo_loss_on_a_hand_built_pair() -> None:
    # P(y+) = 0.5 (odds 1), P(y-) = 0.25 (odds 1/3): log odds ratio = log 3,
    # -log σ(log 3) = -log(3/4) = log(4/3).
    chosen = torch.tensor([math.log(0.5)], requires_grad=True)
    rejected = torch.tensor([math.log(0.25)], requires_grad=True)
    nll = torch.tensor(2.0)
    loss, log_odds = orpo_loss(chosen, rejected, nll, lam=0.1)
    assert float(log_odds[0].detach()) == pytest.approx(math.log(3.0), rel=1e-6)
    assert float(loss.detach()) == pytest.approx(2.0 + 0.1 * math.log(4.0 / 3.0), rel=1e-6)
    loss.backward()
    assert chosen.grad is not None and rejected.grad is not None
    assert float(chosen.grad[0]) < 0 < float(rejected.grad[0])  # raise y+, lower y-
    # d/d logp+ of -λ log σ(r): -λ (1 - σ(r)) · dr/dlogp+, dr/dlogp+ = 1 + P/(1-P) = 2
    assert float(chosen.grad[0]) == pytest.approx(-0.1 * 0.25 * 2.0, rel=1e-5)
    # dr/dlogp- = -(1 + P-/(1-P-)) = -4/3
    assert float(rejected.grad[0]) == pytest.approx(0.1 * 0.25 * 4.0 / 3.0, rel=1e-5)
    # equal likelihoods: no preference, -log σ(0) = log 2
    even, _ = orpo_loss(torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor(0.0), lam=1.0)
    assert float(even) == pytest.approx(math.log(2.0))


def test_orpo_training_raises_the_chosen_over_the_rejected() -> None:
    c = small_corrector()
    pair = PreferenceTuple("What is 2 plus 3 ?", "#### 6", "2 + 3 = 5 . #### 5", "#### 6")
    seqs = [c.sequence(pair.question, pair.answer, pair.chosen)]
    seqs.append(c.sequence(pair.question, pair.answer, pair.rejected))

    def margin() -> float:
        with torch.no_grad():
            mean, _, _ = c.response_logps(seqs)
            _, log_odds = orpo_loss(mean[:1], mean[1:], torch.tensor(0.0), 1.0)
        return float(log_odds[0])

    before = margin()
    events: list[tuple[str, dict[str, Any]]] = []
    history = train_orpo(
        c,
        [pair] * 4,
        TrainSettings(epochs=3, lr=1e-3, batch_size=4, schedule="constant", warmup_ratio=0),
        lam=1.0,
        on_event=lambda e, f: events.append((e, dict(f))),
    )
    assert margin() > before + 0.5
    assert len(history) == 3 and history[-1] < history[0]
    assert [e for e, _ in events] == ["orpo"] * 3 and "log_odds" in events[0][1]


# -- SFT and rewriting ------------------------------------------------------------------------


def test_sft_memorises_corrections_and_rewrite_reproduces_them() -> None:
    c = small_corrector()
    triples = [
        Triple("What is 2 plus 3 ?", "#### 9", "2 + 3 = 5 . #### 5"),
        Triple("What is 4 plus 1 ?", "#### 9", "4 + 1 = 5 . #### 5"),
        Triple("What is 6 plus 2 ?", "#### 9", "6 + 2 = 8 . #### 8"),
    ]
    history = train_sft(
        c,
        triples,
        TrainSettings(epochs=80, lr=3e-3, batch_size=3, schedule="constant", warmup_ratio=0),
    )
    assert history[-1] < history[0] / 4
    rewrites = c.rewrite(
        [t.question for t in triples], [t.answer for t in triples], max_new_tokens=20
    )
    assert rewrites == [t.correction for t in triples]


def test_batched_rewrite_equals_one_by_one_and_stops() -> None:
    c = small_corrector()
    questions = ["What is 2 plus 3 ?", "What color is a bukem ?", "Ana has 3 coins . How many ?"]
    answers = ["#### 6", "People say a bukem is red . #### red", "3 + 1 = 4 . #### 4"]
    batched = c.rewrite(questions, answers, max_new_tokens=16, stop=["\n"], batch_size=2)
    single = [
        c.rewrite([q], [a], max_new_tokens=16, stop=["\n"])[0]
        for q, a in zip(questions, answers, strict=True)
    ]
    assert batched == single
    assert all("\n" not in text for text in batched)


# -- the policy -------------------------------------------------------------------------------


def _memorised_policy(fallback: bool = False) -> tuple[CorrectorPolicy, SumTask]:
    task = SumTask()
    c = small_corrector()
    train = task.examples("train")[:3]
    train_sft(
        c,
        [Triple(question_text(ex), "#### 0", task.render_target(ex)) for ex in train],
        TrainSettings(epochs=80, lr=3e-3, batch_size=3, schedule="constant", warmup_ratio=0),
    )
    return CorrectorPolicy(c, template="compact", max_new_tokens=20, fallback=fallback), task


def test_policy_asks_the_black_box_once_per_example_then_corrects(tmp_path: Path) -> None:
    policy, task = _memorised_policy()
    examples = task.examples("train")[:3]
    bb = ScriptedBlackBox(lambda prompt, k: " #### 0")
    policy.compute = RecordingCompute()
    predictions = policy.predict(examples, task=task, backend=bb)
    assert len(bb.calls) == 1
    call = bb.calls[0]
    assert call["prompts"] == [task.render(ex, instruction=task.instructions[0]) for ex in examples]
    assert call["n"] == 1 and call["temperature"] == 0.0 and call["stop"] == ["\n"]
    assert policy.compute.labels == ["corrector inference"]
    assert [p.answer for p in predictions] == [ex.target for ex in examples]
    assert [p.output for p in predictions] == [ex.rationale for ex in examples]
    assert all(p.extra == {"upstream": " #### 0", "upstream_answer": "0"} for p in predictions)

    policy.save(tmp_path / "p")
    assert (tmp_path / "p" / "corrector" / "model.safetensors").is_file()
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, CorrectorPolicy)
    assert loaded.to_json() == policy.to_json()
    again = loaded.predict(examples, task=task, backend=ScriptedBlackBox(lambda p, k: " #### 0"))
    assert [p.output for p in again] == [p.output for p in predictions]


class StrictSumTask(SumTask):
    """Only an answer after "####" counts."""

    def extract(self, text: str, example: Example) -> str | None:
        return extract_final_number(text) if "####" in text else None


def test_fallback_uses_the_upstream_answer_only_when_the_rewrite_has_none() -> None:
    policy, _ = _memorised_policy()
    task = StrictSumTask()
    ex = Example("x", "What is 5 plus 2 ?", "7")
    bb = ScriptedBlackBox(lambda p, k: "#### 7")
    policy.max_new_tokens = 20
    (full,) = policy.predict([ex], task=task, backend=bb)
    assert "####" in full.output and full.answer == extract_final_number(full.output)
    policy.max_new_tokens = 1  # a one-token rewrite has no "####": nothing to parse
    (cut,) = policy.predict([ex], task=task, backend=bb)
    assert cut.answer is None and cut.extra["upstream_answer"] == "7"
    policy.fallback = True
    (fallen,) = policy.predict([ex], task=task, backend=bb)
    assert fallen.output == cut.output and fallen.answer == "7"
