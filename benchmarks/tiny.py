"""A tiny, randomly initialised causal LM built offline, for tests and smoke runs.

`build_tiny_model` trains a BPE tokenizer on a built-in corpus (words, digits,
``####``, ``yes``/``no``, ``Q:``/``A:``, punctuation) and pairs it with a two-layer GPT-2 whose
weights come from a seeded random init; both are written with ``save_pretrained``
(safetensors), so every loader that reads a Hugging Face directory reads this one. Nothing is
downloaded. The model says nothing sensible, but it is a real transformer: generation,
logprobs, scoring, soft prompts and batching all run through the same code as a real model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: bump when the builder's output changes, so cached copies are rebuilt.
TINY_VERSION = 1
EOS = "<|endoftext|>"
UNK = "<unk>"

_WORDS = """
the a an of to in and or is are was were be it this that what which who how many much
yes no true false not answer question step first then so therefore total each more less
sum difference product number numbers add plus minus times divided equals left right
cat dog bird fish tree sky sun moon water fire cold hot blue red green big small good bad
apple apples orange oranges book books pen pens box boxes has have had buys sells gives
Tom Mary Sam Ann John Alice Bob day days week weeks hour hours dollar dollars price cost
positive negative neutral review movie film great terrible loved hated boring fun sentence
Let's think by step-by-step Therefore The answer Question Answer Instruction Input Output
"""

_TEMPLATES = (
    "Q: {a} {w1} has {b} {w2}. How many {w2} in total? A: {a} + {b} = {c}. #### {c}",
    "Q: Is the {w1} {w2}? A: yes",
    "Q: Is the {w1} {w2}? A: no",
    "Question: What is {a} times {b}?\nAnswer: {a} * {b} = {p}. The answer is {p}.",
    "Review: the {w1} was {w2}!\nSentiment: positive",
    "Review: the {w1} was {w2}...\nSentiment: negative",
    "Instruction: Answer the question; think step by step.\nInput: {w1}, {w2} ({a}/{b})\n"
    "Output: {c}",
)


def tiny_corpus() -> list[str]:
    """The built-in training text for the tokenizer (deterministic)."""
    words = _WORDS.split()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    for i in range(120):
        a, b = (7 * i) % 50, (13 * i + 3) % 40
        w1, w2 = words[(5 * i) % len(words)], words[(11 * i + 1) % len(words)]
        template = _TEMPLATES[i % len(_TEMPLATES)]
        lines.append(template.format(a=a, b=b, c=a + b, p=a * b, w1=w1, w2=w2))
    lines.append("0 1 2 3 4 5 6 7 8 9 10 100 1000 . , ; : ! ? ' \" ( ) [ ] { } - + * / = % $ # @ &")
    return lines


def build_tiny_model(
    directory: Path,
    *,
    seed: int = 0,
    vocab_size: int = 400,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 256,
    initializer_range: float = 0.1,
) -> Path:
    """Build the tiny model and tokenizer into ``directory`` and return it.

    Args:
        directory: where to write (created; existing files are overwritten).
        seed: seeds the weight init; the same seed gives the same weights.
        vocab_size: the tokenizer's target size (the 256 byte symbols, merges, and EOS).
        n_layer: transformer blocks.
        n_embd: hidden width.
        n_head: attention heads.
        n_positions: the context window.
        initializer_range: std of the random init; larger than GPT-2's 0.02 so the
            next-token distributions are peaked rather than nearly uniform, which makes greedy
            decoding stable across batch layouts.

    Returns:
        ``directory``.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_tokenizer(vocab_size, n_positions)
    eos_id = int(tokenizer.convert_tokens_to_ids(EOS))  # type: ignore[arg-type]

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        initializer_range=initializer_range,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    # Seed a private generator state: the caller's global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    model.eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


IM_START, IM_END = "<|im_start|>", "<|im_end|>"
#: SmolLM2-Instruct's chat template (ChatML with a default system turn).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tiny_llama(
    directory: Path,
    *,
    seed: int = 0,
    vocab_size: int = 400,
    num_hidden_layers: int = 2,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 256,
    initializer_range: float = 0.1,
) -> Path:
    """A tiny Llama-architecture chat model (SmolLM2's layout) built into ``directory``.

    The tokenizer is `build_tiny_model`'s, plus the ChatML tokens ``<|im_start|>`` (BOS) and
    ``<|im_end|>`` (EOS and pad) and SmolLM2's chat template; the model is a seeded random
    `LlamaForCausalLM` with tied embeddings and grouped-query attention (fewer key/value
    heads than query heads, as SmolLM2 has). The same seed gives the same bytes.

    Returns:
        ``directory``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_tokenizer(
        vocab_size,
        max_position_embeddings,
        extra_special=(IM_START, IM_END),
        bos=IM_START,
        eos=IM_END,
        chat_template=CHATML_TEMPLATE,
    )
    ids = {t: int(tokenizer.convert_tokens_to_ids(t)) for t in (IM_START, IM_END)}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=hidden_size // num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=ids[IM_START],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[IM_END],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _tiny_tokenizer(
    vocab_size: int,
    n_positions: int,
    *,
    extra_special: tuple[str, ...] = (),
    bos: str = EOS,
    eos: str = EOS,
    chat_template: str | None = None,
) -> Any:
    """The tiny byte-level BPE tokenizer, trained on `tiny_corpus` (deterministic).

    Byte-level BPE over printable ASCII only: decoding round-trips exactly (stop strings and
    echo offsets rely on it), and a random model cannot emit half a UTF-8 character or a
    control byte. Other characters encode as <unk>. Digits split one per token.
    ``extra_special`` tokens take the ids right after EOS and UNK.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    byte_chars = _byte_level_chars()
    alphabet = [byte_chars[b] for b in (*range(32, 127), ord("\n"), ord("\t"))]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, UNK, *extra_special],
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer)
    options: dict[str, Any] = {}
    if extra_special:
        options["additional_special_tokens"] = list(extra_special)
    if chat_template is not None:
        options["chat_template"] = chat_template
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        bos_token=bos,
        pad_token=eos,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=n_positions,
        **options,
    )


def _byte_level_chars() -> dict[int, str]:
    """GPT-2's byte-to-character map, which the ByteLevel pre-tokenizer applies."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in printable]
    return {
        **{b: chr(b) for b in printable},
        **{b: chr(256 + i) for i, b in enumerate(extra)},
    }


def tiny_model_dir(root: Path | None = None, *, seed: int = 0) -> Path:
    """The tiny model built once into a cache directory, reused on later calls.

    Args:
        root: the cache folder; default ``$BENCH_TINY_DIR`` or the system temp folder.
        seed: the init seed (each seed has its own directory).

    Returns:
        The model directory (``<root>/tiny-gpt2-v<version>-s<seed>``).
    """
    base = Path(root or os.environ.get("BENCH_TINY_DIR") or tempfile.gettempdir())
    target = base / f"tiny-gpt2-v{TINY_VERSION}-s{seed}"
    if (target / "model.safetensors").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent builders (test workers) never see a
    # half-written directory, and the loser of the race just discards its copy.
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=base))
    try:
        build_tiny_model(scratch, seed=seed)
        try:
            scratch.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


@contextlib.contextmanager
def torch_threads(count: int = 1) -> Iterator[None]:
    """Run torch on ``count`` CPU threads inside the block. A model this small runs fastest on
    one: more threads only add synchronisation, and stall badly on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
