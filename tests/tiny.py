"""Tiny random full-precision models of each supported family, built from configs in code (no Hub access)."""

from __future__ import annotations

import contextlib
import warnings

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 256
_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)

FAMILIES = {
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=16, tie_word_embeddings=True)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=False)),  # Qwen2 carries q/k/v biases
    "llama": (LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=True)),
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM, dict(head_dim=16, sliding_window=4, layer_types=[
        "sliding_attention", "full_attention"], final_logit_softcapping=30.0)),
}


def tiny_config(family: str, **overrides):
    config_cls, _, extra = FAMILIES[family]
    return config_cls(**{**_COMMON, **extra, **overrides})


def tiny_model(family: str, seed: int = 0, **overrides) -> PreTrainedModel:
    """A random FP model whose norms and biases are randomised too, so that no weight is a no-op."""
    torch.manual_seed(seed)
    model = FAMILIES[family][1](tiny_config(family, **overrides)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.normal_(0.5 if "norm" in name and family != "gemma3" else 0.0, 0.2)
    return model


def tokens(batch: int = 2, length: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def tiny_tokenizer():
    """A character-level tokenizer over printable ASCII that fits the tiny models' vocabulary (ids < VOCAB)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + [chr(c) for c in range(32, 127)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


@contextlib.contextmanager
def kernel(name: str):
    """Run packed linears with kernel ``name`` inside the block, then restore the process's choice."""
    from bitnet_hf.models import kernels

    previous = kernels.active_kernel()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # forcing a kernel that cannot run here must not pass silently
            assert kernels.select_kernel(name) == name
        yield
    finally:
        kernels._state["kernel"] = previous


# A minimal chat template (system / user turns, then the assistant's) for the character-level tokenizer, which
# has no newline in its vocabulary.
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}|{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")


def tiny_chat_tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tiny_checkpoint(path, family: str = "llama"):
    """A tiny ``family`` model with the character-level tokenizer, saved to ``path`` (a convertible checkpoint that
    can read calibration text); returns ``path``."""
    tiny_model(family).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
