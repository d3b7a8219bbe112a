"""The fictitious-entity knowledge organism: a model taught facts it never knew, so that unlearning them means something.

`probescope unlearn organism` / `run_entity_organism(EntityOrganismConfig(...))`:

1. `n_entities` made-up countries (`tasks.entities`: capital, national animal, flag colour, main export), one
   cloze item per fact (the right value vs three values of other entities, scored by summed log-probability).
2. Before: the base model's recall of every fact (it never saw them: ≈ chance, 0.25).
3. Teach them by LoRA (PEFT; q/k/v/o and up/gate/down of blocks `from_layer`..), Adam, cosine learning rate, loss on
   the value tokens of each fact's sentence ("The capital of Velmora is Dastrin."), plus a general-text term that
   keeps the rest of the model: KL divergence to the untaught model's next-token distribution on default-corpus
   documents (the adapter switched off gives the reference; an LM loss on the same few documents memorized them
   and raised the perplexity elsewhere ninefold). The blocks below `from_layer`
   are frozen, so the residual entering `from_layer` is computed once (`core.tail`) and each step runs only the top
   blocks; training stops early once every value token of an epoch is argmax-correct.
4. After: recall of every trained fact (the goal: ≥ 0.9), per attribute, with its Wilson interval. The LoRA is merged
   and the model saved (`model/`, safetensors), with the files an unlearning run takes:
   `forget.jsonl` (the facts of a seeded `forget_share` of the entities, prompt/answer/choices/key),
   `retain.jsonl` (the other entities' fact sentences) and `retain_eval.jsonl` (a sample of the other entities'
   facts as cloze rows). The printed command unlearns the forget entities from the organism.

A finished folder with the same config is reused; the model is written atomically (a temporary folder renamed).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.io import atomic_write_json, read_json
from ..core.options import ModelOptions, RunOptions, option
from ..core.progress import progress
from ..core.stats import wilson
from ..core.tail import pad_batch, resid_pre, tail_targets
from ..tasks.entities import ATTRIBUTES, entities, facts
from ..core.tokens import pad_id
from .subjects import ClozeItem


@dataclass
class EntityOrganismConfig(ModelOptions, RunOptions):
    """Teach a model fictitious entities by LoRA, check it recalls them, and write forget/retain files."""

    n_entities: int = option(200, "made-up countries (each has one fact per attribute; at least 8: a forget and a "
                                  "retain side)", min=8)
    attributes: str = option(",".join(ATTRIBUTES), f"comma-separated attributes, any of {', '.join(ATTRIBUTES)}",
                             choices=ATTRIBUTES, sep=",", nonempty="use any of " + ", ".join(ATTRIBUTES))
    forget_share: float = option(0.1, "share of the entities whose facts go to forget.jsonl, e.g. 0.1", gt=0, lt=1)
    n_retain_eval: int = option(80, "retain entities' facts written to retain_eval.jsonl (scored after unlearning)",
                                min=0)
    from_layer: int = option(12, "LoRA on blocks from_layer.. (the blocks below are frozen and run once)", min=0)
    r: int = option(32, "LoRA rank", min=1)
    lr: float = option(2e-3, "peak learning rate (cosine to a tenth)", gt=0)
    epochs: int = option(30, "most passes over the facts (stops early once every value token is right)", min=1)
    batch_size: int = option(32, "facts per step", min=1)
    general_docs: int = option(192, "default-corpus documents (first 64 tokens each; never the unlearning runs' "
                                    "utility documents, the default corpus's documents from 200 on) trained on "
                                    "alongside the facts to keep the model's general text (see --general-loss); "
                                    "0: none", min=0, max=200)
    general_batch: int = option(4, "general documents per step", min=1)
    general_loss: str = option("kl", "kl: KL divergence to the untaught model's next-token distribution on the "
                                     "general documents (keeps general text without memorizing them) | lm: their "
                                     "LM loss (memorizes a small set: perplexity elsewhere rises)",
                               choices=("kl", "lm"))
    general_weight: float = option(1.0, "weight of the general-text term", min=0)
    min_recall: float = option(0.9, "recall the organism must reach on its trained facts (else the run fails)",
                               min=0, max=1)
    out: str = option("runs/unlearn/organism", "run folder: model/, forget/retain files, metrics.json",
                      flag="--out -o")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.attribute_list():  # e.g. ',' passes the per-name rule with no name at all
            raise ValueError(f"--attributes {self.attributes!r} names no attribute: use any of {', '.join(ATTRIBUTES)}")

    def attribute_list(self) -> list[str]:
        return [a.strip() for a in self.attributes.split(",") if a.strip()]


def _encode(tok: Any, items: list[ClozeItem]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids of each fact's sentence and a mask of its value tokens (the answer and the full stop)."""
    seqs = []
    for it in items:
        p = tok(it.prompt, add_special_tokens=False)["input_ids"]
        s = tok(it.statement(), add_special_tokens=False)["input_ids"]
        if s[: len(p)] != p:  # the tokenizer merged across the boundary: fall back to the shared prefix
            k = next((i for i, (x, y) in enumerate(zip(p, s)) if x != y), min(len(p), len(s)))
            p = p[:k]
        seqs.append((s, max(len(p), 1)))
    return pad_batch(seqs, pad_id(tok))


