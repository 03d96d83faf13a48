"""The zoo trainer: documents packed whole into training rows, a tiny model trained end to end
(tokenizer, weights, manifest, statistics)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.zoo import verify_manifest
from benchmarks.zoo.train import EOS, ZooModelSpec, _blocks, train_model, train_tokenizer

DOCS = [
    f"Q: What is {a} plus {b} ?\nA: {a} + {b} = {a + b} . #### {a + b}"
    for a in range(12)
    for b in range(12)
] + ["word " * 400]  # one document longer than a row


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(DOCS, tmp_path_factory.mktemp("tok"), vocab_size=300)


def test_documents_are_packed_whole(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    rows, stats = _blocks(DOCS, tok, block=63, seed=0)
    assert rows.shape[1] == 64
    assert stats["skipped_documents"] == 1  # the long one
    eos = tok.eos_token_id
    found = []
    for row in rows.tolist():
        real = [t for t in row if t != -100]
        assert row[: len(real)] == real  # padding only at the end
        assert real and real[-1] == eos  # a row ends with a whole document
        text = tok.decode(real)
        found += [d for d in text.split(EOS) if d]
    assert sorted(found) == sorted(DOCS[:-1])  # every fitting document once, none cut
    assert stats["block_fill"] == pytest.approx(float((rows != -100).float().mean()))
    assert stats["block_fill"] > 0.8
    again, _ = _blocks(DOCS, tok, block=63, seed=0)
    assert torch.equal(rows, again)  # seeded


def test_train_model_end_to_end(tokenizer_dir: Path, tmp_path: Path) -> None:
    spec = ZooModelSpec("tiny", n_layer=1, n_embd=16, n_head=2, steps=3, batch_size=4, warmup=1)
    stats = train_model(spec, DOCS, tokenizer_dir, tmp_path / "tiny", log=lambda _: None)
    saved = json.loads((tmp_path / "tiny" / "training.json").read_text())
    assert saved["spec"]["name"] == "tiny" and saved["skipped_documents"] == 1
    assert stats["params"] > 0 and stats["final_loss"] > 0 and 0 < stats["block_fill"] <= 1
    verify_manifest(tmp_path / "tiny")
