"""The fast paths give the same answers as the slow ones: methods' independent calls go out
together (BBT's population on threads, GrIPS's paraphrase requests and EvoPrompt-DE's random
donor requests in one batch), the server batches concurrent requests (soft prompts included)
into one engine call, and the engine's direct tokenizer calls match the wrapper's. No timing
is asserted here; `test_benchmarks.py` prints figures."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from benchmarks.engine import HFEngine
from benchmarks.server import MicroBatcher, create_app
from benchmarks.tasks.base import Task
from benchmarks.tiny import tiny_model_dir, torch_threads
from methods import Completion, Example, TuneContext
from methods.bbt import BBT, BBTConfig, search
from methods.evoprompt import EvoPromptDE
from methods.grips import EditSearch, GripsConfig, Paraphraser
from methods.prompting import paraphrase_prompt

# -- BBT: a generation's candidates at once ----------------------------------------------------


def test_threaded_population_search_is_the_sequential_search() -> None:
    target = np.linspace(-1, 1, 12)
    order: list[int] = []

    def loss(z: np.ndarray) -> float:
        order.append(threading.get_ident())
        return float(np.sum((z - target) ** 2))

    cfg = BBTConfig(intrinsic_dim=12, popsize=6, budget=60, eval_every=16)
    dev = lambda z: float(-np.sum(np.abs(z - target)))  # noqa: E731
    one = search(loss, dev, config=cfg, calls=60, seed=5, workers=1)
    threads_one = set(order)
    order.clear()
    many = search(loss, dev, config=cfg, calls=60, seed=5, workers=6)
    assert len(set(order)) > 1 and len(threads_one) == 1  # it did run on several threads
    np.testing.assert_array_equal(one.z, many.z)
    assert (one.dev_accuracy, one.train_loss, one.calls, one.dev_checks, one.history) == (
        many.dev_accuracy,
        many.train_loss,
        many.calls,
        many.dev_checks,
        many.history,
    )


class _Reviews(Task):
    name = "reviews"
    kind = "classification"
    labels = ("negative", "positive")
    instructions = ("Classify the review .",)
    max_tokens = 2

    def load_split(self, split):  # type: ignore[no-untyped-def]
        return [
            Example(f"{split}{i}", f"{'good' if i % 2 else 'bad'} {i} .", self.labels[i % 2])
            for i in range(40)
        ]

    def extract(self, text: str, example: Example) -> str | None:
        word = text.strip().split()[0] if text.strip() else None
        return word if word in self.labels else None


class _SoftBox:
    """Label logits linear in the soft prompt's mean; records how many calls overlap."""

    model = "soft-box"
    capabilities = frozenset({"next_token_logits", "prompt_embeds"})
    context_length = 192
    vocab = ("<eos>", " negative", " positive", ".")

    def __init__(self, thread_safe: bool) -> None:
        self.thread_safe = thread_safe
        self.active = self.peak = 0
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def vocabulary(self) -> list[str]:
        return list(self.vocab)

    def embedding_stats(self) -> tuple[int, float, float]:
        return 4, 0.0, 1.0

    def next_token_logprobs(
        self, prompts: Sequence[str], *, soft_prompt: np.ndarray | None = None
    ) -> np.ndarray:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.002)  # an endpoint's latency, so calls sent together overlap
        mean = 0.0 if soft_prompt is None else float(np.mean(soft_prompt))
        rows = []
        for p in prompts:
            sign = 1.0 if "good" in p else -1.0
            logits = np.array([-3.0, -2.5 * sign * mean, 2.5 * sign * mean, -3.0])
            rows.append(logits - np.log(np.exp(logits).sum()))
        with self._lock:
            self.active -= 1
        return np.array(rows, dtype=np.float32)