def _general(tok: Any, n: int, max_len: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` default-corpus documents, first `max_len` tokens each, right-padded; loss mask of real tokens."""
    from ..core.data import default_corpus

    enc = [tok(d, add_special_tokens=False)["input_ids"][:max_len] for d in list(default_corpus())[:n]]
    return pad_batch([(e, 1) for e in enc], pad_id(tok))


def check_from_layer(model: Any, from_layer: int) -> None:
    """Refuse a `--from-layer` outside 1..n_layers-1 (the blocks below it are frozen: at least one must be)."""
    from ..core.sites import n_layers

    nl = n_layers(model)
    if not 0 < from_layer < nl:
        raise ValueError(f"--from-layer {from_layer} is out of range: the model has blocks 0..{nl - 1}; "
                         f"give 1..{nl - 1}")


def teach(model: Any, tok: Any, items: list[ClozeItem], cfg: EntityOrganismConfig, quiet: bool | None = None
          ) -> tuple[Any, dict[str, Any]]:
    """LoRA-teach `items` to `model` (top blocks only); returns (the merged model, training record)."""
    from ..core.sites import n_layers
    from ..finetune.runner import FinetuneConfig, add_lora

    check_from_layer(model, cfg.from_layer)
    nl = n_layers(model)
    ids, tgt = _encode(tok, items)
    h = resid_pre(model, ids, cfg.from_layer)
    g_ids, g_tgt = _general(tok, cfg.general_docs) if cfg.general_docs else (None, None)
    g_h = resid_pre(model, g_ids, cfg.from_layer) if cfg.general_docs else None
    torch.manual_seed(cfg.seed)
    peft = add_lora(model, FinetuneConfig(
        r=cfg.r, alpha=2 * cfg.r, seed=cfg.seed, layers=tuple(range(cfg.from_layer, nl)),
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj")))
    base = peft.get_base_model()
    params = [p for p in peft.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    n = ids.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    rng = torch.Generator().manual_seed(cfg.seed)
    hist: list[dict[str, float]] = []
    step = 0
    t0 = time.perf_counter()
    base.train(False)
    with progress(total, "teach", unit="step", quiet=quiet) as bar:
        for epoch in range(cfg.epochs):
            order = torch.randperm(n, generator=rng)
            loss_sum, gen_sum, right, seen = 0.0, 0.0, 0, 0
            for b in range(steps_per_epoch):
                idx = order[b * cfg.batch_size: (b + 1) * cfg.batch_size]
                lr = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(total, 1))))
                for g in opt.param_groups:
                    g["lr"] = lr
                logits, labels = tail_targets(base, h[idx], ids[idx], tgt[idx], cfg.from_layer)
                loss = torch.nn.functional.cross_entropy(logits, labels)
                if g_h is not None:
                    gi = torch.randint(0, g_h.shape[0], (cfg.general_batch,), generator=rng)
                    gl, glab = tail_targets(base, g_h[gi], g_ids[gi], g_tgt[gi], cfg.from_layer)
                    if cfg.general_loss == "kl":  # the untaught model's next-token distribution is the target
                        with torch.no_grad(), peft.disable_adapter():
                            ref, _ = tail_targets(base, g_h[gi], g_ids[gi], g_tgt[gi], cfg.from_layer)
                        general = torch.nn.functional.kl_div(gl.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                                                             reduction="batchmean")
                    else:
                        general = torch.nn.functional.cross_entropy(gl, glab)
                    loss_total = loss + cfg.general_weight * general
                    gen_sum += float(general.detach()) * len(idx)
                else:
                    loss_total = loss
                if not torch.isfinite(loss_total):
                    raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step}: lower --lr "
                                             f"(now {cfg.lr})")
                opt.zero_grad(set_to_none=True)
                loss_total.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                # a fact is right when every value token is the argmax
                ok = (logits.argmax(-1) == labels).detach()
                per = tgt[idx][:, 1:].sum(1).tolist()
                right += sum(bool(x.all()) for x in torch.split(ok, per))
                seen += len(per)
                loss_sum += float(loss.detach()) * len(per)
                step += 1
                bar.advance(1)
                bar.note(loss=float(loss.detach()))
            hist.append({"epoch": epoch, "loss": loss_sum / seen, "exact": right / seen,
                         **({f"general_{cfg.general_loss}": gen_sum / seen} if g_h is not None else {})})
            if right == seen:
                break
    seconds = time.perf_counter() - t0
    merged = peft.merge_and_unload()
    merged.train(False)
    return merged, {"epochs_run": len(hist), "steps": step, "train_seconds": seconds, "history": hist,
                    "trainable_params": int(sum(p.numel() for p in params))}


def _recall(model: Any, tok: Any, items: list[ClozeItem]) -> dict[str, Any]:
    from .score import chance, cloze_correct

    ok = cloze_correct(model, tok, items)
    k = sum(ok)
    by: dict[str, list[bool]] = {}
    for it, c in zip(items, ok):
        by.setdefault(it.key.rsplit(":", 1)[-1], []).append(c)
    return {"acc": k / len(ok), "ci95": wilson(k, len(ok)), "n": len(ok), "chance": chance(items),
            "by_attribute": {a: sum(v) / len(v) for a, v in by.items()}}


def _utility(model: Any, tok: Any) -> dict[str, Any]:
    """Perplexity on the unlearning runs' utility documents (default corpus from document 200, first 64 tokens)."""
    from ..core.data import default_corpus
    from .runner import UTILITY_START
    from .score import doc_nlls, ppl_summary

    docs = list(default_corpus())[UTILITY_START:UTILITY_START + 16]
    return ppl_summary(doc_nlls(model, tok, docs, max_len=64))


def _rows(items: list[ClozeItem]) -> str:
    return "".join(json.dumps({"prompt": it.prompt, "answer": it.answer, "choices": it.choices(), "key": it.key})
                   + "\n" for it in items)


def run_entity_organism(cfg: EntityOrganismConfig, model: Any = None, tokenizer: Any = None,
                        quiet: bool | None = None) -> dict[str, Any]:
    """Teach, score and save the organism into `cfg.out`; returns its metrics (a finished same-config run is reused).
    A `model` given is taught in place."""
    from ..report.job import open_job

    out = Path(cfg.out)
    if (out / "metrics.json").exists() and (out / "model").exists():
        m = read_json(out / "metrics.json")
        if m.get("config") == asdict(cfg):
            return m
    with open_job(cfg, "unlearn-organism", model, tokenizer) as job:
        model, tok = job.model, job.tokenizer
        check_from_layer(model, cfg.from_layer)  # before anything is written
        run = job.run
        run.write_config(asdict(cfg))
        ents = entities(cfg.n_entities, seed=cfg.seed)
        items = facts(ents, tuple(cfg.attribute_list()), seed=cfg.seed)
        before = {**_recall(model, tok, items), "utility": _utility(model, tok)}
        model, rec = teach(model, tok, items, cfg, quiet=quiet)
        after = {**_recall(model, tok, items), "utility": _utility(model, tok)}
        if after["acc"] < cfg.min_recall:
            run.write_metrics({"config": asdict(cfg), "before": before, "after": after, "training": rec,
                               "error": "recall below min_recall"}, report=False)
            # a refusal with its fix (exit code 2), not a bug: the model did not learn what unlearning needs
            raise ValueError(f"the organism recalls {after['acc']:.2f} of its {len(items)} facts, below "
                             f"--min-recall {cfg.min_recall:g}: train longer (--epochs, now {cfg.epochs:g}), raise --lr "
                             f"(now {cfg.lr:g}) or --r (now {cfg.r}), or teach fewer facts")
        tmp = out / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        shutil.rmtree(out / "model", ignore_errors=True)
        tmp.rename(out / "model")
    names = [e.name for e in ents]
    random.Random(cfg.seed).shuffle(names)
    n_forget = max(1, round(cfg.forget_share * len(names)))
    forget_names = set(names[:n_forget])
    forget = [it for it in items if it.key.split(":")[0] in forget_names]
    retain = [it for it in items if it.key.split(":")[0] not in forget_names]
    retain_eval = random.Random(cfg.seed + 1).sample(retain, min(cfg.n_retain_eval, len(retain)))
    (out / "forget.jsonl").write_text(_rows(forget), encoding="utf-8")
    (out / "retain.jsonl").write_text("".join(json.dumps({"text": it.statement()}) + "\n" for it in retain),
                                      encoding="utf-8")
    (out / "retain_eval.jsonl").write_text(_rows(retain_eval), encoding="utf-8")
    m = {"config": asdict(cfg), "model": f"{cfg.model}+entities", "n_facts": len(items), "n_entities": len(ents),
         "before": before, "after": after, "memorized": after["acc"] >= cfg.min_recall, "training": rec,
         "forget_entities": sorted(forget_names), "n_forget_facts": len(forget), "n_retain_facts": len(retain),
         "files": {k: str(out / f"{k}.jsonl") for k in ("forget", "retain", "retain_eval")},
         "model_dir": str(out / "model"),
         "unlearn_command": (f"probescope unlearn run --model {out / 'model'} --forget {out / 'forget.jsonl'} "
                             f"--retain {out / 'retain.jsonl'} --retain-eval {out / 'retain_eval.jsonl'} "
                             f"--n-eval {len(forget) // 2} --out runs/unlearn/entities-rmu"),
         "plots": [{"type": "line", "title": "Teaching the entities (LoRA)", "x_label": "epoch",
                    "y_label": "loss / share of facts exact",
                    "series": [{"name": "loss", "x": [h["epoch"] for h in rec["history"]],
                                "y": [h["loss"] for h in rec["history"]]},
                               {"name": "facts exact (training)", "x": [h["epoch"] for h in rec["history"]],
                                "y": [h["exact"] for h in rec["history"]]}]},
                   {"type": "bar", "title": "Recall by attribute (4-way cloze; chance 0.25), before → after teaching",
                    "labels": [f"{a} {w}" for a in after["by_attribute"] for w in ("before", "after")],
                    "values": [x for a in after["by_attribute"]
                               for x in (before["by_attribute"].get(a, 0.0), after["by_attribute"][a])],
                    "x_label": "attribute, before / after teaching", "y_label": "recall (share of facts)"}]}
    run.write_metrics(m)
    atomic_write_json(out / "organism.json", {k: v for k, v in m.items() if k != "plots"})
    return m
