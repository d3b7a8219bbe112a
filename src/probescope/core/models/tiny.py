"""Tiny seeded models of every family probescope maps (`FAMILIES`; llama, gemma3 and gpt2 are also the built-in
names tiny-llama, tiny-gemma3, tiny-gpt2) and a byte-level tokenizer, built offline for tests."""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast
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


# Every family probescope maps (core.sites.LAYOUTS), as a tiny seeded model: hidden 64, 4 heads, 4 layers (3 for the
# mixtures of experts). Variants of one family's block (parallel or sequential residual, Falcon's two decoder
# architectures) get a name of their own after a colon.
_DENSE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024)
_MOE = dict(_DENSE, num_hidden_layers=3, num_experts_per_tok=2)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", dict(_DENSE, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(_DENSE, head_dim=16, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(_DENSE)),
    "qwen3": ("Qwen3Config", dict(_DENSE, head_dim=16)),
    "olmo": ("OlmoConfig", dict(_DENSE)),
    "olmo2": ("Olmo2Config", dict(_DENSE)),
    "phi3": ("Phi3Config", dict(_DENSE)),
    "granite": ("GraniteConfig", dict(_DENSE, residual_multiplier=0.5, embedding_multiplier=2.0,
                                      attention_multiplier=0.25, logits_scaling=4.0)),
    "smollm3": ("SmolLM3Config", dict(_DENSE, no_rope_layer_interval=2)),
    "gemma": ("GemmaConfig", dict(_DENSE, head_dim=16)),
    "gemma2": ("Gemma2Config", dict(_DENSE, head_dim=16, sliding_window=8, query_pre_attn_scalar=16)),
    "gemma3": ("Gemma3TextConfig", dict(
        _DENSE, head_dim=16, sliding_window=8, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"])),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=4, n_head=4, n_positions=1024)),
    "gpt_neox": ("GPTNeoXConfig", dict(_DENSE, num_key_value_heads=None, use_parallel_residual=True)),
    "gpt_neox:sequential": ("GPTNeoXConfig", dict(_DENSE, num_key_value_heads=None, use_parallel_residual=False)),
    "phi": ("PhiConfig", dict(_DENSE, num_key_value_heads=None, partial_rotary_factor=0.5)),
    "falcon": ("FalconConfig", dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4)),
    "falcon:new_decoder": ("FalconConfig", dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                                new_decoder_architecture=True, num_kv_heads=2)),
    "falcon:sequential": ("FalconConfig", dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                               parallel_attn=False, multi_query=False)),
    "mixtral": ("MixtralConfig", dict(_MOE, num_local_experts=4)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(_MOE, num_experts=4, moe_intermediate_size=32,
                                         shared_expert_intermediate_size=64)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(_MOE, head_dim=16, num_experts=4, moe_intermediate_size=32,
                                         mlp_only_layers=[0])),
}


def _config(family: str):
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}: use one of {', '.join(FAMILIES)}")
    import transformers

    cls_name, kw = FAMILIES[family]
    kw = {k: v for k, v in kw.items() if v is not None or k == "sliding_window"}
    return getattr(transformers, cls_name)(vocab_size=VOCAB, pad_token_id=256, bos_token_id=257, eos_token_id=258,
                                           **kw)


def tiny_model(family: str, seed: int = SEED, dtype: torch.dtype = torch.float32):
    """A d_model 64 random model of `family` (a key of `FAMILIES`, e.g. "llama", "olmo2", "gpt_neox"), seeded,
    with the byte tokenizer."""
    cfg = _config(family)
    cfg._name_or_path = f"tiny-{family.replace(':', '-')}"
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
