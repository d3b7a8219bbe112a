"""LoRA fine-tuning runner: chat examples in, a PEFT adapter (safetensors) out; checkpoints and resumes.

Two ways to use it:

* `train_lora(FinetuneConfig(...), examples)`: the whole job, with a progress bar, checkpoints every
  `checkpoint_every` steps under `out_dir/checkpoints/` and a resume from the latest one after a kill.
* A plain PyTorch loop over the building blocks: `encode_example`, `collate`, `add_lora`, `masked_lm_loss`,
  or `LoraTrainer(model, config).train_step(batches)`.

Loss is next-token cross-entropy on assistant tokens only (the assistant content and its end-of-turn token),
averaged over those tokens across the whole optimizer step (gradient accumulation included).

Hooks for later features: `grad_hooks` are called as `hook(step, model)` after backward and before the
optimizer step (they may edit `.grad` in place, e.g. gradient filters); `callbacks` are called as
`cb(step, loss, model)` after each optimizer step (e.g. an SAE lens). A callback that raises stops the run; the
last checkpoint is kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import torch
from torch import nn

from ..core.models.adapters import load_adapter  # noqa: F401  (re-exported)
from ..core.threads import torch_threads
from ..core.io import atomic_write_json, clean_temp_files, load_tensors, read_checkpoint, read_json, save_tensors
from ..core.progress import progress
from ..core.tokens import pad_id as pad_token

Messages = list[dict[str, str]]
Example = Union[Messages, tuple[str, str]]
Callback = Callable[[int, float, nn.Module], Any]
GradHook = Callable[[int, nn.Module], Any]

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class FinetuneConfig:
    """LoRA fine-tuning options (each field doubles as a CLI option)."""

    model: str = "smollm2-135m"
    out_dir: str = "runs/finetune"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    layers: tuple[int, ...] | None = None  # blocks that get adapters (None: all)
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 5
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    min_lr_ratio: float = 0.1  # the decay ends at lr * min_lr_ratio
    batch_size: int = 16  # sequences per forward pass (micro-batch)
    grad_accum: int = 1  # micro-batches per optimizer step: effective batch = batch_size * grad_accum
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    stop_after: int | None = None  # end this run after this many steps; the lr schedule still spans all steps
    max_len: int = 512
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 10
    keep_checkpoints: int = 1
    resume: bool = True
    threads: int | None = None
    device: str = "cpu"
    quiet: bool = False

    def validate(self) -> None:
        checks = [
            (self.r > 0, f"r must be > 0, got {self.r}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size}"),
            (self.grad_accum > 0, f"grad_accum must be > 0, got {self.grad_accum}"),
            (self.schedule in ("cosine", "linear", "constant"),
             f"schedule '{self.schedule}' is unknown: use cosine, linear or constant"),
            (self.max_steps is None or self.max_steps > 0, f"max_steps must be > 0, got {self.max_steps}"),
            (self.epochs > 0, f"epochs must be > 0, got {self.epochs}"),
            (self.stop_after is None or self.stop_after > 0, f"stop_after must be > 0, got {self.stop_after}"),
            (self.checkpoint_every > 0, f"checkpoint_every must be > 0, got {self.checkpoint_every}"),
            (0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


# ------------------------------------------------------------------------------------------------------------
# Data: examples -> token ids + loss mask -> padded batches
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """One tokenized example: `input_ids` and `loss_mask` (True on tokens the model is trained to produce)."""

    input_ids: list[int]
    loss_mask: list[bool]

    def __len__(self) -> int:
        return len(self.input_ids)


def _render(tokenizer: Any, messages: Messages, gen: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def encode_example(tokenizer: Any, example: Example, max_len: int | None = None) -> Encoded:
    """Tokenize chat messages (loss on assistant turns) or a raw `(prompt, completion)` pair (loss on completion + EOS).

    Chat text is tokenized segment by segment (prompt part, assistant part, ...), exactly as generation sees it:
    the prompt is tokenized on its own and the model continues from there.
    """
    segments: list[tuple[str, bool]] = []
    if isinstance(example, tuple):
        if len(example) != 2 or not all(isinstance(x, str) for x in example):
            raise ValueError("a pair example must be (prompt: str, completion: str)")
        prompt, completion = example
        segments = [(prompt, False), (completion + (tokenizer.eos_token or ""), True)]
    elif isinstance(example, list) and all(isinstance(m, dict) for m in example):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat examples need a tokenizer with a chat template; pass (prompt, completion) pairs")
        if not any(m.get("role") == "assistant" for m in example):
            raise ValueError("a chat example has no assistant turn: nothing to train on")
        prev = ""
        for i, m in enumerate(example):
            if m.get("role") != "assistant":
                continue
            head = _render(tokenizer, example[:i], gen=True)
            full = _render(tokenizer, example[: i + 1], gen=False)
            if not head.startswith(prev) or not full.startswith(head):
                raise ValueError(
                    "the chat template does not render conversations as growing prefixes; "
                    "pass (prompt, completion) pairs instead"
                )
            segments += [(head[len(prev):], False), (full[len(head):], True)]
            prev = full
        tail = _render(tokenizer, example, gen=False)[len(prev):]
        if tail:
            segments.append((tail, False))
    else:
        raise TypeError(f"an example must be a list of chat messages or a (prompt, completion) pair, got {type(example).__name__}")
    ids: list[int] = []
    mask: list[bool] = []
    for j, (text, trained) in enumerate(segments):
        if not text:
            continue
        bos = getattr(tokenizer, "bos_token", None)
        add_special = not ids and not (bos and text.startswith(bos))
        seg = tokenizer(text, add_special_tokens=add_special)["input_ids"]
        ids += seg
        mask += [trained] * len(seg)
    if max_len is not None and len(ids) > max_len:
        ids, mask = ids[:max_len], mask[:max_len]
    if not any(mask[1:]):
        raise ValueError(f"example has no trainable tokens within max_len={max_len}: raise max_len")
    return Encoded(ids, mask)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T], right padded
    attention_mask: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T] bool

    @property
    def n_loss_tokens(self) -> int:
        """Tokens predicted with loss (targets: positions 1..T-1 with loss_mask)."""
        return int(self.loss_mask[:, 1:].sum())

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(items: Sequence[Encoded], pad_id: int) -> Batch:
    """Right-pad encoded examples into a Batch."""
    T = max(len(e) for e in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(items), T), dtype=torch.long)
    lm = torch.zeros((len(items), T), dtype=torch.bool)
    for i, e in enumerate(items):
        n = len(e)
        ids[i, :n] = torch.tensor(e.input_ids)
        att[i, :n] = 1
        lm[i, :n] = torch.tensor(e.loss_mask)
    return Batch(ids, att, lm)


# ------------------------------------------------------------------------------------------------------------
# Model: LoRA + loss
# ------------------------------------------------------------------------------------------------------------


def add_lora(model: nn.Module, config: FinetuneConfig) -> nn.Module:
    """Wrap `model` in a PEFT LoRA model (seeded init); only the LoRA weights are trainable."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in config.target_modules if t in names]
    if not targets:
        raise ValueError(
            f"none of target_modules {list(config.target_modules)} is a module of this model; "
            f"pick from its linear layers, e.g. {sorted(n for n in names if 'proj' in n or 'fc' in n or 'attn' in n)[:8]}"
        )
    extra = {"layers_to_transform": list(config.layers)} if config.layers else {}
    lcfg = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=targets,
                      task_type="CAUSAL_LM", bias="none", **extra)
    state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)
    try:
        peft_model = get_peft_model(model, lcfg)
    finally:
        torch.random.set_rng_state(state)
    return peft_model


