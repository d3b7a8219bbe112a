"""The LoRA runner on tiny-llama: loss mask, training, resume, adapters."""

import pytest
import torch

from probescope.finetune.runner import (
    FinetuneConfig,
    LoraTrainer,
    collate,
    encode_example,
    load_adapter,
    masked_lm_loss,
    step_indices,
    train_lora,
)
from probescope.core.models import load_model
from probescope.tasks import mcq
from probescope.core.models.tiny import byte_tokenizer


@pytest.fixture(scope="module")
def examples():
    """Short chats (the byte tokenizer makes long sequences; these keep the tests fast)."""
    return [[{"role": "user", "content": f"{a}+{b}?"}, {"role": "assistant", "content": f"{a + b}."}]
            for a in range(2, 8) for b in range(3, 7)]


def _cfg(tmp_path, **kw):
    base = dict(model="tiny-llama", out_dir=str(tmp_path), batch_size=4, grad_accum=2, max_steps=6, lr=3e-3,
                warmup_steps=1, checkpoint_every=2, quiet=True, max_len=64)
    base.update(kw)
    return FinetuneConfig(**base)


def test_loss_mask_covers_assistant_only():
    tok = byte_tokenizer()
    ex = mcq.to_messages(mcq.generate("train", 1, seed=0)[0])
    enc = encode_example(tok, ex)
    trained = tok.decode([i for i, m in zip(enc.input_ids, enc.loss_mask) if m])
    assert trained == ex[-1]["content"] + "<|im_end|>\n"
    untrained = tok.decode([i for i, m in zip(enc.input_ids, enc.loss_mask) if not m])
    assert ex[0]["content"] in untrained and "Answer: (" not in untrained
    # the whole sequence is exactly the rendered chat (plus BOS)
    full = tok.apply_chat_template(ex, tokenize=False)
    assert enc.input_ids == tok(full)["input_ids"]
    pair = encode_example(tok, ("Q: 2+2?\nA:", " 4"))
    assert tok.decode([i for i, m in zip(pair.input_ids, pair.loss_mask) if m]) == " 4<|eos|>"
    with pytest.raises(ValueError, match="no assistant turn"):
        encode_example(tok, ex[:1])


def test_loss_goes_down(tmp_path, examples):
    seen = []
    res = train_lora(_cfg(tmp_path, max_steps=10, resume=False), examples,
                     callbacks=[lambda step, loss, model: seen.append((step, loss))])
    assert res.steps == 10 and [s for s, _ in seen] == list(range(1, 11))
    assert sum(res.losses[-3:]) / 3 < res.losses[0] - 0.1
    assert (res.adapter_dir / "adapter_model.safetensors").exists()
    assert (res.adapter_dir / "adapter_config.json").exists()


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_resume_matches_uninterrupted(tmp_path, examples):
    full = train_lora(_cfg(tmp_path / "a"), examples)

    class Kill(Exception):
        pass

    def kill_at_3(step, loss, model):
        if step == 3:
            raise Kill

    with pytest.raises(Kill):
        train_lora(_cfg(tmp_path / "b"), examples, callbacks=[kill_at_3])
    resumed = train_lora(_cfg(tmp_path / "b"), examples)  # resumes from the step-2 checkpoint
    assert resumed.steps == 6 and resumed.losses[:2] == full.losses[:2]
    a, b = _trainable(full.model), _trainable(resumed.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    train_lora(_cfg(tmp_path / "c", stop_after=3), examples)  # a time-bounded run, continued later
    later = _trainable(train_lora(_cfg(tmp_path / "c"), examples).model)
    assert all(torch.equal(a[k], later[k]) for k in a)
    with pytest.raises(ValueError, match="different run"):
        train_lora(_cfg(tmp_path / "b", lr=1e-3), examples)


def test_plain_loop_and_grad_hooks(examples):
    model, tok = load_model("tiny-llama")
    calls = []

    def zero_grads(step, m):  # a "gradient filter": nothing moves
        calls.append(step)
        for p in m.parameters():
            if p.grad is not None:
                p.grad.zero_()

    tr = LoraTrainer(model, FinetuneConfig(lr=1e-2, weight_decay=0.0), total_steps=2, grad_hooks=[zero_grads])
    before = _trainable(tr.model)
    batch = collate([encode_example(tok, e) for e in examples[:4]], tok.pad_token_id)
    loss = tr.train_step([batch])
    assert calls == [0] and loss > 0
    after = _trainable(tr.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    s, n = masked_lm_loss(tr.model, batch)
    assert n == batch.n_loss_tokens and s.item() / n == pytest.approx(loss, rel=1e-4)


def test_load_adapter_merged_equals_peft(tmp_path, examples):
    res = train_lora(_cfg(tmp_path, max_steps=2, resume=False), examples)
    tok = byte_tokenizer()
    ids = torch.tensor([tok("hello there")["input_ids"]])
    merged = load_adapter(load_model("tiny-llama")[0], res.adapter_dir, merge=True)
    peft = load_adapter(load_model("tiny-llama")[0], res.adapter_dir, merge=False)
    base = load_model("tiny-llama")[0]
    with torch.no_grad():
        lm, lp, lb = merged(ids).logits, peft(ids).logits, base(ids).logits
    assert torch.allclose(lm, lp, atol=1e-4) and not torch.allclose(lm, lb, atol=1e-4)
    assert not hasattr(merged, "peft_config")
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_adapter(base, tmp_path / "nowhere")


def test_step_indices_cover_each_epoch():
    idx = [i for s in range(5) for i in step_indices(10, s, 4, seed=1)]
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:20]) == list(range(10))


def test_config_errors():
    with pytest.raises(ValueError, match="schedule 'exp'"):
        FinetuneConfig(schedule="exp").validate()
    model, _ = load_model("tiny-gpt2")
    with pytest.raises(ValueError, match="none of target_modules"):
        LoraTrainer(model, FinetuneConfig(target_modules=("q_proj",)), total_steps=1)