def test_bbt_sends_a_population_at_once_to_a_thread_safe_black_box() -> None:
    task = _Reviews()
    fits = {}
    for safe in (False, True):
        box = _SoftBox(thread_safe=safe)
        tuner = BBT(intrinsic_dim=20, n_prompt_tokens=2, k_shot=4, budget=48, popsize=8)
        policy = tuner.fit(
            task.examples("train"),
            task=task,
            backend=box,  # type: ignore[arg-type]
            dev=task.examples("dev"),
            context=TuneContext(seed=1),
        )
        fits[safe] = (policy.soft_prompt, box.peak)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(fits[False][0], fits[True][0])  # the same prompt
    assert fits[False][1] == 1  # one by one when the box does not say it is thread-safe
    assert fits[True][1] > 1  # calls overlapped otherwise


# -- GrIPS: an iteration's paraphrase requests in one batch -------------------------------------


class _Proposer:
    """Paraphrases phrase P as "P (v1)", "P (v2)"; records every generate call."""

    model = "proposer"
    capabilities = frozenset({"generate"})
    context_length = None

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompts: Sequence[str], *, n: int = 1, **_: Any) -> list[list[Completion]]:
        self.calls.append(list(prompts))
        out = []
        for prompt in prompts:
            phrase = prompt.split("Input: ", 1)[1].rsplit("\nOutput:", 1)[0]
            texts = [f" <prompt>{phrase.rstrip(' .')} v{k} .</prompt>" for k in (1, 2)]
            out.append([Completion(texts[i % 2]) for i in range(n)])
        return out


class _Scorer:
    def score(self, instructions: Sequence[str]) -> list[float]:
        return [float(len(text)) for text in instructions]  # longer is better: subs win


BASE = "Read the text , then answer . Say good or bad ; be brief ."


@pytest.mark.parametrize("compose", [1, 2])
def test_grips_asks_an_iterations_paraphrases_together(compose: int) -> None:
    config = GripsConfig(edits=("sub", "swap"), num_candidates=6, num_compose=compose)

    def make() -> tuple[EditSearch, _Proposer]:
        proposer = _Proposer()
        paraphraser = Paraphraser(proposer, n=4, temperature=1.5, max_tokens=20, seed=0)  # type: ignore[arg-type]
        edit = EditSearch(_Scorer(), paraphraser, config, edits=config.edits, rng=random.Random(4))  # type: ignore[arg-type]
        return edit, proposer

    batched, batched_proposer = make()
    together = [c.text for c in batched.candidates(BASE, ["sub", "swap"])]
    lazy, lazy_proposer = make()  # one request per phrase, at the moment a sub needs it
    one_by_one = [
        lazy.candidate(BASE, [lazy.rng.choice(["sub", "swap"]) for _ in range(compose)]).text
        for _ in range(config.num_candidates)
    ]
    assert together == one_by_one
    asked = sorted(p for call in batched_proposer.calls for p in call)
    assert asked == sorted(p for call in lazy_proposer.calls for p in call)  # same requests
    assert len(lazy_proposer.calls) == len(asked) > 1
    if compose == 1:
        assert len(batched_proposer.calls) == 1  # all of them in one batch
    else:  # a composed candidate may need a phrase only its own first sub made
        assert len(batched_proposer.calls) <= len(lazy_proposer.calls)
    assert all(p.startswith(paraphrase_prompt("")[:20]) for p in asked)


# -- EvoPrompt-DE with random donors: one batch per iteration ----------------------------------


class _EvoTask(Task):
    name = "evo"
    kind = "classification"
    labels = ("neg", "pos")
    instructions = ("Label it .", "Say the label .", "Pick neg or pos .", "Answer briefly .")
    max_tokens = 2

    def load_split(self, split):  # type: ignore[no-untyped-def]
        return [Example(f"{split}{i}", f"x {i}", self.labels[i % 2]) for i in range(12)]

    def extract(self, text: str, example: Example) -> str | None:
        return text.strip().split()[0] if text.strip() else None


