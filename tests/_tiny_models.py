"""Tiny random models of each supported architecture, built from configs (never downloaded), with a
tiny word-level tokenizer; saved with ``save_pretrained`` so tests load them back by path.

Every model: hidden 64, 4 query heads, 2 key/value heads where the architecture has grouped-query
attention (GPT-2 and GPT-NeoX have none: 4), head dim 16, 2 layers.

Also :func:`tiny_llama`, the one builder of bare Llama models of a named size (:data:`LLAMA_SIZES`)
used by ``tests/mechanisms`` and by the benchmark scripts (``benchmarks/bench_*.py`` put the
repository root on ``sys.path`` to import it; the ``forgetting`` package never imports ``tests``).
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = "the cat dog sat on a mat and ran to red blue green house tree".split()
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS, EXPERTS = 64, 4, 2, 16, 2, 4
ARCHITECTURES = ("llama", "qwen2", "mistral", "mixtral", "llama4_text", "gpt2", "gpt_neox")


def tiny_tokenizer(with_pad: bool = True):
    """A WordLevel tokenizer over :data:`WORDS` wrapped in ``PreTrainedTokenizerFast`` (20 tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]",
        pad_token="[PAD]" if with_pad else None,
    )


def tiny_config(arch: str, vocab_size: int = len(SPECIALS) + len(WORDS)):
    """The transformers config of the tiny ``arch`` model (``arch`` is a ``model_type``)."""
    import transformers as tf

    ids = dict(bos_token_id=2, eos_token_id=3, pad_token_id=0)
    llama_like = dict(
        vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS, intermediate_size=96, max_position_embeddings=64, **ids,
    )
    if arch == "llama":
        return tf.LlamaConfig(head_dim=HEAD_DIM, **llama_like)
    if arch == "qwen2":  # Qwen2Config has no head_dim: hidden // heads
        return tf.Qwen2Config(**llama_like)
    if arch == "mistral":
        return tf.MistralConfig(head_dim=HEAD_DIM, **llama_like)
    if arch == "mixtral":
        return tf.MixtralConfig(num_local_experts=EXPERTS, num_experts_per_tok=2, **llama_like)
    if arch == "llama4_text":  # head_dim must be given: Llama 4's default is 128 whatever the hidden size
        return tf.Llama4TextConfig(
            head_dim=HEAD_DIM, num_local_experts=EXPERTS, num_experts_per_tok=1, intermediate_size_mlp=128,
            interleave_moe_layer_step=2, use_qk_norm=True, attention_chunk_size=64, tie_word_embeddings=False,
            **llama_like,
        )
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=vocab_size, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=64, **ids)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            intermediate_size=96, max_position_embeddings=64, **ids,
        )
    raise ValueError(f"no tiny config for {arch!r}")


def build_tiny(arch: str, seed: int = 0):
    """A randomly initialised tiny model (eager attention, eval mode)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation="eager")
    with torch.no_grad():  # some architectures initialise biases/norms to constants; make every weight distinct
        for p in model.parameters():
            if p.dim() >= 2 and not p.abs().sum():
                p.normal_(0.0, 0.02)
    return model.eval()


def save_tiny(arch: str, folder: Path, seed: int = 0, with_pad: bool = True) -> Path:
    """Build the tiny ``arch`` model and save it with its tokenizer into ``folder``; returns ``folder``."""
    build_tiny(arch, seed).save_pretrained(folder)
    tiny_tokenizer(with_pad=with_pad).save_pretrained(folder)
    return folder


def sample_ids(batch: int = 2, length: int = 7, seed: int = 0) -> torch.Tensor:
    """Random input ids ``(batch, length)`` over the ordinary words."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(len(SPECIALS), len(SPECIALS) + len(WORDS), (batch, length), generator=g)


#: Sizes of :func:`tiny_llama` (``LlamaConfig`` keyword arguments; no special token ids, so no embedding
#: row is zeroed as a padding row). ``"test"``: 2 layers, hidden 16, head dim 4 (the landscape tests:
#: dense Hessian blocks stay small); ``"bench"``: 4 layers, hidden 128, head dim 16, 667,776 parameters
#: (the benchmarks, benchmarks/README.md).
LLAMA_SIZES: dict[str, dict[str, int]] = {
    "test": dict(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32,
    ),
    "bench": dict(
        vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=64,
    ),
}


def tiny_llama(size: str = "test", seed: int = 0):
    """``LlamaForCausalLM(LlamaConfig(**LLAMA_SIZES[size]))`` in eval mode with eager attention, float32,
    initialised after ``torch.manual_seed(seed)`` (the global generator: callers that draw from it
    afterwards, e.g. random ids, get the same numbers for the same seed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if size not in LLAMA_SIZES:
        raise ValueError(f"size: expected one of {sorted(LLAMA_SIZES)}, got {size!r}")
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**LLAMA_SIZES[size], attn_implementation="eager")).eval()
