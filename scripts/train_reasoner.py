"""Reproduce the shipped `smollm2-135m-reasoner` LoRA adapter, then evaluate it on held-out test problems.

    python scripts/train_reasoner.py                      # train (resumes after a kill), install, evaluate
    nohup python scripts/train_reasoner.py > runs/reasoner.log 2>&1 &   # the way it was run (2 shared CPU cores)
    python scripts/train_reasoner.py --skip-eval          # train + install only
    python scripts/train_reasoner.py --eval-only          # evaluate the installed adapter
    python scripts/train_reasoner.py --stage 2            # a second epoch: a new LoRA on stage 1 (merged)

Training: SmolLM2-135M-Instruct + LoRA (r 16, alpha 32, q/k/v/o/gate/up/down), 640 generated train problems
(seed 0), batch 16 (8 x 2 accumulation), AdamW peak lr 5e-4, 4 warmup steps, cosine to 0.1x over one epoch
(40 steps, ~150k tokens).
Stage 2 (shipped as assets/.../stage2, merged after stage 1 at load): a fresh LoRA (same shape) on the merged
stage-1 model, 640 new train problems (seed 1), peak lr 3e-4, 2 warmup steps, cosine to 0.1x, 40 steps.
Checkpoints every 5 steps under runs/reasoner/checkpoints; rerunning the command resumes.
Outputs: src/probescope/assets/smollm2-135m-reasoner/{adapter_model.safetensors,adapter_config.json,train_meta.json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from probescope.finetune.runner import FinetuneConfig, train_lora  # noqa: E402
from probescope.core.io import atomic_write_json, load_tensors, read_json, save_tensors  # noqa: E402
from probescope.tasks import mcq  # noqa: E402

ASSET = ROOT / "src" / "probescope" / "assets" / "smollm2-135m-reasoner"
SEED = 0
N_TRAIN = 640
N_TEST = 128
# The run may be time-boxed: STOP_AFTER ends it early without changing the schedule (None: the full epoch).
# The shipped adapter is the full epoch (40 steps); an evaluation at step 30 is recorded in docs/reasoner.md.
STOP_AFTER = None


STAGE_SEED = {1: SEED, 2: 1}  # train problems of each stage (same train split, another seed stream)


def config(out_dir: str, stage: int = 1) -> FinetuneConfig:
    if stage == 2:
        return FinetuneConfig(
            model="smollm2-135m-reasoner@stage1", out_dir=out_dir, r=16, alpha=32, lr=3e-4, warmup_steps=2,
            schedule="cosine", min_lr_ratio=0.1, batch_size=8, grad_accum=2, epochs=1.0, max_len=320,
            seed=STAGE_SEED[2], checkpoint_every=5, threads=2,
        )
    return FinetuneConfig(
        model="smollm2-135m", out_dir=out_dir, r=16, alpha=32, lr=5e-4, warmup_steps=4, schedule="cosine",
        min_lr_ratio=0.1, batch_size=8, grad_accum=2, epochs=1.0, max_len=320, seed=SEED, checkpoint_every=5,
        threads=2, stop_after=STOP_AFTER,
    )


def train(out_dir: str, stage: int = 1) -> dict:
    cfg = config(out_dir, stage)
    problems = mcq.generate("train", N_TRAIN, seed=STAGE_SEED[stage])
    t0 = time.time()
    model = tok = None
    if stage == 2:  # train on top of the shipped stage-1 adapter, merged (exactly what load_model applies)
        from probescope.core.models.reasoner import load_reasoner

        model, tok = load_reasoner(stages=1)
    res = train_lora(cfg, [mcq.to_messages(p) for p in problems], model=model, tokenizer=tok)
    dest = ASSET if stage == 1 else ASSET / "stage2"
    dest.mkdir(parents=True, exist_ok=True)
    # ship the LoRA weights in fp16 (half the size; merged into the fp32 base at load time)
    weights = load_tensors(res.adapter_dir / "adapter_model.safetensors")
    save_tensors(dest / "adapter_model.safetensors", {k: v.half() for k, v in weights.items()},
                 metadata={"format": "pt"})
    shutil.copyfile(res.adapter_dir / "adapter_config.json", dest / ".adapter_config.json.tmp")
    (dest / ".adapter_config.json.tmp").replace(dest / "adapter_config.json")
    log = [line for line in (Path(out_dir) / "log.jsonl").read_text().splitlines() if line]
    if stage == 2:
        rates = [json.loads(x)["tok_s"] for x in log]
        meta = read_json(ASSET / "train_meta.json")
        meta["stage2"] = {
            "base": "smollm2-135m + stage-1 adapter (fp16, merged)",
            "task": "probescope.tasks.mcq (arith + convert), train split, seed 1",
            "n_train_problems": N_TRAIN, "config": {**cfg.to_dict(), "out_dir": "runs/reasoner-stage2"},
            "steps": res.steps, "train_tokens": res.tokens,
            "first_loss": res.losses[0] if res.losses else None,
            "final_loss": sum(res.losses[-5:]) / max(1, len(res.losses[-5:])),
            "train_seconds": round(res.seconds_total, 1) if res.seconds_total else None,
            "tokens_per_s_last_process": round(rates[-1], 1) if rates else None,
            "command": "python scripts/train_reasoner.py --stage 2",
        }
        atomic_write_json(ASSET / "train_meta.json", meta)
        print(f"stage 2: {res.steps} steps, {res.tokens} tokens, {time.time() - t0:.0f}s", flush=True)
        return meta
    meta = {
        "base_model": "smollm2-135m",
        "task": "probescope.tasks.mcq (arith + convert), train split, seed 0",
        "n_train_problems": N_TRAIN,
        "n_train_problems_seen": res.steps * cfg.batch_size * cfg.grad_accum,
        "config": {**cfg.to_dict(), "out_dir": "runs/reasoner"},
        "steps": res.steps,
        "train_tokens": res.tokens,
        "first_loss": res.losses[0] if res.losses else None,
        "final_loss": sum(res.losses[-5:]) / max(1, len(res.losses[-5:])),
        "log_lines": len(log),
        "seconds_this_process": round(res.seconds, 1),
        "command": "python scripts/train_reasoner.py",
        "shipped_dtype": "float16 (trained in float32)",
    }
    rates = [json.loads(x)["tok_s"] for x in log]
    meta["tokens_per_s_last_process"] = round(rates[-1], 1) if rates else None
    meta["train_hardware"] = "2 CPU cores shared with 3 other jobs (torch CPU, fp32)"
    prev = read_json(ASSET / "train_meta.json") if (ASSET / "train_meta.json").exists() else {}
    # time in training steps summed over the processes of a resumed run (kept in the checkpoints)
    if res.seconds_total:
        meta["train_seconds"] = round(res.seconds_total, 1)
        meta["train_tokens_per_s"] = round(res.tokens / res.seconds_total, 1)
    meta = {**prev, **meta}
    atomic_write_json(ASSET / "train_meta.json", meta)
    print(f"trained {res.steps} steps, {res.tokens} tokens, {time.time() - t0:.0f}s this process", flush=True)
    return meta


def evaluate(n_test: int, batch_size: int, stride: int) -> dict:
    from probescope.tasks.mcq_eval import evaluate_mcq
    from probescope.core.models import load_model

    torch.set_num_threads(2)
    model, tok = load_model("smollm2-135m-reasoner")
    problems = mcq.generate("test", n_test, seed=SEED)
    train_q = {p.question for s in STAGE_SEED.values() for p in mcq.generate("train", N_TRAIN, seed=s)}
    assert not train_q & {p.question for p in problems}, "test problems overlap the training problems"
    t0 = time.time()
    rep = evaluate_mcq(model, tok, problems, batch_size=batch_size, settle_stride=stride)
    rep["eval_seconds"] = round(time.time() - t0, 1)
    meta = read_json(ASSET / "train_meta.json") if (ASSET / "train_meta.json").exists() else {}
    meta["eval"] = {k: v for k, v in rep.items() if k != "rows"}
    atomic_write_json(ASSET / "train_meta.json", meta)
    atomic_write_json(ROOT / "runs" / "reasoner" / "eval_rows.json", rep["rows"])
    print({k: v for k, v in rep.items() if k != "rows"}, flush=True)
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=None, help="default: runs/reasoner (stage 1), runs/reasoner-stage2")
    ap.add_argument("--stage", type=int, choices=(1, 2), default=1)
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--n-test", type=int, default=N_TEST)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--settle-stride", type=int, default=2, help="measure the forced answer every k reasoning tokens")
    a = ap.parse_args()
    if not a.eval_only:
        out_dir = a.out_dir or str(ROOT / "runs" / ("reasoner" if a.stage == 1 else "reasoner-stage2"))
        train(out_dir, a.stage)
        if not a.skip_eval:  # a fresh process: generation right after training in the same one ran ~20x slower
            import subprocess

            cmd = [sys.executable, __file__, "--eval-only", "--n-test", str(a.n_test),
                   "--batch-size", str(a.batch_size), "--settle-stride", str(a.settle_stride)]
            raise SystemExit(subprocess.call(cmd))
    if not a.skip_eval:
        evaluate(a.n_test, a.batch_size, a.settle_stride)


if __name__ == "__main__":
    main()