class _EvoBox:
    """Proposes "<prompt>Answer more ... now .</prompt>"; answers right unless the
    instruction's length is a multiple of 3. Logs each generate call as (kind, prompts)."""

    model = "evo-box"
    capabilities = frozenset({"generate"})
    context_length = None

    def __init__(self) -> None:
        self.proposals = 0
        self.log: list[tuple[str, int]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompts: Sequence[str], **_: Any) -> list[list[Completion]]:
        kind = "score"
        out = []
        for prompt in prompts:
            if prompt.startswith("Please follow") or prompt.startswith("Generate a variation"):
                kind = "de" if prompt.startswith("Please follow") else "paraphrase"
                self.proposals += 1
                words = " ".join(["more"] * self.proposals)
                out.append([Completion(f"<prompt>Answer {words} now .</prompt>")])
            else:
                right = len(prompt.split("\n")[0]) % 3 != 0
                gold = "pos" if int(prompt.rsplit("x ", 1)[1].split()[0]) % 2 else "neg"
                out.append([Completion(" " + (gold if right else "neg"))])
        self.log.append((kind, len(prompts)))
        return out


def test_de_with_random_donors_sends_each_iteration_in_two_batches() -> None:
    task = _EvoTask()
    box = _EvoBox()
    tuner = EvoPromptDE(population=4, iterations=2, dev_size=8, donor_random=True)
    events: list[tuple[str, dict[str, Any]]] = []
    tuner.fit(
        task.examples("train"),
        task=task,
        backend=box,  # type: ignore[arg-type]
        dev=task.examples("dev"),
        context=TuneContext(seed=2, on_event=lambda e, f: events.append((e, dict(f)))),
    )
    children = [f for e, f in events if e == "child" and f["op"] == "de"]
    assert len(children) == 8 and all(c["valid"] for c in children)  # all new, all scored
    first_de = [kind for kind, _ in box.log].index("de")
    # per iteration: the 4 requests in one batch, then the 4 children scored in one batch
    # (8 dev prompts each), where the member-by-member loop makes 4 calls of each kind
    assert box.log[first_de:] == [("de", 4), ("score", 32), ("de", 4), ("score", 32)]


# -- the server batches what arrives together ----------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return HFEngine.load(tiny_model_dir(), device="cpu")


class _Counting:
    """Wraps an engine method to count its calls and the rows each call got."""

    def __init__(self, engine: HFEngine, name: str) -> None:
        self.original = getattr(engine, name)
        self.rows: list[int] = []
        setattr(engine, name, self)

    def __call__(self, prompts: Sequence[Any], **kwargs: Any) -> Any:
        self.rows.append(len(prompts))
        return self.original(prompts, **kwargs)


def test_the_batcher_waits_for_requests_still_being_read() -> None:
    batcher = MicroBatcher(window_s=30.0)
    batches: list[list[str]] = []

    def run(items: list[str]) -> list[str]:
        batches.append(list(items))
        return [item.upper() for item in items]

    async def slow_reader() -> list[str]:
        with batcher.arrival():  # its headers are in; its body takes a while
            await asyncio.sleep(0.05)
            return await batcher.submit("k", ["b"], run)

    async def scenario() -> list[list[str]]:
        reader = asyncio.create_task(slow_reader())
        await asyncio.sleep(0)  # the slow request has arrived
        first = await batcher.submit("k", ["a"], run)
        return [first, await reader]

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == [["A"], ["B"]]
    assert batches == [["a", "b"]]  # one batch, not "a" alone and then "b"


def test_a_lone_request_does_not_wait_and_a_stalled_one_is_not_waited_for_long() -> None:
    batcher = MicroBatcher(window_s=30.0)
    run = lambda items: list(items)  # noqa: E731
    # nothing else arriving: served at once (a 30 s wait would trip the 10 s limit)
    assert asyncio.run(asyncio.wait_for(batcher.submit("k", [1], run), 10)) == [1]

    short = MicroBatcher(window_s=0.01)

    async def stalled() -> list[int]:
        job = asyncio.ensure_future(short.submit("k", [2], run))
        with short.arrival():  # meanwhile another request never finishes arriving
            return await job

    assert asyncio.run(asyncio.wait_for(stalled(), 10)) == [2]