def _hf_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def masked_lm_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropy over loss tokens, number of loss tokens); logits only where needed."""
    hf = _hf_model(model)
    backbone, head = hf.base_model, hf.get_output_embeddings()
    dev = next(model.parameters()).device
    ids, att, lm = batch.input_ids.to(dev), batch.attention_mask.to(dev), batch.loss_mask.to(dev)
    hidden = backbone(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
    sel = lm[:, 1:]
    h = hidden[:, :-1][sel]
    logits = head(h).float()
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    targets = ids[:, 1:][sel]
    return nn.functional.cross_entropy(logits, targets, reduction="sum"), int(sel.sum())


def lr_factor(step: int, total: int, config: FinetuneConfig) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then the decay schedule."""
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    if config.schedule == "constant":
        return 1.0
    span = max(1, total - config.warmup_steps)
    t = min(1.0, (step - config.warmup_steps) / span)
    m = config.min_lr_ratio
    if config.schedule == "linear":
        return m + (1 - m) * (1 - t)
    return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * t))


# ------------------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------------------


class LoraTrainer:
    """Optimizer, schedule, one `train_step`, checkpoints. Usable from a plain loop:

        trainer = LoraTrainer(model, cfg, total_steps=100)
        for batches in my_batches: loss = trainer.train_step(batches)   # batches: list of Batch (accumulated)
    """

    def __init__(
        self,
        model: nn.Module,
        config: FinetuneConfig,
        total_steps: int,
        callbacks: Iterable[Callback] = (),
        grad_hooks: Iterable[GradHook] = (),
        wrap: bool = True,
    ):
        config.validate()
        self.config = config
        self.model = add_lora(model, config) if wrap else model
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters: pass wrap=True to add LoRA")
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay,
                                           betas=(0.9, 0.999), foreach=False)
        self.total_steps = total_steps
        self.step = 0
        self.tokens = 0
        self.seconds = 0.0  # training time over all processes of a resumed run
        self.losses: list[float] = []
        self.callbacks = list(callbacks)
        self.grad_hooks = list(grad_hooks)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def train_step(self, batches: Sequence[Batch]) -> float:
        """One optimizer step over `batches` (gradient accumulation); returns the mean loss per loss token."""
        n_total = sum(b.n_loss_tokens for b in batches)
        if n_total == 0:
            raise ValueError("no loss tokens in this step: check the loss masks (assistant turns present?)")
        for g in self.optimizer.param_groups:
            g["lr"] = self.config.lr * lr_factor(self.step, self.total_steps, self.config)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for b in batches:
            loss_sum, _ = masked_lm_loss(self.model, b)
            (loss_sum / n_total).backward()
            total += float(loss_sum.detach())
            self.tokens += b.n_tokens
        for hook in self.grad_hooks:
            hook(self.step, self.model)
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self.step += 1
        loss = total / n_total
        self.losses.append(loss)
        for cb in self.callbacks:
            cb(self.step, loss, self.model)
        return loss

    # --- checkpoints: ckpt-<step>/ {trainable.safetensors, optimizer.safetensors, state.json}; latest.json last

    def save_checkpoint(self, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
        folder = Path(folder)
        d = folder / f"ckpt-{self.step:06d}"
        save_tensors(d / "trainable.safetensors", self.trainable_state(), finite=True)
        opt = self.optimizer.state_dict()
        flat: dict[str, torch.Tensor] = {}
        for idx, st in opt["state"].items():
            for k, v in st.items():
                flat[f"{idx}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
        flat["__rng__"] = torch.random.get_rng_state()
        save_tensors(d / "optimizer.safetensors", flat, finite=True)
        state = {"step": self.step, "tokens": self.tokens, "seconds": self.seconds, "losses": self.losses,
                 "param_groups": opt["param_groups"], **(extra or {})}
        atomic_write_json(d / "state.json", state)
        atomic_write_json(folder / "latest.json", {"checkpoint": d.name, "step": self.step})
        ckpts = sorted(p for p in folder.glob("ckpt-*") if p.is_dir() and p != d)
        for old in ckpts[: max(0, len(ckpts) - (self.config.keep_checkpoints - 1))]:
            shutil.rmtree(old, ignore_errors=True)
        return d

    def load_checkpoint(self, folder: str | Path) -> dict[str, Any]:
        """Restore weights, optimizer, step, token count from `folder/latest.json`; returns the saved state."""
        folder = Path(folder)
        latest = read_json(folder / "latest.json")
        d = folder / latest["checkpoint"]
        state = read_json(d / "state.json")
        weights = load_tensors(d / "trainable.safetensors")
        named = dict(self.model.named_parameters())
        missing = [n for n in named if named[n].requires_grad and n not in weights]
        if missing or set(weights) - set(named):
            raise ValueError(f"checkpoint {d} does not match this model (missing {missing[:3]}): "
                             "resume with the same model and LoRA settings, or use a new out_dir")
        with torch.no_grad():
            for n, t in weights.items():
                named[n].copy_(t)
        flat = load_tensors(d / "optimizer.safetensors")
        torch.random.set_rng_state(flat.pop("__rng__"))
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in flat.items():
            idx, k = key.split(".", 1)
            opt_state.setdefault(int(idx), {})[k] = v
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.step, self.tokens, self.losses = state["step"], state["tokens"], list(state["losses"])
        self.seconds = float(state.get("seconds", 0.0))
        return state

    def save_adapter(self, folder: str | Path, base_name: str | None = None) -> Path:
        """PEFT adapter (adapter_model.safetensors + adapter_config.json), written to a temp folder then renamed."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "README.md").unlink(missing_ok=True)
        if base_name:
            cfg = read_json(tmp / "adapter_config.json")
            cfg["base_model_name_or_path"] = base_name
            atomic_write_json(tmp / "adapter_config.json", cfg)
        if folder.exists():
            for name in ("adapter_model.safetensors", "adapter_config.json"):
                (folder / name).unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            f.replace(folder / f.name)
        shutil.rmtree(tmp, ignore_errors=True)
        return folder


# ------------------------------------------------------------------------------------------------------------
# The whole job
# ------------------------------------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    adapter_dir: Path
    steps: int
    tokens: int
    seconds: float  # wall time of this process's training (not counting earlier runs before a resume)
    tokens_this_run: int = 0  # tokens trained in this process (tokens counts earlier runs before a resume too)
    seconds_total: float = 0.0  # time in training steps over all processes of a resumed run
    losses: list[float] = field(default_factory=list)
    model: nn.Module | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_this_run / self.seconds if self.seconds else float("nan")


def step_indices(n: int, step: int, per_step: int, seed: int) -> list[int]:
    """Example indices of optimizer step `step`: a seeded permutation per epoch, consumed in order."""
    out: list[int] = []
    pos = step * per_step
    while len(out) < per_step:
        epoch, off = divmod(pos, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        take = perm[off: off + per_step - len(out)]
        out += take
        pos += len(take)
    return out


def _data_hash(encoded: Sequence[Encoded]) -> str:
    h = hashlib.sha256()
    for e in encoded:
        h.update(json.dumps(e.input_ids).encode())
    return h.hexdigest()[:16]


def train_lora(
    config: FinetuneConfig,
    examples: Sequence[Example],
    model: nn.Module | None = None,
    tokenizer: Any = None,
    callbacks: Iterable[Callback] = (),
    grad_hooks: Iterable[GradHook] = (),
) -> FinetuneResult:
    """Fine-tune a LoRA adapter on `examples`; resumes from `out_dir/checkpoints` when one exists.

    `examples`: chat message lists (loss on assistant turns) or `(prompt, completion)` pairs. `model`/`tokenizer`
    default to `load_model(config.model)`. The adapter lands in `out_dir/adapter/`; the result holds the model.
    """
    config.validate()
    if not examples:
        raise ValueError("no examples to train on")
    with torch_threads(config.threads):
        return _train_lora(config, examples, model, tokenizer, callbacks, grad_hooks)


def _train_lora(config, examples, model, tokenizer, callbacks, grad_hooks) -> FinetuneResult:
    if model is None:
        from ..core.models.registry import load_model

        model, tok = load_model(config.model, device=config.device)
        tokenizer = tokenizer or tok
    if tokenizer is None:
        raise ValueError("pass the tokenizer that goes with the model")
    pad = pad_token(tokenizer)
    encoded = [encode_example(tokenizer, ex, config.max_len) for ex in examples]
    per_step = config.batch_size * config.grad_accum
    total = config.max_steps or max(1, math.ceil(config.epochs * len(encoded) / per_step))
    out = Path(config.out_dir)
    ck = out / "checkpoints"
    fingerprint = {"config": {k: v for k, v in config.to_dict().items()
                              if k not in ("out_dir", "resume", "threads", "quiet", "checkpoint_every", "device",
                                           "keep_checkpoints", "stop_after")},
                   "data": _data_hash(encoded), "n_examples": len(encoded)}
    trainer = LoraTrainer(model, config, total, callbacks=callbacks, grad_hooks=grad_hooks)
    clean_temp_files(out)  # what a killed write left behind
    if config.resume and (ck / "latest.json").exists():
        saved = read_json(ck / "fingerprint.json") if (ck / "fingerprint.json").exists() else None
        now = json.loads(json.dumps(fingerprint))
        if saved != now:
            from ..report.runs import config_diff, describe_diff

            what = (describe_diff(config_diff(saved, now, ignore=()), "checkpoint", "this run") if isinstance(saved, dict)
                    else "the checkpoint has no fingerprint.json")
            raise ValueError(f"{ck} holds a checkpoint of a different run ({what}): resuming would mix two runs; "
                             "use another out_dir (--out), or resume=False (--no-resume) to start over")
        read_checkpoint(ck, lambda: trainer.load_checkpoint(ck))
    else:
        shutil.rmtree(ck, ignore_errors=True)
        ck.mkdir(parents=True, exist_ok=True)
        atomic_write_json(ck / "fingerprint.json", fingerprint)
    atomic_write_json(out / "config.json", config.to_dict())
    t0, tok0 = time.perf_counter(), trainer.tokens
    log = open(out / "log.jsonl", "a")
    try:
        with progress(total, "lora", unit="step", quiet=config.quiet or None) as bar:
            bar.advance(trainer.step)
            end = min(total, config.stop_after or total)
            while trainer.step < end:
                idx = step_indices(len(encoded), trainer.step, per_step, config.seed)
                batches = [collate([encoded[i] for i in idx[j: j + config.batch_size]], pad)
                           for j in range(0, per_step, config.batch_size)]
                t_step = time.perf_counter()
                loss = trainer.train_step(batches)
                trainer.seconds += time.perf_counter() - t_step
                dt = time.perf_counter() - t0
                rate = (trainer.tokens - tok0) / dt if dt else 0.0
                log.write(json.dumps({"step": trainer.step, "time": round(time.time(), 1), "loss": loss,
                                      "tokens": trainer.tokens,
                                      "tok_s": rate, "lr": trainer.optimizer.param_groups[0]["lr"]}) + "\n")
                log.flush()
                bar.advance(1)
                bar.note(loss=loss, tok_s=rate)
                if trainer.step % config.checkpoint_every == 0 or trainer.step == end:
                    trainer.save_checkpoint(ck)
    finally:
        log.close()
    seconds = time.perf_counter() - t0
    adapter = trainer.save_adapter(out / "adapter", base_name=config.model)
    trainer.model.eval()
    return FinetuneResult(adapter, trainer.step, trainer.tokens, seconds, trainer.tokens - tok0, trainer.seconds,
                          trainer.losses, trainer.model)
