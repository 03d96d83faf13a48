"""The loading and answer helpers of benchmarks/tasks/base.py, on small generated files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.tasks.base import (
    DataError,
    Split,
    Task,
    extract_final_number,
    get_task,
    normalize_number,
    read_rows,
    split_holdout,
    stable_shuffle,
)
from methods.base import Example
from methods.registry import BenchError


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# -- read_rows ----------------------------------------------------------------------------


def test_read_rows_reads_every_format(tmp_path: Path) -> None:
    files = {
        "a.jsonl": '{"q": "x", "n": 1}\n{"q": "y", "n": 2}\n',
        "a.json": '[{"q": "x", "n": 1}, {"q": "y", "n": 2}]',
        "a.csv": "q,n\nx,1\ny,2\n",
        "a.tsv": "q\tn\nx\t1\ny\t2\n",
    }
    for name, content in files.items():
        rows = read_rows(write(tmp_path, name, content), required=("q", "n"))
        assert rows == [{"q": "x", "n": 1}, {"q": "y", "n": 2}], name


def test_read_rows_parses_csv_quoting_and_keeps_na_like_text(tmp_path: Path) -> None:
    path = write(tmp_path, "q.tsv", 'text\tlabel\n"a ""quoted"" word"\t1\nNA\t0\nnull\t1\n')
    rows = read_rows(path, required=("text", "label"))
    assert [r["text"] for r in rows] == ['a "quoted" word', "NA", "null"]


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("bad.jsonl", '{"q": 1}\n{"q": 2\n', ":2: malformed JSON"),
        ("bad.jsonl", '{"q": 1}\n[1, 2]\n', ":2: expected a JSON object"),
        ("bad.json", '[{"q": 1},\n {"q": 2,}\n]', ":2: malformed JSON"),
        ("bad.csv", "q,n\n1,2\n3,4,5\n", "line 3"),
        ("bad.tsv", "q\tn\n1\t2\n3\t4\t5\n", "line 3"),
    ],
)
def test_read_rows_malformed_row_names_file_and_line(
    tmp_path: Path, name: str, content: str, where: str
) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(DataError, match=str(path)) as info:
        read_rows(path)
    assert where in str(info.value)


def test_read_rows_json_must_be_an_array(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected a JSON array"):
        read_rows(write(tmp_path, "obj.json", '{"q": 1}'))


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("m.jsonl", '{"q": 1}\n{"p": 2}\n', ":line 2: missing field(s) q"),
        ("m.json", '[{"q": 1}, {"p": 2}]', ":row 2: missing field(s) q"),
        ("m.csv", "q,p\n1,2\n,3\n", ":line 3: missing field(s) q"),
        ("m.tsv", "q\tp\n1\t2\n\t3\n", ":line 3: missing field(s) q"),
    ],
)
def test_read_rows_missing_required_field(
    tmp_path: Path, name: str, content: str, where: str
) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as info:
        read_rows(path, required=("q",))
    assert str(info.value) == f"{path}{where}"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("l.jsonl", b'{"q": "ok"}\n{"q": "caf\xe9"}\n'),
        ("l.json", b'[{"q": "ok"},\n {"q": "caf\xe9"}]'),
        ("l.csv", b"q\ncaf\xe9\nok\n"),
        ("l.tsv", b"q\ncaf\xe9\nok\n"),
    ],
)
def test_read_rows_not_utf8_names_file_and_line(tmp_path: Path, name: str, content: bytes) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as info:
        read_rows(path)
    assert str(info.value).startswith(f"{path}:2: not UTF-8")


def test_read_rows_unsupported_extension_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'; valid: \.json"):
        read_rows(write(tmp_path, "a.txt", "x"))
    with pytest.raises(DataError, match="file not found"):
        read_rows(tmp_path / "absent.jsonl")


# -- answers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("1,234", "1234"),
        ("3.50", "3.5"),
        ("-2", "-2"),
        ("18.", "18"),
        (" 7 ", "7"),
        ("2.0", "2"),
        ("abc", None),
        ("", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_normalize_number(text: str, number: str | None) -> None:
    assert normalize_number(text) == number


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("3 + 4 = 7\n#### 7", "7"),
        ("#### 2,125", "2125"),
        ("The loss is 5.\n#### -5", "-5"),
        ("so she earns $18 a day.", "18"),  # no marker: the last number
        ("#### 4 apples, not 5", "4"),  # the first number after the last marker
        ("#### 3\nwait, redo\n#### 12", "12"),
        ("#### none\nthe answer is 9", "9"),  # marker without a number: the last number
        ("I cannot tell.", None),
    ],
)
def test_extract_final_number(text: str, number: str | None) -> None:
    assert extract_final_number(text) == number


# -- splitting and shuffling --------------------------------------------------------------


def test_split_holdout_is_deterministic_and_disjoint() -> None:
    examples = [Example(id=str(i), input=f"q{i}", target=str(i)) for i in range(100)]
    rest, held = split_holdout(examples, fraction=0.2, seed=3)
    assert (rest, held) == split_holdout(examples, fraction=0.2, seed=3)
    assert len(held) == 20 and len(rest) == 80
    assert {e.id for e in rest}.isdisjoint(e.id for e in held)
    assert [e.id for e in held] == sorted((e.id for e in held), key=int)  # file order kept
    assert held != split_holdout(examples, fraction=0.2, seed=4)[1]


def test_stable_shuffle_is_a_fixed_permutation() -> None:
    items = list("abcdefgh")
    shuffled = stable_shuffle(items, key="question")
    assert shuffled == stable_shuffle(items, key="question")
    assert sorted(shuffled) == items
    assert any(stable_shuffle(items, key=f"q{i}") != items for i in range(5))


def test_hub_fallback_is_tried_and_reported_offline(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With no local file the task falls back to its hub dataset; offline, the error names
    both the missing file and the hub source, in one line."""
    from benchmarks.tasks.base import DataError, get_task

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to find
    task = get_task("gsm8k", data_dir=tmp_path)
    with pytest.raises(DataError) as info:
        task.examples("test")
    msg = str(info.value)
    assert "gsm8k/test.jsonl not found" in msg and "hub:gsm8k/main[test]" in msg
    assert "\n" not in msg