async def _burst(app: Any, path: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        replies = await asyncio.gather(*(client.post(path, json=b) for b in bodies))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    return [r.json() for r in replies]


def test_concurrent_completions_are_one_engine_batch(engine: HFEngine) -> None:
    app = create_app(engine, model_name="tiny")
    prompts = [f"Q: {i} + 1\nA:" for i in range(12)]
    counting = _Counting(engine, "generate")
    try:
        with torch_threads(1):
            bodies = [
                {"model": "tiny", "prompt": p, "max_tokens": 5, "temperature": 0} for p in prompts
            ]
            replies = asyncio.run(_burst(app, "/v1/completions", bodies))
    finally:
        del engine.generate  # type: ignore[method-assign]
    assert counting.rows == [12]  # one batch, not the first arrival and then the rest
    with torch_threads(1):
        alone = engine.generate(prompts, max_tokens=5)
    assert [r["choices"][0]["text"] for r in replies] == [g.samples[0].text for g in alone]


def test_different_soft_prompts_share_one_forward_pass(engine: HFEngine) -> None:
    import base64

    app = create_app(engine, model_name="tiny", grey_box=True)
    dim = engine.embedding_stats()[0]
    rng = np.random.default_rng(0)
    softs = [rng.normal(size=(k, dim)).astype("<f4") for k in (1, 2, 3, 2)]
    prompts = ["Q: 1 + 1\nA:", "Q: 22 + 3\nA:"]
    bodies = [
        {
            "model": "tiny",
            "prompts": prompts,
            "soft_prompt": {"shape": list(s.shape), "data": base64.b64encode(s.tobytes()).decode()},
        }
        for s in softs
    ]
    counting = _Counting(engine, "next_token_logprobs")
    try:
        with torch_threads(1):
            replies = asyncio.run(_burst(app, "/v1/bench/next_token_logprobs", bodies))
    finally:
        del engine.next_token_logprobs  # type: ignore[method-assign]
    assert counting.rows == [8]  # four soft prompts, two prompts each, one forward
    for soft, reply in zip(softs, replies, strict=True):
        rows = np.frombuffer(base64.b64decode(reply["data"]), dtype="<f4").reshape(reply["shape"])
        with torch_threads(1):
            alone = engine.next_token_logprobs(prompts, soft_prompt=soft)
        np.testing.assert_allclose(rows, alone, atol=1e-5)


def test_a_bad_soft_prompt_fails_alone(engine: HFEngine) -> None:
    import base64

    app = create_app(engine, model_name="tiny", grey_box=True)
    dim = engine.embedding_stats()[0]
    good = np.zeros((1, dim), dtype="<f4")
    bad = np.full((1, dim), np.nan, dtype="<f4")

    async def both() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            "/v1/bench/next_token_logprobs",
                            json={
                                "model": "tiny",
                                "prompts": ["Q: 1\nA:"],
                                "soft_prompt": {
                                    "shape": [1, dim],
                                    "data": base64.b64encode(s.tobytes()).decode(),
                                },
                            },
                        )
                        for s in (good, bad)
                    )
                )
            )

    with torch_threads(1):
        ok, refused = asyncio.run(both())
    assert ok.status_code == 200
    assert refused.status_code == 400 and "NaN" in refused.json()["error"]["message"]


# -- the engine's tokenizer fast path ------------------------------------------------------------


def test_direct_tokenizer_calls_match_the_wrapper(tmp_path: Path) -> None:
    from benchmarks.zoo import available, model_dir

    dirs = [tiny_model_dir(tmp_path)]
    if "zoo-large" in available():
        dirs.append(model_dir("zoo-large"))
    texts = ["", "Q: 12 + 7\nA:", "  spaced   out\t", "ünïcödé ✓ <|endoftext|> done", "a" * 300]
    for directory in dirs:
        engine = HFEngine.load(directory, device="cpu")
        assert engine._rust is not None  # the fast path is taken
        for text in texts:
            wrapped = list(engine.tokenizer(text, add_special_tokens=True)["input_ids"])
            assert engine.encode(text) == (wrapped or [engine._start_id])
            ids = [*wrapped, min(engine.eos_ids, default=0)]
            assert engine.decode(ids) == engine.tokenizer.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
