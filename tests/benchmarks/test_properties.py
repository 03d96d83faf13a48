"""Property-based tests (hypothesis) of the parts that see arbitrary text: the answer
extractors, the command-line and config-file parsers, and the cache keys."""

from __future__ import annotations

import argparse
import json
import math
import random
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from benchmarks.backends.openai_backend import OpenAIBackend
from benchmarks.cache import cache_key, canonical_json
from benchmarks.cli import _RUN_KEYS, _assignment, build_parser, parse_value, run_config_from_args
from benchmarks.tasks._common import LETTERS, extract_choice, first_label_word
from benchmarks.tasks.base import extract_final_number, normalize_number
from methods.registry import BenchError

# No example database: nothing is written into the tree, and runs stay reproducible.
FEW = settings(max_examples=60, deadline=None, database=None)
MANY = settings(max_examples=200, deadline=None, database=None)

#: text with no digits (of any script) and none of the characters numbers are made of.
NO_DIGITS = st.text(
    alphabet=st.characters(blacklist_categories=["Nd"], blacklist_characters="#-.,"),
    max_size=40,
)
#: integers of 40 digits: normalize_number parses Decimal, so no float rounding.
EXACT_INTS = st.integers(min_value=-(10**40), max_value=10**40)

# -- answer extractors ---------------------------------------------------------------------------


@MANY
@given(st.text())
def test_extract_final_number_never_raises_and_is_canonical(text: str) -> None:
    answer = extract_final_number(text)
    assert answer is None or normalize_number(answer) == answer


@MANY
@given(EXACT_INTS, NO_DIGITS, NO_DIGITS)
def test_the_number_after_the_marker_wins(n: int, before: str, after: str) -> None:
    assert extract_final_number(f"{before} 99 #### {n}{after}") == str(n)
    assert extract_final_number(f"{before} #### {n:,}") == str(n)  # thousands separators
    assert extract_final_number(f"{before} {n} {after}") == str(n)  # fallback: last number
    assert extract_final_number(before) is None


@MANY
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12))
def test_normalize_number_round_trips_floats(x: float) -> None:
    text = normalize_number(repr(x))
    assert text is not None and float(text) == x and normalize_number(text) == text


#: choice texts that are not letters or "the answer is" words (those are letter forms).
CHOICE = (
    st.text(alphabet="klmnopqrsuvwxyz ", min_size=3, max_size=12)
    .map(str.strip)
    .filter(lambda c: len(c) >= 3)
)


@MANY
@given(st.text(), st.lists(st.text(), max_size=8))
def test_extract_choice_never_raises_and_stays_in_range(text: str, choices: list[str]) -> None:
    answer = extract_choice(text, choices)
    assert answer is None or LETTERS.index(answer) < len(choices)


@MANY
@given(st.lists(CHOICE, min_size=2, max_size=6, unique_by=lambda c: " ".join(c.split())), st.data())
def test_extract_choice_reads_letters_and_choice_texts(choices: list[str], data: Any) -> None:
    i = data.draw(st.integers(0, len(choices) - 1))
    letter = LETTERS[i]
    for form in ("{L}", "({L})", "{L}.", "{L}) because", "Answer: {L}", "The answer is ({L})."):
        assert extract_choice(form.format(L=letter), choices) == letter, form
    assert extract_choice(choices[i], choices) == letter
    assert extract_choice(f"{choices[i]}, since it fits", choices) == letter
    beyond = LETTERS[len(choices)]
    assert extract_choice(f"({beyond})", choices) is None  # a letter past the last choice


WORD = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8)


@MANY
@given(st.dictionaries(WORD, st.sampled_from(["positive", "negative"]), min_size=1), st.data())
def test_first_label_word_takes_the_first_label_word(words: dict[str, str], data: Any) -> None:
    fillers = data.draw(st.lists(WORD.filter(lambda w: w not in words), max_size=5))
    key = data.draw(st.sampled_from(sorted(words)))
    text = " ".join([*fillers, key.upper(), *sorted(words)])
    assert first_label_word(text, words) == words[key]
    assert first_label_word(" ".join(fillers), words) is None
    assert first_label_word(data.draw(st.text()), words) in (None, *words.values())


