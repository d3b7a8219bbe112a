"""Tiny seeded models (llama, gemma3, gpt2 families) and a byte-level tokenizer, built offline for tests."""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import GPT2Config, Gemma3TextConfig, LlamaConfig, PreTrainedTokenizerFast
from transformers import AutoModelForCausalLM

from .registry import BuiltinModel, register_model

SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SEED = 0


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + 5 specials) that adds a BOS token; needs no files."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(SPECIALS)
    bos_id = tk.token_to_id("<|bos|>")
    tk.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos_id)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


VOCAB = 256 + len(SPECIALS)


def _config(family: str):
    common: dict[str, Any] = dict(vocab_size=VOCAB, pad_token_id=256, bos_token_id=257, eos_token_id=258)
    if family == "llama":
        return LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, **common,
        )
    if family == "gemma3":
        return Gemma3TextConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            query_pre_attn_scalar=16, **common,
        )
    if family == "gpt2":
        return GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=1024, **common)
    raise ValueError(f"unknown tiny family '{family}'")


def tiny_model(family: str, seed: int = SEED, dtype: torch.dtype = torch.float32):
    """A 4-layer, d_model 64 random model of `family` ("llama", "gemma3", "gpt2"), seeded, with the byte tokenizer."""
    cfg = _config(family)
    cfg._name_or_path = f"tiny-{family}"
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    finally:
        torch.random.set_rng_state(gen_state)
    model.generation_config.pad_token_id = cfg.pad_token_id
    return model, byte_tokenizer()


for _fam in ("llama", "gemma3", "gpt2"):
    register_model(
        BuiltinModel(
            f"tiny-{_fam}",
            f"tiny random {_fam} model for tests (4 layers, d_model 64, seed {SEED}, byte tokenizer)",
            lambda dtype=torch.float32, trust_remote_code=False, _f=_fam: tiny_model(_f, dtype=dtype),
        )
    )
