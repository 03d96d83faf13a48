"""Tasks: a loader, a prompt template, an answer extractor and a metric, registered by name.

Adding a task touches one file: a `Task` subclass in `benchmarks/tasks/` decorated with
``@register_task("name")`` (plugins outside the tree use the entry-point group
``blackbox_bench.tasks``). Files are read through Hugging Face `datasets` (local json, jsonl,
csv and tsv always; hub names when online), with malformed rows reported by file and line.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar, Literal

from benchmarks.backends.base import PROMPT_FORMATS
from methods.base import Example, TaskKind
from methods.registry import BenchError, Registry

Split = Literal["train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("train", "dev", "test")

#: where real data files are looked for when no ``data_dir`` is given: $BENCH_DATA_DIR, then
#: ./data, then ../shared/data (the layout of the project's reference data).
DATA_DIR_ENV = "BENCH_DATA_DIR"


class DataError(BenchError):
    """A data file that is missing or malformed; the message names the file (and line)."""


def default_data_dirs() -> list[Path]:
    dirs = []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]))
    dirs += [Path("data"), Path("..") / "shared" / "data"]
    return dirs


#: the prefix of fingerprints that cover a task's version, code and data location; older
#: records' fingerprints (without it) covered only its examples and prompt limits.
FINGERPRINT_SCHEME = "t2-"


class Task(ABC):
    """Base class of tasks. Subclasses set the class attributes and implement `load_split`.

    The default template is ``{instruction}\\n\\n`` then, per demonstration,
    ``Q: {input}\\nA: {target text}\\n\\n``, then ``Q: {input}\\nA:``.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[TaskKind] = "generation"
    labels: ClassVar[tuple[str, ...] | None] = None
    instructions: ClassVar[tuple[str, ...]] = ()
    #: answer length and stop sequences of the raw (completion) prompt format; an instance
    #: holds those of its own format (see `chat_max_tokens`).
    max_tokens: int = 256
    stop: tuple[str, ...] = ("\n\nQ:", "\nQ:")
    #: the same under a chat template (None: as raw). Instruct models answer in a sentence
    #: ("The sentiment of the review is positive."), which raw limits made for bare answers cut.
    chat_max_tokens: ClassVar[int | None] = None
    chat_stop: ClassVar[tuple[str, ...] | None] = None
    #: the options the task takes (``--task-option TASK.KEY=VALUE``): name -> one-line
    #: description; any other key is refused.
    options: ClassVar[Mapping[str, str]] = {}
    #: short description for `bench ls tasks`.
    description: ClassVar[str] = ""
    #: bumped when the task changes meaning without its code or data showing it (hashed).
    version: ClassVar[str] = "1"
    input_prefix: ClassVar[str] = "Q: "
    output_prefix: ClassVar[str] = "A:"

    def __init__(
        self, data_dir: Path | str | None = None, *, prompt_format: str = "raw", **options: Any
    ):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = f"valid: {', '.join(self.options)}" if self.options else "it takes no options"
            raise BenchError(f"task {self.name}: unknown option {unknown[0]!r}; {valid}")
        if prompt_format not in PROMPT_FORMATS:
            raise BenchError(
                f"task {self.name}: unknown prompt format {prompt_format!r}; "
                f"valid: {', '.join(PROMPT_FORMATS)}"
            )
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.option_values: dict[str, Any] = dict(options)
        self.prompt_format = prompt_format
        if prompt_format == "chat":
            if self.chat_max_tokens is not None:
                self.max_tokens = self.chat_max_tokens
            if self.chat_stop is not None:
                self.stop = self.chat_stop
        self._cache: dict[str, list[Example]] = {}
        self._fingerprint: str | None = None

    # -- data ---------------------------------------------------------------------------

    @abstractmethod
    def load_split(self, split: Split) -> list[Example]:
        """All examples of ``split`` ("train", "dev" or "test"), in a fixed order."""

    def examples(self, split: Split) -> list[Example]:
        """`load_split`, memoised."""
        if split not in SPLITS:
            raise BenchError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if split not in self._cache:
            self._cache[split] = self.load_split(split)
        return self._cache[split]

    def find_file(self, *relative: str) -> Path:
        """The first existing ``data_dir/relative`` (or in the default data dirs)."""
        roots = [self.data_dir] if self.data_dir is not None else default_data_dirs()
        for root in roots:
            path = root.joinpath(*relative)
            if path.exists():
                return path
        where = ", ".join(str(r) for r in roots)
        raise DataError(
            f"task {self.name}: data file {'/'.join(relative)} not found under {where}; "
            f"pass --data-dir or set ${DATA_DIR_ENV}"
        )

    def load_rows(
        self,
        relative: Sequence[str],
        *,
        required: Iterable[str] = (),
        hub: HubSource | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """Rows of the local file ``data_dir/relative`` when it exists; otherwise, when the
        task names a ``hub`` dataset with the same columns, of that dataset through
        `datasets.load_dataset` (needs the network, or the dataset in the local HF cache).
        Returns the rows and where they came from, for error messages."""
        try:
            path = self.find_file(*relative)
        except DataError as missing:
            if hub is None:
                raise
            return _hub_rows(hub, required, missing), hub.describe()
        return read_rows(path, required=required), str(path)

    def fingerprint(self) -> str:
        """A hash of the task's examples and template, for result provenance; memoised, as
        the examples are."""
        if self._fingerprint is None:
            self._fingerprint = self._hash_examples()
        return self._fingerprint

    def _hash_examples(self) -> str:
        h = hashlib.sha256()
        h.update(self.name.encode())
        # The answer limits of the prompt format decide what is scored, so they are hashed.
        limits = [self.instructions, self.labels, self.stop, self.max_tokens, self.prompt_format]
        h.update(json.dumps(limits).encode())
        # What else makes two tasks of one name unlike: their version, the code that renders,
        # extracts and scores (each class's file, plugins' included), where the data came
        # from, and the task's options.
        where = [str(self.data_dir.resolve()) if self.data_dir else None, self.option_values]
        h.update(json.dumps([self.version, where], sort_keys=True, default=str).encode())
        for cls in type(self).__mro__:
            if not issubclass(cls, Task):
                continue
            with contextlib.suppress(TypeError, OSError):
                source = inspect.getsourcefile(cls)
                if source:
                    h.update(Path(source).read_bytes())
        for split in SPLITS:
            for ex in self.examples(split):
                h.update(json.dumps(ex.to_json(), sort_keys=True, ensure_ascii=False).encode())
        return FINGERPRINT_SCHEME + h.hexdigest()[:16]

    # -- prompting ------------------------------------------------------------------------

    def format_input(self, example: Example) -> str:
        """The question part of a prompt (choices included for multiple choice)."""
        if example.choices:
            letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
            options = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(example.choices))
            return f"{example.input}\n{options}"
        return example.input

    def render_target(self, example: Example) -> str:
        return example.rationale if example.rationale else example.target

    def render(
        self, example: Example, *, instruction: str | None = None, demos: Sequence[Example] = ()
    ) -> str:
        parts = []
        if instruction:
            parts.append(instruction.strip() + "\n\n")
        for demo in demos:
            parts.append(
                f"{self.input_prefix}{self.format_input(demo)}\n"
                f"{self.output_prefix} {self.render_target(demo)}\n\n"
            )
        parts.append(f"{self.input_prefix}{self.format_input(example)}\n{self.output_prefix}")
        return "".join(parts)

    # -- scoring --------------------------------------------------------------------------

    @abstractmethod
    def extract(self, text: str, example: Example) -> str | None:
        """The answer in ``text`` normalised like ``example.target``, or None."""

    def score(self, answer: str | None, example: Example) -> float:
        return float(answer is not None and answer == example.target)