# -- options and prompt formats -----------------------------------------------------------


class _Tiny(Task):
    """A task with chat limits of its own, for the format tests."""

    name = "tiny-format"
    max_tokens = 5
    stop = ("\n",)
    chat_max_tokens = 20
    chat_stop = ("\n\n",)

    def load_split(self, split: Split) -> list[Example]:
        return [Example(f"{split}-0", "x", "y")]

    def extract(self, text: str, example: Example) -> str | None:
        return text.strip() or None


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("sst2", {"bogus": 1}, "task sst2: unknown option 'bogus'; valid: fewshot_seed"),
        ("agnews", {"fewshot": 13}, "task agnews: unknown option 'fewshot'; valid: fewshot_seed"),
        ("truthfulqa", {"mc2": 1}, "task truthfulqa: unknown option 'mc2'; valid: mc"),
        ("strategyqa", {"seed": 1}, "task strategyqa: unknown option 'seed'; it takes no options"),
        ("gsm8k", {"k": 8}, "task gsm8k: unknown option 'k'; it takes no options"),
        ("zoo-hops", {"n_tset": 5}, "unknown option 'n_tset'; valid: seed, n_train, n_dev"),
    ],
)
def test_unknown_task_option_is_refused_with_the_valid_ones(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(BenchError, match=re.escape(message)):
        get_task(name, **options)


def test_declared_options_are_taken() -> None:
    assert get_task("sst2", fewshot_seed=13).fewshot_seed == 13
    assert get_task("truthfulqa", mc=2).mc == 2
    assert get_task("zoo-arith", n_test=3).sizes["test"] == 3


def test_chat_format_takes_the_chat_limits_and_raw_keeps_its_own() -> None:
    raw, chat = _Tiny(), _Tiny(prompt_format="chat")
    assert (raw.max_tokens, raw.stop) == (5, ("\n",))
    assert (chat.max_tokens, chat.stop) == (20, ("\n\n",))
    sst2 = get_task("sst2", prompt_format="chat")
    assert sst2.max_tokens >= 20  # "The sentiment of the review is positive." fits
    # A task without chat limits answers under chat as under raw.
    hops = get_task("zoo-hops", prompt_format="chat")
    assert (hops.max_tokens, hops.stop) == (type(hops).max_tokens, type(hops).stop)


def test_fingerprint_changes_with_the_format_limits() -> None:
    assert _Tiny().fingerprint() != _Tiny(prompt_format="chat").fingerprint()

    class Longer(_Tiny):
        max_tokens = 6

    class Stops(_Tiny):
        stop = ("\n", "Question:")

    assert len({_Tiny().fingerprint(), Longer().fingerprint(), Stops().fingerprint()}) == 3


def test_unknown_prompt_format_is_refused() -> None:
    with pytest.raises(BenchError, match="unknown prompt format 'chatml'; valid: raw, chat"):
        _Tiny(prompt_format="chatml")


def test_fingerprint_covers_version_code_data_location_and_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks of one name with the same examples but another version, code, data folder
    or options never share a fingerprint (caches, memos and the gate would mix them)."""
    import importlib.util
    import sys
    import textwrap

    source = textwrap.dedent(
        """
        from benchmarks.tasks.base import Task
        from methods import Example

        class Fixed(Task):
            name = "fixed"
            options = {"flavour": "unused"}

            def load_split(self, split):
                return [Example(f"{split}-0", "1 + 1", "2")]

            def extract(self, text, example):
                return text.strip() or None
        """
    )

    def load(text: str, module: str) -> type:
        path = tmp_path / f"{module}.py"
        path.write_text(text, encoding="utf-8")
        spec = importlib.util.spec_from_file_location(module, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, module, mod)  # as an imported plugin module is
        spec.loader.exec_module(mod)
        return mod.Fixed  # type: ignore[no-any-return]

    fixed = load(source, "fixed_a")
    base = fixed().fingerprint()
    assert base == fixed().fingerprint()
    assert fixed(data_dir=tmp_path).fingerprint() != base
    assert fixed(flavour="x").fingerprint() != base
    assert type("Bumped", (fixed,), {"version": "2"})().fingerprint() != base
    changed = load(source + "\n# scoring changed\n", "fixed_b")
    assert changed().fingerprint() != base
