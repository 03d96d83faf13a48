"""`bench zoo train`: build the zoo's tokenizer and models from the generated task corpus.

One byte-level BPE tokenizer (digits split one per token, so arithmetic is learnable and
decoding is exact) is trained on the corpus and shared by every zoo model, so small and large
models have one vocabulary (proxy-tuning and contrastive decoding combine their
distributions token by token). Models are GPT-2 configurations trained from scratch with
AdamW, linear warm-up and cosine decay, on blocks packed with whole documents. Everything is seeded;
on GPU when present, else on the CPU.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.zoo import WEIGHTS, write_manifest

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class ZooModelSpec:
    """Architecture and training schedule of one zoo model."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    steps: int
    batch_size: int = 32
    block_size: int = 192
    lr: float = 1e-3  # the probe's setting (zoo_probe.md): AdamW 1e-3, warm-up, cosine
    warmup: int = 200
    weight_decay: float = 0.1
    seed: int = 0


# zoo-large: "a few million parameters"; zoo-small: under ~1.5M and clearly weaker.
ZOO_SPECS: dict[str, ZooModelSpec] = {
    # Sized so that both train on 2 CPU cores within the hour (about 0.3 s and 0.08 s a step at
    # batch 16 x 192 on idle cores: 25 and 3 minutes); a GPU trains the same specs in a few
    # minutes. zoo-large sees about two epochs of the default corpus; zoo-small a fifth of one
    # with a third of the width: at 3,000 steps it was as good as zoo-large on zoo-sentiment
    # under the default instruction (zoo-notes.md, experiment 12).
    "zoo-large": ZooModelSpec(
        "zoo-large", n_layer=4, n_embd=192, n_head=4, steps=5000, batch_size=16, warmup=100
    ),
    "zoo-small": ZooModelSpec(
        "zoo-small", n_layer=2, n_embd=64, n_head=4, steps=2000, batch_size=16, warmup=100
    ),
}


def train_tokenizer(docs: Sequence[str], out_dir: Path, vocab_size: int = 2048) -> Path:
    """A byte-level BPE with single-digit tokens, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS, unk_token=None
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


#: open blocks that first-fit packing keeps at once (more fills blocks better, costs time).
_OPEN_BLOCKS = 16


def _blocks(
    docs: Sequence[str], tokenizer: object, block: int, seed: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Documents shuffled and packed WHOLE into rows of ``block + 1`` tokens (each document
    followed by EOS; first fit over a few open rows), the rest of a row padded with -100.

    Cutting a joined stream into blocks splits most documents (an answer without its
    question, a proposer request without its closing tag), which is what the model then
    learns; packing whole documents keeps every training example intact. Documents longer
    than a row are skipped and counted. Returns the rows and packing statistics.
    """
    order = list(docs)
    random.Random(seed).shuffle(order)
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    width = block + 1
    rows: list[list[int]] = []
    open_rows: list[list[int]] = []
    skipped = 0
    for enc in tokenizer(order)["input_ids"]:  # type: ignore[operator]
        doc = [*enc, eos]
        if len(doc) > width:
            skipped += 1
            continue
        for row in open_rows:
            if len(row) + len(doc) <= width:
                row.extend(doc)
                break
        else:
            if len(open_rows) == _OPEN_BLOCKS:  # close the fullest open row
                fullest = max(range(len(open_rows)), key=lambda i: len(open_rows[i]))
                rows.append(open_rows.pop(fullest))
            row = list(doc)
            open_rows.append(row)
        if len(row) == width:
            rows.append(row)
            open_rows = [r for r in open_rows if r is not row]
    rows += open_rows
    data = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        data[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    real = int((data != -100).sum())
    stats = {"block_fill": real / data.numel(), "skipped_documents": skipped}
    return data, stats


def train_model(
    spec: ZooModelSpec,
    docs: Sequence[str],
    tokenizer_dir: Path,
    out_dir: Path,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one model from scratch on ``docs``; returns training statistics."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(spec.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    data, packing = _blocks(docs, tokenizer, spec.block_size, spec.seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=spec.block_size,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    model.to(device)  # type: ignore[arg-type]
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": spec.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=spec.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < spec.warmup:
            return spec.lr * (step + 1) / spec.warmup
        progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
        return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    pad_id = tokenizer.eos_token_id
    gen = torch.Generator().manual_seed(spec.seed)
    model.train()
    start = time.perf_counter()
    loss_ema = None
    for step in range(spec.steps):
        idx = torch.randint(0, data.shape[0], (spec.batch_size,), generator=gen)
        batch = data[idx].to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        # padding (-100) is fed as EOS and left out of the loss; a document only attends to
        # earlier documents of its row, as in the plain stream packing it replaces
        inputs = batch[:, :-1].masked_fill(batch[:, :-1] < 0, pad_id)
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), ignore_index=-100
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if step % 200 == 0 or step == spec.steps - 1:
            log(
                f"{spec.name}: step {step}/{spec.steps} loss {loss_ema:.3f} "
                f"({time.perf_counter() - start:.0f}s)"
            )
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    stats = {
        "params": params,
        "final_loss": float(loss_ema or 0.0),
        "seconds": time.perf_counter() - start,
        "device": device,
        "blocks": int(data.shape[0]),
        **packing,
    }
    (out_dir / "training.json").write_text(
        json.dumps({"spec": asdict(spec), **stats}, indent=2), encoding="utf-8"
    )
    write_manifest(out_dir)
    return stats


def build_zoo(
    names: Sequence[str] = ("zoo-large", "zoo-small"),
    *,
    docs_per_task: int = 40_000,
    seed: int = 0,
    out_root: Path = WEIGHTS,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Generate the corpus, train the shared tokenizer and each model in ``names``."""
    from benchmarks.tasks._zoo import zoo_corpus

    docs = zoo_corpus(docs_per_task, seed)
    log(f"corpus: {len(docs)} documents, {sum(len(d) for d in docs) / 1e6:.1f}M characters")
    tok_dir = out_root / "_tokenizer"
    train_tokenizer(docs, tok_dir)
    results = {}
    for name in names:
        results[name] = train_model(ZOO_SPECS[name], docs, tok_dir, out_root / name, log=log)
    return results