tasks: Registry[type[Task]] = Registry(
    "task", package="benchmarks.tasks", entry_point_group="blackbox_bench.tasks", name_attr="name"
)
#: class decorator: ``@register_task("name")`` registers a `Task` subclass.
register_task = tasks.register


def get_task(name: str, **kwargs: Any) -> Task:
    """An instance of the task registered as ``name``."""
    return tasks.get(name)(**kwargs)


# -- loading helpers ----------------------------------------------------------------------

_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv"}


def read_rows(path: Path, *, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Rows of a local json, jsonl, csv or tsv file through Hugging Face `datasets`.

    A malformed file raises `DataError` naming the file and the first bad line; a row
    without a ``required`` field names its line too.
    """
    fmt = _FORMATS.get(path.suffix)
    if fmt is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; valid: {', '.join(_FORMATS)}"
        )
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.read_bytes().strip():
        raise DataError(f"{path}: file is empty; expected rows of {', '.join(required) or 'data'}")
    kwargs: dict[str, Any] = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
    if fmt == "csv":
        # only an empty cell is missing: pandas would also read "NA", "null", "None" as missing
        kwargs.update(keep_default_na=False, na_values=[""])
        _check_utf8(path)
    if path.suffix == ".jsonl":
        _check_jsonl(path)
    elif path.suffix == ".json":
        _check_json(path)
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except Exception as exc:
        raise DataError(
            f"{path}: could not be read as {path.suffix[1:]} ({_first_line(exc)})"
        ) from exc
    rows = ds.to_list()
    required = list(required)
    for i, row in enumerate(rows):
        missing = [k for k in required if row.get(k) is None]
        if missing:
            # json arrays: row i is element i; jsonl: line i+1; csv/tsv: line i+2 (header).
            where = (
                f"row {i + 1}"
                if path.suffix == ".json"
                else f"line {i + (2 if fmt == 'csv' else 1)}"
            )
            raise DataError(f"{path}:{where}: missing field(s) {', '.join(missing)}")
    return rows


def _first_line(exc: BaseException) -> str:
    while exc.__cause__ is not None:  # datasets wraps the parser's error (which names the line)
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_jsonl(path: Path) -> None:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 ({exc.reason})") from exc
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}"
                )


def _check_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{lineno}: not UTF-8 ({exc.reason})") from exc


def _check_json(path: Path) -> None:
    try:
        data = json.loads(_check_utf8(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from exc
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face hub dataset split with the same columns as a task's local file."""

    path: str
    name: str | None
    split: str

    def describe(self) -> str:
        return f"hub:{self.path}" + (f"/{self.name}" if self.name else "") + f"[{self.split}]"


def _hub_rows(hub: HubSource, required: Iterable[str], missing: DataError) -> list[dict[str, Any]]:
    try:
        import datasets

        datasets.disable_progress_bars()
        ds = datasets.load_dataset(hub.path, hub.name, split=hub.split)
    except Exception as exc:
        raise DataError(
            f"{missing}; the hub fallback {hub.describe()} failed too ({_first_line(exc)})"
        ) from exc
    rows = ds.to_list()
    absent = [k for k in required if rows and k not in rows[0]]
    if absent:
        raise DataError(f"{hub.describe()}: missing field(s) {', '.join(absent)}")
    return rows


def split_holdout(
    examples: Sequence[Example], *, fraction: float, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Split ``examples`` into (rest, held-out) deterministically, for tasks without a dev file."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_hold = max(1, round(len(examples) * fraction))
    held = set(order[:n_hold])
    rest = [ex for i, ex in enumerate(examples) if i not in held]
    return rest, [examples[i] for i in sorted(held)]


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalize_number(text: str) -> str | None:
    """'1,234' -> '1234', '3.50' -> '3.5', '-2' -> '-2'; None when not a number. Exact for
    integers of any size and for decimals (parsed as `Decimal`, never through a float)."""
    text = text.strip().replace(",", "").rstrip(".")
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if not value.is_finite() or abs(value.adjusted()) > 1000:  # no answer has 1000 digits
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_final_number(text: str, marker: str = "####") -> str | None:
    """The number after the last ``marker``, else the last number in ``text`` (the GSM8K
    convention of BBox-Adapter's metric: regex after '#### ', falling back to the last number)."""
    if marker in text:
        tail = text.rsplit(marker, 1)[1]
        match = _NUMBER.search(tail)
        if match:
            return normalize_number(match.group())
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def stable_shuffle(items: Sequence[Any], key: str) -> list[Any]:
    """``items`` shuffled by a seed derived from ``key`` (same order on every machine)."""
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:16], 16)
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def rows_to_examples(
    rows: Iterable[Mapping[str, Any]], build: Callable[[int, Mapping[str, Any]], Example]
) -> list[Example]:
    return [build(i, row) for i, row in enumerate(rows)]