# -- command-line values and config files ----------------------------------------------------------

NAME = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)
KEY = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)
PLAIN = st.text(alphabet=string.ascii_letters + " _/:-", min_size=1, max_size=20).filter(
    lambda s: parse_value(s) == s and s.strip().lower() not in ("true", "false", "null", "~")
)


@MANY
@given(
    NAME,
    KEY,
    st.one_of(
        st.integers(),
        st.floats(allow_nan=False),
        st.booleans(),
        st.none(),
        PLAIN,
        st.lists(st.integers(), max_size=4),
    ),
)
def test_set_assignments_round_trip(name: str, key: str, value: Any) -> None:
    if isinstance(value, bool):
        raw = str(value).lower()
    elif value is None:
        raw = "null"
    elif isinstance(value, float):
        raw = repr(value)
    elif isinstance(value, list):
        raw = json.dumps(value)
    else:
        raw = str(value)
    got = _assignment(f"{name}.{key}={raw}")
    assert got[:2] == (name, key)
    assert got[2] == value and type(got[2]) is type(value)


@MANY
@given(st.text())
def test_set_assignment_is_a_triple_or_a_clear_error(text: str) -> None:
    try:
        name, key, _ = _assignment(text)
    except argparse.ArgumentTypeError as exc:
        assert "expected NAME.KEY=VALUE" in str(exc)
    else:
        assert name and key and "=" not in name + key


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(FEW, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(sorted(_RUN_KEYS)), JSONISH, max_size=5))
def test_config_files_give_a_config_or_one_bench_error(tmp_path: Path, values: dict) -> None:  # type: ignore[type-arg]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    args = build_parser().parse_args(["run", "--config", str(path)])
    try:
        config, _ = run_config_from_args(args)
    except BenchError as exc:
        assert "\n" not in str(exc)
    else:
        assert config.methods and config.tasks and all(isinstance(s, int) for s in config.seeds)
        assert config.limit is None or (isinstance(config.limit, int) and config.limit >= 1)


# -- cache keys ------------------------------------------------------------------------------------

SCALAR = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False)
)
REQUEST = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        SCALAR,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=6,
    ),
    min_size=1,
    max_size=5,
)


def _shuffled(obj: Any, rng: random.Random) -> Any:
    if isinstance(obj, dict):
        items = list(obj.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(obj, list):
        return [_shuffled(v, rng) for v in obj]
    return obj


@FEW
@given(REQUEST, st.integers(0, 2**32))
def test_cache_keys_ignore_key_order(request: dict[str, Any], seed: int) -> None:
    assert cache_key(_shuffled(request, random.Random(seed))) == cache_key(request)


@FEW
@given(REQUEST, REQUEST)
def test_different_requests_have_different_keys(a: dict[str, Any], b: dict[str, Any]) -> None:
    assume(canonical_json(a) != canonical_json(b))
    assert cache_key(a) != cache_key(b)


@FEW
@given(REQUEST, st.integers(0, 50))
def test_each_sample_index_is_its_own_entry(request: dict[str, Any], sample: int) -> None:
    assert cache_key({**request, "sample": sample}) != cache_key({**request, "sample": sample + 1})


SECRET = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=12, max_size=60)


@FEW
@given(SECRET, SECRET, st.integers(1, 65535))
def test_keys_and_urls_never_enter_cache_keys(key_a: str, key_b: str, port: int) -> None:
    env = {"KEY_A": key_a, "KEY_B": key_b}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        a = OpenAIBackend("m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env="KEY_A")
        b = OpenAIBackend("m", base_url=f"https://u:{key_b}@example.com/v1", api_key_env="KEY_B")
        request = {"kind": "generate", "prompt": "p", "sample": 0}
        key = cache_key({**request, "backend": a.identity()})
        assert key == cache_key({**request, "backend": b.identity()})
        text = canonical_json({**request, "backend": b.identity()})
        assert key_a not in text and key_b not in text
        assert a.secret_values() == [key_a]


def test_nan_never_makes_a_cache_key() -> None:
    with pytest.raises(ValueError):
        cache_key({"temperature": math.nan})
