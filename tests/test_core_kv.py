"""core/kv.py: the KV cache passed and read under the installed transformers' own name (#36: no deprecation
warning of ours on every run), and a cached decode step equal to the uncached forward."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from probescope.core.kv import cache_keyword, cached_forward, returned_cache

pytestmark = pytest.mark.usefixtures("one_thread")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_cached_decode_step_warns_nothing_and_equals_the_full_forward(tiny_models):
    """Prefix forward with a new cache, then one token fed through the cache: no FutureWarning (turned into an
    error) and no transformers deprecation log line; its logits equal the uncached forward of the whole sequence
    at the last position within 1e-5 (max abs, fp32), and so do the prefix's."""
    from transformers.utils import logging as hf_logging

    model, _ = tiny_models["tiny-llama"]
    ids = torch.tensor([[5, 17, 42, 9, 33, 61]])
    with torch.no_grad():
        full = model(input_ids=ids).logits.float()
    hf_logging.get_logger("transformers").warning_once.cache_clear()  # a message logged earlier would be silent
    rec = _Records()
    hf = logging.getLogger("transformers")
    hf.addHandler(rec)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("error", FutureWarning)
            out = cached_forward(model, None, input_ids=ids[:, :-1])
            cache = returned_cache(out)
            step = cached_forward(model, cache, input_ids=ids[:, -1:],
                                  position_ids=torch.tensor([[ids.shape[1] - 1]]))
            again = returned_cache(step)
    finally:
        hf.removeHandler(rec)
    assert not [m for m in rec.messages if "deprecated" in m], rec.messages
    assert again is cache and cache.get_seq_length() == ids.shape[1]
    assert (step.logits[0, -1].float() - full[0, -1]).abs().max().item() <= 1e-5
    assert (out.logits[0].float() - full[0, :-1]).abs().max().item() <= 1e-5


def test_the_keyword_follows_the_forward_signature(tiny_models):
    """The keyword is the one the forward declares; a forward without `cache` gets `past_key_values`."""
    import inspect

    model, _ = tiny_models["tiny-llama"]
    declared = inspect.signature(type(model).forward).parameters
    assert cache_keyword(model) == ("cache" if "cache" in declared else "past_key_values")

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=False):
            return past_key_values

    assert cache_keyword(Old()) == "past_key_values" and cached_forward(Old(), "kv", input_ids=None) == "kv"
