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


def test_tiny_llama_is_deterministic_with_a_chat_template(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from benchmarks.tiny import IM_END, IM_START, build_tiny_llama

    a = build_tiny_llama(tmp_path / "a", seed=0)
    b = build_tiny_llama(tmp_path / "b", seed=0)
    c = build_tiny_llama(tmp_path / "c", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    config = AutoConfig.from_pretrained(a)
    assert config.model_type == "llama" and config.tie_word_embeddings
    assert config.num_hidden_layers == 2 and config.num_key_value_heads < config.num_attention_heads
    tokenizer = AutoTokenizer.from_pretrained(a)
    assert (tokenizer.bos_token, tokenizer.eos_token) == (IM_START, IM_END)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 7?"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith(f"{IM_START}user\nWhat is 12 + 7?{IM_END}\n{IM_START}assistant\n")
    ids = tokenizer(text)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_START)) == 3  # whole special tokens
    assert tokenizer.decode(ids) == text
