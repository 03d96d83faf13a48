"""The tiny test model: offline, deterministic, quick, and a real tokenizer + causal LM."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from benchmarks.tiny import EOS, UNK, build_tiny_model, tiny_model_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "a", seed=0)


def test_build_is_quick_and_deterministic(built: Path, tmp_path: Path) -> None:
    start = time.perf_counter()
    again = build_tiny_model(tmp_path / "b", seed=0)
    assert time.perf_counter() - start < 5.0
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (built / name).read_bytes(), name
    other = build_tiny_model(tmp_path / "c", seed=1)
    assert (other / "model.safetensors").read_bytes() != (built / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (built / "tokenizer.json").read_bytes()


def test_loads_offline_as_a_causal_lm(built: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(built, local_files_only=True)
    assert 300 <= len(tokenizer) <= 400
    assert tokenizer.eos_token == EOS and tokenizer.unk_token == UNK
    assert model.config.n_layer == 2 and model.config.vocab_size == len(tokenizer)
    text = "Q: Tom has 12 apples. A: 12 + 7 = 19. #### 19\nyes no!"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text
    assert [tokenizer.decode([i]) for i in tokenizer("123")["input_ids"]] == ["1", "2", "3"]
    assert " ####" in tokenizer.get_vocab() or "Ġ####" in tokenizer.get_vocab()
    # Characters outside the alphabet become <unk> instead of failing.
    assert tokenizer.unk_token_id in tokenizer("café")["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer))


def test_cached_dir_is_built_once(tmp_path: Path) -> None:
    first = tiny_model_dir(tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_dir(tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no scratch left behind
    assert tiny_model_dir(tmp_path, seed=1) != first
