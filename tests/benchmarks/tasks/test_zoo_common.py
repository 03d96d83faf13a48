"""What every zoo task owes the benchmark and the trainer: deterministic disjoint splits whose
gold answers score, a corpus in the evaluation format with every instruction and style, bounded
documents, and proposer templates whose answers are well-formed instructions."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from benchmarks.tasks import SPLITS, get_task, tasks
from benchmarks.tasks._zoo import (
    MAX_PROPOSER_TOKENS,
    InstructionSpace,
    ZooTask,
    approx_tokens,
    evoprompt_answer,
    evoprompt_crossover_prompt,
    is_reserved,
    is_well_formed_instruction,
    opro_answer,
    opro_meta_prompt,
    parse_proposal,
    split_phrases,
    world_names,
    zoo_corpus,
    zoo_task_classes,
)
from benchmarks.tasks.zoo_sentiment import CONVENTIONS
from methods.base import Example
from methods.registry import BenchError

NAMES = ("zoo-arith", "zoo-hops", "zoo-truth", "zoo-sentiment")
N_DOCS = 1500


def _sentiment_style(completion: str) -> str | None:
    return next((s for s, words in CONVENTIONS.items() if completion in words), None)


#: the answer style a completion is in, per task (None: unrecognised).
STYLE_OF: dict[str, Callable[[str], str | None]] = {
    "zoo-arith": lambda c: (
        "direct" if c.startswith("####") else "chain" if c[0].isdigit() else None
    ),
    "zoo-hops": lambda c: (
        "truefalse"
        if c in ("#### true", "#### false")
        else "direct"
        if c.startswith("####")
        else "decompose"
    ),
    "zoo-truth": lambda c: (
        "careful"
        if c.startswith("According to the record ,")
        else "casual"
        if c.startswith("People say")
        else None
    ),
    "zoo-sentiment": _sentiment_style,
}


def parse_qa(doc: str) -> tuple[str | None, str, str] | None:
    """(instruction, input, completion) of a QA document; None for other documents."""
    if "Q: " not in doc or "\nA: " not in doc:
        return None
    head, completion = doc.rsplit("\nA: ", 1)
    instruction, _, question = head.rpartition("Q: ")
    return (instruction.strip() or None), question, completion


@pytest.fixture(scope="module", params=NAMES)
def task(request: pytest.FixtureRequest) -> ZooTask:
    t = get_task(request.param)
    assert isinstance(t, ZooTask)
    return t


@pytest.fixture(scope="module")
def corpora() -> dict[str, list[str]]:
    return {name: get_task(name).corpus(N_DOCS, 0) for name in NAMES}


def test_registered_and_underscore_module_is_not_a_task() -> None:
    assert set(NAMES) <= set(tasks.names())
    assert not any(name.startswith("_") for name in tasks.names())
    assert tuple(cls.name for cls in zoo_task_classes()) == NAMES


def test_sizes_options_and_unknown_option() -> None:
    small = get_task("zoo-arith", n_train=7, n_dev=3, n_test=5)
    assert [len(small.examples(s)) for s in SPLITS] == [7, 3, 5]
    with pytest.raises(BenchError, match="unknown option"):
        get_task("zoo-hops", n_tset=5)


def test_default_sizes_and_ids(task: ZooTask) -> None:
    assert [len(task.examples(s)) for s in SPLITS] == [500, 100, 200]
    for split in SPLITS:
        ids = [ex.id for ex in task.examples(split)]
        assert ids == [f"{split}-{i}" for i in range(len(ids))]


def test_deterministic_by_seed(task: ZooTask) -> None:
    again = get_task(task.name)
    other = get_task(task.name, seed=1)
    for split in SPLITS:
        assert again.examples(split) == task.examples(split)
        assert other.examples(split) != task.examples(split)
    assert again.corpus(200, 3) == task.corpus(200, 3)
    assert task.corpus(200, 4) != task.corpus(200, 3)
    # test is drawn first: it does not depend on the train size
    assert get_task(task.name, n_train=20).examples("test") == task.examples("test")


def test_splits_disjoint(task: ZooTask) -> None:
    inputs = {split: {ex.input for ex in task.examples(split)} for split in SPLITS}
    assert all(len(inputs[s]) == len(task.examples(s)) for s in SPLITS)
    assert not inputs["train"] & inputs["dev"]
    assert not inputs["train"] & inputs["test"]
    assert not inputs["dev"] & inputs["test"]


@pytest.mark.parametrize("split", SPLITS)
def test_gold_scores_full_marks(task: ZooTask, split: str) -> None:
    for ex in task.examples(split):
        assert task.score(task.extract(task.render_target(ex), ex), ex) == 1.0, ex
        assert task.render_target(ex) == task.completion(ex, task.space.best)


#: answer styles that are label conventions the scorer rejects ("great", "#### true").
REJECTED_STYLES = {"zoo-hops": {"truefalse"}, "zoo-sentiment": {"gb", "gt"}}


def test_every_style_completion_parses(task: ZooTask) -> None:
    """Every style's completion yields an answer through `extract` (right or wrong), except
    the label conventions the scorer rejects, which yield none."""
    for ex in task.examples("dev"):
        for style in task.space.styles:
            text = task.completion(ex, style)
            assert STYLE_OF[task.name](text) == style
            rejected = style in REJECTED_STYLES.get(task.name, set())
            assert (task.extract(text, ex) is None) == rejected, (style, text)


def test_instructions_default_not_best(task: ZooTask) -> None:
    space = task.space
    assert 4 <= len(task.instructions) <= 8 and task.instructions == space.instructions
    assert set(task.instructions) >= set(space.handwritten)
    qualities = [space.quality(text) for text in task.instructions]
    assert qualities[0] < max(qualities) == 1.0
    assert 0.0 < qualities[0] < 1.0  # the default mixes styles
    assert min(qualities) < 0.5  # some instruction steers to a worse style
    for style in space.styles:  # every style has an instruction tied to it
        assert any(space.style_mix(text)[style] == 1.0 for text in task.instructions)


def test_corpus_in_evaluation_format_with_all_instructions_and_styles(
    task: ZooTask, corpora: dict[str, list[str]]
) -> None:
    docs = corpora[task.name]
    assert len(docs) == N_DOCS
    qa = [parsed for doc in docs if (parsed := parse_qa(doc))]
    seen_instructions = {instruction for instruction, _, _ in qa}
    assert set(task.instructions) <= seen_instructions
    assert None in seen_instructions
    styles = {STYLE_OF[task.name](completion) for _, _, completion in qa}
    assert styles == set(task.space.styles)
    for doc in docs[:300]:
        parsed = parse_qa(doc)
        if parsed:  # rebuilds exactly as render(...) + " " + completion
            instruction, question, completion = parsed
            ex = Example(id="x", input=question, target="")
            assert doc == task.render(ex, instruction=instruction) + " " + completion


def test_explicit_instructions_fix_the_style(task: ZooTask, corpora) -> None:
    for parsed in filter(None, map(parse_qa, corpora[task.name])):
        instruction, _, completion = parsed
        mix = task.space.style_mix(instruction)
        style = STYLE_OF[task.name](completion)
        assert style is not None and mix[style] > 0.0
        if max(mix.values()) == 1.0:
            assert mix[style] == 1.0


def test_no_target_input_in_the_corpus(task: ZooTask, corpora) -> None:
    corpus_inputs = {parsed[1] for parsed in filter(None, map(parse_qa, corpora[task.name]))}
    for split in SPLITS:
        assert not corpus_inputs & {ex.input for ex in task.examples(split)}
    if task.reserve_mod > 1:
        assert all(is_reserved(ex.input, task.reserve_mod) for ex in task.examples("test"))
        assert not any(is_reserved(q, task.reserve_mod) for q in corpus_inputs)


def test_document_length_bounded(task: ZooTask, corpora) -> None:
    lengths = [approx_tokens(doc) for doc in corpora[task.name]]
    assert max(lengths) <= task.max_doc_tokens
    longest_gold = max(
        approx_tokens(task.render(ex, instruction=text) + " " + task.render_target(ex))
        for ex in task.examples("test")
        for text in task.instructions
    )
    assert longest_gold <= task.max_doc_tokens
    proposer = task.proposer_documents(2000, 0)
    # proposer documents must fit the models' context whole (the trainer skips longer ones);
    # a few DE requests of four long instructions do not, and are left out of training
    over = sum(approx_tokens(doc) > MAX_PROPOSER_TOKENS for doc in proposer)
    assert over <= 0.05 * len(proposer)
    assert max(len(doc) for doc in corpora[task.name] + proposer) <= 1200


def test_proposer_documents_answer_new_well_formed_instructions(task: ZooTask) -> None:
    docs = task.proposer_documents(200, 1)
    assert sum(doc.startswith("I have some texts") for doc in docs) == 80
    assert sum("1. Cross over the following prompts" in doc for doc in docs) == 40
    assert sum("1. Identify the different parts" in doc for doc in docs) == 40
    assert sum(doc.startswith("Generate a variation") for doc in docs) == 40
    vocabulary = task.space.vocabulary()
    better = 0
    for doc in docs:
        prompt, answer = doc.rsplit("\n", 1)
        new = parse_proposal(answer)
        shown = [line.split(": ", 1)[1] for line in prompt.split("\n") if "Prompt " in line[:13]]
        if doc.startswith("Generate a variation"):
            (original,) = [line[len("Input: ") :] for line in prompt.split("\n")[1:2]]
            mix = task.space.style_mix(original)
            assert task.space.style_mix(new) == mix or max(mix.values()) < 1.0, doc
            shown = [original, original]
        if doc.startswith("I have some texts"):
            blocks = prompt.split("text:\n")[1:]
            shown = [block.split("\nscore:")[0] for block in blocks]
            scores = [int(block.split("score:\n")[1].split("\n")[0]) for block in blocks]
            assert scores == sorted(scores)
            better += task.space.quality(new) >= task.space.quality(shown[-1])
        assert len(shown) >= 2
        assert is_well_formed_instruction(new, existing=shown, vocabulary=vocabulary), doc
    assert better >= 60  # OPRO answers mostly at least as good as the best shown


def test_opro_and_evoprompt_templates() -> None:
    prompt = opro_meta_prompt(
        [("Think step by step .", 80), ("Answer the question .", 31.6)], [("Ana has 2 .", "2")]
    )
    assert prompt.index("Answer the question .") < prompt.index("Think step by step .")
    assert "text:\nAnswer the question .\nscore:\n32" in prompt
    assert "input:\nQ: <INS>\nAna has 2 .\nA:\noutput:\n2" in prompt
    assert prompt.endswith("Write the text in square brackets.")
    assert parse_proposal(opro_answer("Be careful .")) == "Be careful ."
    evo = evoprompt_crossover_prompt("Think step by step .", "Do not explain .")
    assert "Prompt 1: Think step by step .\nPrompt 2: Do not explain ." in evo
    assert "<prompt> and </prompt>" in evo
    assert parse_proposal(evo + evoprompt_answer("Use one fact at a time .")) == (
        "Use one fact at a time ."
    )
    assert parse_proposal("no brackets at all") is None


def test_well_formed_accepts_task_instructions_and_rejects_garbage() -> None:
    for cls in zoo_task_classes():
        space = cls.space
        for text in (*cls.instructions, *space.phrases()):
            assert is_well_formed_instruction(text, vocabulary=space.vocabulary()), text
    garbage = [
        None,
        "",
        "   ",
        "#### 42",
        "text:\nThink step by step .",
        "Think step by step",
        "think step by step .",
        "Solve 2 + 3 = 5 .",
        "[Think step by step .]",
        "score: 80",
        "Q: Ana has 3 coins .",
        "the the the the .",
        "Answer answer answer now .",
        "% $ # @ .",
        "Step .",
        "Think step by step .\nShow your work .",
        "Word " * 50 + ".",
    ]
    for text in garbage:
        assert not is_well_formed_instruction(text), text
    assert not is_well_formed_instruction("Think step by step .", existing=["think step by step."])
    assert not is_well_formed_instruction("Think about zebras .", vocabulary={"think", "about"})


def test_instruction_space_composition() -> None:
    space = InstructionSpace(
        styles=("a", "b"),
        best="a",
        explicit={"a": ("Do a .",), "b": ("Do b .", "Try b .")},
        neutral={"Hello .": {"a": 1, "b": 3}},
        handwritten=("Hello .", "Hello . Do a .", "Do b ."),
        none_mix={"a": 1, "b": 1},
        score_range=(0.0, 100.0),
    )
    assert space.style_mix("Hello .") == {"a": 0.25, "b": 0.75}
    assert space.style_mix("Hello . Do a .") == {"a": 1.0, "b": 0.0}
    assert space.style_mix("Do a . Do b .") == {"a": 0.5, "b": 0.5}
    assert space.style_mix(None) == space.style_mix("Unknown words .") == {"a": 0.5, "b": 0.5}
    assert space.style_mix("hello.  do A.") == {"a": 1.0, "b": 0.0}  # case and spacing
    assert split_phrases("Hello . Do a , then b ? ok") == ["Hello .", "Do a , then b ?", "ok"]
    rng = random.Random(0)
    known = {p.lower() for p in space.phrases()}
    for _ in range(200):
        child = space.recombine("Hello . Do a .", "Try b .", rng)
        assert 1 <= len(split_phrases(child)) <= 3
        assert {p.lower() for p in split_phrases(child)} <= known
    with pytest.raises(ValueError, match="default instruction"):
        InstructionSpace(
            styles=("a", "b"),
            best="a",
            explicit={"a": ("Do a .",), "b": ("Do b .",)},
            neutral={"Hello .": {"a": 1, "b": 1}},
            handwritten=("Do a .", "Do b ."),
            none_mix={"a": 1, "b": 1},
            score_range=(0.0, 100.0),
        )


def test_instruction_space_default_is_neutral_and_first() -> None:
    kwargs: dict = dict(
        styles=("a", "b"),
        best="a",
        explicit={"a": ("Do a .",), "b": ("Do b .",)},
        neutral={"Hello .": {"a": 1, "b": 3}, "Hi .": {"a": 3, "b": 1}},
        handwritten=("Hello .", "Hello . Do a .", "Do b ."),
        none_mix={"a": 1, "b": 1},
        score_range=(0.0, 100.0),
    )
    assert InstructionSpace(**kwargs).instructions == kwargs["handwritten"]
    space = InstructionSpace(**kwargs, default="Hi . Hello .")
    assert space.instructions == ("Hi . Hello .", *kwargs["handwritten"])
    assert space.handwritten == kwargs["handwritten"]  # the training corpus is unchanged
    moved = InstructionSpace(**kwargs, default="Hello .")
    assert moved.instructions == kwargs["handwritten"]  # no duplicate when already written
    with pytest.raises(ValueError, match="names a style"):
        InstructionSpace(**kwargs, default="Hello . Do b .")
    with pytest.raises(ValueError, match="unknown phrases"):
        InstructionSpace(**kwargs, default="Greetings .")


def test_world_names_distinct_and_stable() -> None:
    names = world_names()
    flat = [n.lower() for kind in names.values() for n in kind]
    assert len(flat) == len(set(flat))
    assert names == world_names()


def test_zoo_corpus_mixes_tasks_and_proposer_documents() -> None:
    docs = zoo_corpus(100, seed=0)
    assert len(docs) == 4 * (100 + 12)
    assert docs == zoo_corpus(100, seed=0) and docs != zoo_corpus(100, seed=1)
    assert sum(doc.startswith("I have some texts") for doc in docs) == 20
    assert sum(doc.startswith("Please follow the instruction") for doc in docs) == 20
    assert sum(doc.startswith("Generate a variation") for doc in docs) == 8
    assert any("#### yes" in d or "#### no" in d for d in docs)
    assert any(d.endswith(" positive") or d.endswith(" negative") for d in docs)


def test_style_cue_shifts_only_neutral_mixtures() -> None:
    space = InstructionSpace(
        styles=("a", "b", "c"),
        best="a",
        explicit={"a": ("Do a .",), "b": ("Do b .",), "c": ("Do c .",)},
        neutral={"Hello .": {"a": 1, "b": 1, "c": 2}},
        handwritten=("Hello .", "Do a ."),
        none_mix={"a": 1, "b": 1, "c": 1},
        score_range=(0.0, 100.0),
        cue_shift=0.2,
    )
    assert space.style_mix("Hello .", cue=True) == pytest.approx(
        {"a": 0.45, "b": 0.55 / 3, "c": 1.1 / 3}
    )
    assert space.style_mix("Hello .", cue=False) == pytest.approx(
        {"a": 0.05, "b": 0.95 / 3, "c": 1.9 / 3}
    )
    assert space.style_mix("Hello .") == {"a": 0.25, "b": 0.25, "c": 0.5}  # no cue: unshifted
    # explicit instructions, even conflicting ones, ignore the cue
    assert space.style_mix("Do b . Do c .", cue=True) == {"a": 0.0, "b": 0.5, "c": 0.5}
    assert space.style_mix("Do a .", cue=False) == {"a": 1.0, "b": 0.0, "c": 0.0}


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("zoo-arith", 0.25, 0.45),
        ("zoo-hops", 0.3, 0.5),
        ("zoo-truth", 0.4, 0.6),
        ("zoo-sentiment", 0.45, 0.65),
    ],
)
def test_style_cue_share_in_the_target(name: str, low: float, high: float) -> None:
    """The cue's share in the target sets where greedy zero-shot accuracy sits (about the
    share times the best style's accuracy): well inside the 20-70% headroom band."""
    from benchmarks.tasks.base import get_task

    task = get_task(name)
    test = task.examples("test")
    share = sum(bool(task.cue(ex)) for ex in test) / len(test)
    assert low <= share <= high
