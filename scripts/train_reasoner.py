"""Reproduce the shipped `smollm2-135m-reasoner` LoRA adapter, then evaluate it on held-out test problems.

    python scripts/train_reasoner.py                      # train (resumes after a kill), install, evaluate
    nohup python scripts/train_reasoner.py > runs/reasoner.log 2>&1 &   # the way it was run (2 shared CPU cores)
    python scripts/train_reasoner.py --skip-eval          # train + install only
    python scripts/train_reasoner.py --eval-only          # evaluate the installed adapter
    python scripts/train_reasoner.py --stage 2            # a second epoch: a new LoRA on stage 1 (merged)
    python scripts/train_reasoner.py --stage 3            # varied problems: a new LoRA on stages 1+2 (merged),
                                                          # written to runs/reasoner-stage3/candidate, then
                                                          # compared with stages 1+2 on held-out families
    python scripts/train_reasoner.py --stage 4            # stage 4 on top of the stage-3 candidate
    python scripts/train_reasoner.py --stage 5            # stage 4 with the distances written out
    python scripts/train_reasoner.py --stage 6            # stage 3 with option scans read smallest value first
    python scripts/train_reasoner.py --stage 7            # stage 4 with the option ending in the same digit
    python scripts/train_reasoner.py --stage 8            # on stage 3: a retry that switches the operation
    python scripts/train_reasoner.py --stage 9            # stage 8 with the switch written inline
    python scripts/train_reasoner.py --stage 10           # on stages 3+8 (v2): stage 8's recipe, new problems
    python scripts/train_reasoner.py --stage 11 --skip-eval --threads 1   # on v2: half the problems free-form
    python scripts/train_reasoner.py --compare-held-out   # that comparison again (all models, same problems)
    python scripts/train_reasoner.py --in-dist [NAME]     # a candidate (stages_1_2_3 ...) on the original test problems
    python scripts/train_reasoner.py --compare-held-out --held-out-split val --models stages_1_2 stages_1_2_3_8
    python scripts/train_reasoner.py --compare-held-out --held-out-split val --held-out-seed 1 --n-held-out 320 \
        --models stages_1_2_3_8                           # the deciding fresh sample (disjoint from seed 0)
    python scripts/train_reasoner.py --ship-v2            # install stages 3 and 8 as smollm2-135m-reasoner-v2

Training: SmolLM2-135M-Instruct + LoRA (r 16, alpha 32, q/k/v/o/gate/up/down), 640 generated train problems
(seed 0), batch 16 (8 x 2 accumulation), AdamW peak lr 5e-4, 4 warmup steps, cosine to 0.1x over one epoch
(40 steps, ~150k tokens).
Stage 2 (shipped as assets/.../stage2, merged after stage 1 at load): a fresh LoRA (same shape) on the merged
stage-1 model, 640 new train problems (seed 1), peak lr 3e-4, 2 warmup steps, cosine to 0.1x, 40 steps.
Stage 3 (issue #19, second recipe): a fresh LoRA (same shape) on the merged stages 1+2, trained on 1,200 problems of
the wide varied task (960 from `mcq.generate("train", 960, seed=2, wide=True)`: 7 kinds, 124 trained phrasings,
letters balanced, one in 5 with a failed first attempt (`mcq.with_retry`); plus 240 shown without options,
free-form), batch 8, peak lr 3e-4, 2 warmup steps, cosine to 0.1x, 150 steps. Stage 4: a fresh LoRA on stages
1+2+3, 400 problems (seed 3) where one in 5 also fails twice and takes the closest option, peak lr 2e-4, 50 steps.
Held-out families (phrasings and the `distance` kind never trained) measure whether it learnt the skill. Stages
5-7 were not shipped. Stage 8 (on stage 3, 480 problems, seed 6, 60 steps): after a failed scan the trace names the
operation it drops and tries another (`mcq.with_switch`); stages 1+2+3+8 ship as `smollm2-135m-reasoner-v2`
(assets/.../stage3 and stage8; docs/reasoner.md). Stages 9 (the switch written inline) and 10 (more of stage 8's
data, on stages 1+2+3+8) were not shipped. v2 on a fresh sample of 320 held-out-family problems: 62.2%, D 33.1%.
Stage 11 (#33: free-form answers; on v2, 480 problems, seed 8, 60 steps, lr 1e-4): half the problems without
options (the free-form trace), half lettered with stage 8's retries and switches; not shipped (docs/reasoner.md).
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


# Train problems of each stage (same train split, another seed stream; stage 6 reuses stage 3's, scanned by value).
STAGE_SEED = {1: SEED, 2: 1, 3: 2, 4: 3, 5: 4, 6: 2, 7: 5, 8: 6, 9: 6, 10: 7, 11: 8}
STAGE3_DIR = ROOT / "runs" / "reasoner-stage3"
STAGE_DIR = {3: STAGE3_DIR, 4: ROOT / "runs" / "reasoner-stage4", 5: ROOT / "runs" / "reasoner-stage5",
             6: ROOT / "runs" / "reasoner-stage6", 7: ROOT / "runs" / "reasoner-stage7",
             8: ROOT / "runs" / "reasoner-stage8", 9: ROOT / "runs" / "reasoner-stage9",
             10: ROOT / "runs" / "reasoner-stage10", 11: ROOT / "runs" / "reasoner-stage11"}
FREE_EVERY = 5  # stage 3: one training problem in 5 is shown without options (free-form answer)
FREE_EVERY_STAGE = {11: 2}  # stages with another share of free-form problems (11: one in 2)
N_HELD_OUT = 160  # held-out-family test problems for the old/new comparison
MAX_NEW_HELD_OUT = 256  # a retry adds ~50 tokens to a trace (the first comparison used 200; both models reached the answer)
MAX_NEW_SWITCH = 320  # stage 8: a switch of operation adds ~90-150 tokens (265 on average in its training traces)
# Stage 3 (second recipe): 1,200 problems of the wide varied task (124 trained phrasings), one in 5 free-form, and
# one multiple-choice problem in 5 with a failed first attempt (`mcq.with_retry`); batch 8, 150 steps (~290k tokens,
# ~25 min on 2 idle cores). The first recipe (320 problems, 68 phrasings, no retries; docs/reasoner.md) reached 45.6%.
N_TRAIN_STAGE3 = 1200
RETRY_EVERY = 5
# Stage 4: a short fix on top of stage 3, whose retries looped when the second attempt failed too (39 of 160 held-out
# problems hit the token budget, 36 of them forced to D): 400 problems, one multiple-choice problem in 5 with one
# failed attempt and one in 5 with two (`with_retry(twice=True)`: then take the closest option), 50 steps.
# Stage 5: stage 4 again (on stage 3, replacing it), with the distances written out before the closest option
# (`with_retry(twice=True, distances=True)`): stage 4's model named the last option it had read, (D).
# Stage 6: stage 3's recipe and problems (on stages 1+2, in its place) with the option scan read smallest value first
# (`mcq.with_scan(p, "value")`): the letter scan always reads (D) last, and stage 3's failures fell on D.
# Stage 7: stage 4 again (on stage 3), but after two failures the trace takes the one option ending in the same digit
# as the second attempt (a miss by a multiple of 10; `with_retry(twice=True, last_digit=True)`): a lookup the model
# can do, and the letter it lands on is not the last one read. Problems where another option ends in that digit too
# fall back (one in 5: to a single retry; another one in 5: to the plain trace).
# Stage 8: stage 3's loops repeat a wrong operation word for word ("5 + 8 = 13" for a distance, three times). On
# stage 3, 480 problems (seed 6), 60 steps: per 5 multiple-choice problems one miscalculation retried ("Work it
# again", the same operation), one switch of operation after a wrong one (`mcq.with_switch`: "No option is 13, so
# adding is wrong. Try multiplying instead."; 12 of these 73 try the other wrong operation first), one
# switch after the wrong operation was made twice word for word (`with_switch(repeat=True)`), two plain traces.
# The scan after a switch ends on an exact match, which the model copies well, so a loop ends on a letter the
# problem decides rather than on (D).
# Stage 9: stage 8's problems and recipe (seed 6, in its place on stage 3) with each switch written inline, "Try
# adding instead: 6 + 8 = 14." (`with_switch(inline=True)`): stage 8's model often named the new operation and then
# copied the previous attempt's work line, symbol and all.
# Stage 10: more of stage 8's data. A fresh LoRA on stages 1+2+3+8 (merged: the v2 reasoner), stage 8's recipe on
# 480 new problems (seed 7), at half the learning rate: stage 8's figures sit on the bar (val: 60.0%, D 36.3%).
# Stage 11 (#33 item 2: free-form answers): v2 answers free-form problems at 0.55 on test but 0.48 on val and 0.45 on
# the held-out families (it saw one free-form problem in 5 in stage 3). A fresh LoRA on stages 1+2+3+8 (merged: v2),
# 480 problems of the wide varied task's train split, new seeds (8 for the lettered half, 108 for the free half):
# every second problem is shown without options with the free-form trace (`mcq.as_free`: work, "The result is N.",
# the checks), the other half lettered with stage 8's retries and switches (letters balanced), so the lettered skill
# is rehearsed; stage 10's learning rate (1e-4) and size (60 steps). Only the train split's trained phrasings: no
# held-out family, no val or test problem.
N_TRAIN_VARIED = {3: N_TRAIN_STAGE3, 4: 400, 5: 400, 6: N_TRAIN_STAGE3, 7: 400, 8: 480, 9: 480, 10: 480, 11: 480}
VARIED_STAGES = (3, 4, 5, 6, 7, 8, 9, 10, 11)
ON_STAGE3 = (4, 5, 7, 8, 9)  # stages trained on top of the stage-3 candidate
ON_STAGE8 = (10, 11)  # stages trained on top of the stage-3 and stage-8 candidates (v2)
SWITCH_STAGES = (8, 9, 10, 11)
SWITCH_DOUBLE = 0.35  # stage 8: share of the plain switches that first try the other wrong operation
TWICE_RULE = {4: {}, 5: {"distances": True}, 7: {"last_digit": True}}  # with_retry(twice=True, **rule) per stage


def candidate_name(stage: int) -> str:
    """The merged model a varied stage yields: "stages_1_2_3", "stages_1_2_3_4", ..., "stages_1_2_6"."""
    return f"{base_candidate(stage)}_{stage}"


def base_candidate(stage: int) -> str:
    """The merged model a varied stage trains on."""
    return "stages_1_2_3_8" if stage in ON_STAGE8 else "stages_1_2_3" if stage in ON_STAGE3 else "stages_1_2"


def last_stage(name: str) -> int:
    """The last stage merged into a candidate name ("stages_1_2_3_8_10" -> 10)."""
    return int(name.rsplit("_", 1)[-1])


def config(out_dir: str, stage: int = 1, threads: int = 2) -> FinetuneConfig:
    """The training configuration of a stage (`threads`: torch threads; 2 for the shipped stages)."""
    if stage in VARIED_STAGES:
        return FinetuneConfig(
            model=("smollm2-135m-reasoner-v2" if stage in ON_STAGE8 else
                   f"smollm2-135m-reasoner@stage{3 if stage in ON_STAGE3 else 2}"), out_dir=out_dir, r=16, alpha=32,
            lr=1e-4 if stage in ON_STAGE8 else 2e-4 if stage in ON_STAGE3 else 3e-4, warmup_steps=2,
            schedule="cosine", min_lr_ratio=0.1, batch_size=8, grad_accum=1, epochs=1.0, max_len=512 if stage in SWITCH_STAGES else 384,
            seed=STAGE_SEED[stage], checkpoint_every=10, threads=threads,
        )
    if stage == 2:
        return FinetuneConfig(
            model="smollm2-135m-reasoner@stage1", out_dir=out_dir, r=16, alpha=32, lr=3e-4, warmup_steps=2,
            schedule="cosine", min_lr_ratio=0.1, batch_size=8, grad_accum=2, epochs=1.0, max_len=320,
            seed=STAGE_SEED[2], checkpoint_every=5, threads=threads,
        )
    return FinetuneConfig(
        model="smollm2-135m", out_dir=out_dir, r=16, alpha=32, lr=5e-4, warmup_steps=4, schedule="cosine",
        min_lr_ratio=0.1, batch_size=8, grad_accum=2, epochs=1.0, max_len=320, seed=SEED, checkpoint_every=5,
        threads=threads, stop_after=STOP_AFTER,
    )


def stage3_problems(stage: int = 3) -> list:
    """The stage-3 training problems: the wide varied task's train split, every FREE_EVERY-th one free-form (stages
    in FREE_EVERY_STAGE: another share), every RETRY_EVERY-th multiple-choice one with a failed first attempt before
    its work."""
    import random

    every = FREE_EVERY_STAGE.get(stage, FREE_EVERY)
    n_free = N_TRAIN_VARIED[stage] // every
    mc = mcq.generate("train", N_TRAIN_VARIED[stage] - n_free, seed=STAGE_SEED[stage], wide=True)  # letters balanced
    if stage == 6:
        mc = [mcq.with_scan(p, "value") for p in mc]
    rng = random.Random(STAGE_SEED[stage])

    rule = TWICE_RULE.get(stage)

    def retried(i: int, p):
        slot = i % RETRY_EVERY
        if stage in SWITCH_STAGES:
            inline = stage == 9
            if slot == RETRY_EVERY - 1:
                return mcq.with_retry(p, rng, wrong_op=0.0) or p
            if slot == RETRY_EVERY - 2:
                double = rng.random() < SWITCH_DOUBLE
                return (mcq.with_switch(p, rng, double=double, inline=inline)
                        or mcq.with_switch(p, rng, inline=inline) or p)
            if slot == RETRY_EVERY - 3:
                return mcq.with_switch(p, rng, repeat=True, inline=inline) or p
            return p
        if slot == RETRY_EVERY - 1:
            return mcq.with_retry(p, rng) or p
        if rule is not None and slot == RETRY_EVERY - 2:
            return mcq.with_retry(p, rng, twice=True, **rule) or mcq.with_retry(p, rng) or p
        if stage == 7 and slot == RETRY_EVERY - 3:  # the last-digit rule fits fewer problems: a second slot
            return mcq.with_retry(p, rng, twice=True, **rule) or p
        return p

    mc = [retried(i, p) for i, p in enumerate(mc)]
    seen = {p.question for p in mc}
    free = [mcq.as_free(p) for p in mcq.generate("train", 2 * n_free, seed=STAGE_SEED[stage] + 100, wide=True)
            if p.question not in seen][:n_free]
    out, it = [], iter(free)
    for i, p in enumerate(mc):  # one free-form problem after every 4 multiple-choice ones (stage 11: after each)
        out.append(p)
        if i % (every - 1) == every - 2:
            out.append(next(it))
    return out


def _switches(p) -> bool:
    """The trace switches the operation (`mcq.with_switch`)."""
    return any(" instead" in x for x in (*p.retry, *p.work))


def train_stage3(out_dir: str, stage: int = 3, threads: int = 2) -> dict:
    """A new LoRA on the merged stages 1+2 (stages in ON_STAGE3: and the stage-3 candidate; ON_STAGE8: and the
    stage-3 and stage-8 candidates), on varied problems;
    the candidate lands in runs/reasoner-stage{N}/candidate."""
    cfg = config(out_dir, stage, threads)
    problems = stage3_problems(stage)
    assert not any(p.held_out for p in problems), "a held-out family leaked into training"
    t0 = time.time()
    model, tok = load_candidate(base_candidate(stage))
    res = train_lora(cfg, [mcq.to_messages(p) for p in problems], model=model, tokenizer=tok)
    dest = STAGE_DIR[stage] / "candidate"
    dest.mkdir(parents=True, exist_ok=True)
    weights = load_tensors(res.adapter_dir / "adapter_model.safetensors")
    save_tensors(dest / "adapter_model.safetensors", {k: v.half() for k, v in weights.items()},
                 metadata={"format": "pt"})
    shutil.copyfile(res.adapter_dir / "adapter_config.json", dest / "adapter_config.json")
    log = [json.loads(x) for x in (Path(out_dir) / "log.jsonl").read_text().splitlines() if x]
    meta = {
        "base": "smollm2-135m + stage-1 + stage-2 adapters (fp16, merged)"
                + "".join(f" + stage {k}" for k in base_candidate(stage).split("_")[3:]),
        "task": f"probescope.tasks.mcq wide varied task (kinds {', '.join(mcq.VARIED_KINDS)}; held-out families "
                f"excluded), train split, seed {STAGE_SEED[stage]}; one problem in {FREE_EVERY_STAGE.get(stage, FREE_EVERY)} free-form (seed "
                f"{STAGE_SEED[stage] + 100})"
                + (f"; one multiple-choice problem in {RETRY_EVERY} with a failed first attempt" if stage not in SWITCH_STAGES else "")
                + (f", one in {RETRY_EVERY} with two (then the closest option)" if stage in (4, 5) else "")
                + (", about one in 7 with two (then the option ending in the same digit)" if stage == 7 else "")
                + (", distances written out" if stage == 5 else "")
                + ("; per 5 multiple-choice problems: one miscalculation retried, one switch of operation after a "
                   "wrong one (a few through the other wrong one), one switch after the wrong one made twice word "
                   "for word" if stage in SWITCH_STAGES else "")
                + ("; switches written inline ('Try adding instead: 6 + 8 = 14.')" if stage == 9 else "")
                + ("; option scans read smallest value first" if stage == 6 else ""),
        "n_train_problems": len(problems), "n_free_form": sum(p.free for p in problems),
        "n_retry": sum(bool(p.retry) for p in problems),
        "n_retry_twice": sum(p.takes_closest for p in problems),
        "n_switch": sum(_switches(p) for p in problems),
        "n_switch_after_repeat": sum(_switches(p) and any("Work it again." in x for x in p.retry) for p in problems),
        "n_switch_double": sum(any("wrong too." in x for x in p.retry) for p in problems),
        "kinds": {k: sum(p.kind == k for p in problems) for k in mcq.VARIED_KINDS},
        "families": len({p.family for p in problems}),
        "config": {**cfg.to_dict(), "out_dir": f"runs/reasoner-stage{stage}"},
        "steps": res.steps, "train_tokens": res.tokens,
        "first_loss": res.losses[0] if res.losses else None,
        "final_loss": sum(res.losses[-5:]) / max(1, len(res.losses[-5:])),
        "train_seconds": round(res.seconds_total, 1) if res.seconds_total else None,
        "tokens_per_s_last_process": round(log[-1]["tok_s"], 1) if log else None,
        "command": f"python scripts/train_reasoner.py --stage {stage}",
    }
    atomic_write_json(dest / f"train_meta_stage{stage}.json", meta)
    print(f"stage {stage}: {res.steps} steps, {res.tokens} tokens, {time.time() - t0:.0f}s", flush=True)
    return meta


def candidate_dir(stage: int) -> Path:
    """The adapter folder of a stage's candidate: runs/reasoner-stage{N}/candidate, or for stages 3 and 8 the
    shipped copy (assets/.../stage3, stage8: `--ship-v2` copied those candidates) when runs/ no longer holds it."""
    d = STAGE_DIR[stage] / "candidate"
    shipped = ASSET / f"stage{stage}"
    if stage in (3, 8) and not (d / "adapter_model.safetensors").exists() and (shipped / "adapter_model.safetensors").exists():
        return shipped
    return d


def load_candidate(name: str):
    """(model, tokenizer) of "stages_1_2[_3[_4|_5]]": the shipped stages 1+2 with the named candidates merged."""
    from probescope.core.models.adapters import load_adapter
    from probescope.core.models.reasoner import load_reasoner

    model, tok = load_reasoner(stages=2)
    for k in name.split("_")[3:]:
        model = load_adapter(model, candidate_dir(int(k)), merge=True)
    return model, tok


def held_out_problems(n: int = N_HELD_OUT, split: str = "test", seed: int = 0) -> list:
    """Problems of the held-out families only (phrasings and kinds never trained), letters balanced. A seed other
    than 0 is a fresh sample: none of its questions is in the seed-0 samples (N_HELD_OUT each) of either split."""
    if seed:
        seen = {p.question for sp in ("test", "val") for p in mcq.generate(sp, N_HELD_OUT, seed=0, held_out=True)}
        probs = [p for p in mcq.generate(split, 2 * n, seed=seed, held_out=True) if p.question not in seen][:n]
        if len(probs) < n:
            raise RuntimeError(f"only {len(probs)} fresh held-out problems for seed {seed}: ask for fewer")
    else:
        probs = mcq.generate(split, n, seed=seed, held_out=True)
    trained = {p.question for st in VARIED_STAGES for p in stage3_problems(st)} | {
        p.question for s in (1, 2) for p in mcq.generate("train", N_TRAIN, seed=STAGE_SEED[s])}
    assert not trained & {p.question for p in probs}, "held-out problems overlap the training problems"
    assert all(p.held_out for p in probs)
    return probs


def compare_held_out(n: int, batch_size: int, stride: int, threads: int = 2, split: str = "test",
                     names: list[str] | None = None, seed: int = 0) -> dict:
    """Stages 1+2 (today's reasoner) and stages 1+2+candidate on the same held-out-family problems, greedy
    (the candidate only once it is trained; figures already in held_out_eval.json for the same n are kept).
    `split="val"`: the held-out families' val problems instead (a second, fresh sample; figures in
    held_out_eval_val.json); `names`: only these models; `seed` other than 0: a fresh sample disjoint from the
    seed-0 ones (held_out_eval_{split}_s{seed}.json)."""
    from probescope.exit.mcq_eval import evaluate_mcq

    torch.set_num_threads(threads)
    problems = held_out_problems(n, split, seed)
    out: dict = {"n": len(problems), "split": split, "seed": seed,
                 "kinds": {k: sum(p.kind == k for p in problems) for k in mcq.ALL_KINDS},
                 "families": len({p.family for p in problems})}
    tag = ("" if split == "test" else f"_{split}") + (f"_s{seed}" if seed else "")
    path = STAGE3_DIR / f"held_out_eval{tag}.json"
    prev = read_json(path) if path.exists() else {}
    for name in names or ("stages_1_2", *map(candidate_name, VARIED_STAGES)):
        if name in prev and prev[name].get("n") == len(problems):
            out[name] = prev[name]
            continue
        extra = [candidate_dir(int(k)) for k in name.split("_")[3:]]
        if any(not (d / "adapter_model.safetensors").exists() for d in extra):
            print(f"no candidate in {extra[-1]} yet: run --stage {last_stage(name)} first", flush=True)
            continue
        model, tok = load_candidate(name)
        t0 = time.time()
        rep = evaluate_mcq(model, tok, problems, batch_size=batch_size, settle_stride=stride,
                           max_new_tokens=MAX_NEW_SWITCH if last_stage(name) in SWITCH_STAGES else MAX_NEW_HELD_OUT)
        rows = rep.pop("rows")
        fam = {}
        for p, r in zip(problems, rows):
            fam.setdefault(p.family.rsplit("/", 1)[0], []).append(r["correct"])
        rep["accuracy_by_family_group"] = {k: round(sum(v) / len(v), 4) for k, v in sorted(fam.items())}
        rep["max_letter_share"] = round(max(rep["pred_letters"].values()) / len(rows), 4)
        rep["eval_seconds"] = round(time.time() - t0, 1)
        out[name] = rep
        atomic_write_json(STAGE3_DIR / f"held_out_rows{tag}_{name}.json", rows)
        atomic_write_json(path, {**prev, **out})
        print(name, {k: v for k, v in rep.items()}, flush=True)
        del model
    atomic_write_json(path, {**prev, **out})
    return out


def candidate_in_dist(n: int, batch_size: int, stride: int, threads: int = 2, name: str = "stages_1_2_3") -> dict:
    """A candidate ("stages_1_2_3", "stages_1_2_3_4", ...) on the original task's test problems (the ones the
    shipped figure, 74.2%, is on)."""
    from probescope.exit.mcq_eval import evaluate_mcq

    torch.set_num_threads(threads)
    problems = mcq.generate("test", n, seed=SEED)
    model, tok = load_candidate(name)
    t0 = time.time()
    rep = evaluate_mcq(model, tok, problems, batch_size=batch_size, settle_stride=stride,
                       max_new_tokens=MAX_NEW_HELD_OUT)
    rows = rep.pop("rows")
    rep["max_letter_share"] = round(max(rep["pred_letters"].values()) / len(rows), 4)
    rep["eval_seconds"] = round(time.time() - t0, 1)
    atomic_write_json(STAGE3_DIR / f"in_dist_rows_{name}.json", rows)
    atomic_write_json(STAGE3_DIR / "in_dist_eval.json", {"n": n, "split": "test", "seed": SEED, name: rep})
    print("in-distribution", rep, flush=True)
    return rep


def ship_v2() -> None:
    """Install the stage-3 and stage-8 candidates as `smollm2-135m-reasoner-v2` (assets/.../stage3, stage8; the
    v1 stages 1+2 are shared) and record their training and held-out figures in train_meta.json under "v2"."""
    meta = read_json(ASSET / "train_meta.json")
    v2: dict = {"stages": ["stage1", "stage2", "stage3", "stage8"]}
    for st in (3, 8):
        src, dest = STAGE_DIR[st] / "candidate", ASSET / f"stage{st}"
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copyfile(src / f, dest / f)
        v2[f"stage{st}"] = read_json(src / f"train_meta_stage{st}.json")
    for split, tag in (("test", ""), ("val", "_val"), ("val_s1", "_val_s1")):  # val_s1: the deciding fresh sample
        path = STAGE3_DIR / f"held_out_eval{tag}.json"
        if path.exists():
            ev = read_json(path)
            v2[f"held_out_families_{split}"] = {k: ev[k] for k in ("n", "split", "seed", "kinds", "families",
                                                                  "stages_1_2", "stages_1_2_3_8") if k in ev}
    meta["v2"] = v2
    atomic_write_json(ASSET / "train_meta.json", meta)
    print(f"installed {ASSET / 'stage3'} and {ASSET / 'stage8'} (smollm2-135m-reasoner-v2)", flush=True)


def train(out_dir: str, stage: int = 1, threads: int = 2) -> dict:
    if stage in VARIED_STAGES:
        return train_stage3(out_dir, stage, threads)
    cfg = config(out_dir, stage, threads)
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
    from probescope.exit.mcq_eval import evaluate_mcq
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
    ap.add_argument("--stage", type=int, choices=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11), default=1)
    ap.add_argument("--compare-held-out", action="store_true",
                    help="evaluate stages 1+2 and 1+2+candidate on the same held-out-family test problems")
    ap.add_argument("--n-held-out", type=int, default=N_HELD_OUT)
    ap.add_argument("--held-out-split", default="test", choices=("test", "val"),
                    help="--compare-held-out on the held-out families' test problems (default) or val problems")
    ap.add_argument("--held-out-seed", type=int, default=0,
                    help="--compare-held-out on a fresh sample (seed > 0; disjoint from the seed-0 test and val ones)")
    ap.add_argument("--models", nargs="+", default=None, metavar="NAME",
                    help="--compare-held-out only these (stages_1_2, stages_1_2_3, stages_1_2_3_8, ...)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of training and --compare-held-out")
    ap.add_argument("--in-dist", default=None, const="stages_1_2_3", nargs="?", metavar="CANDIDATE",
                    help="evaluate a candidate (default stages_1_2_3; or stages_1_2_3_4, stages_1_2_3_5) on the "
                         "original task's test problems (--n-test)")
    ap.add_argument("--ship-v2", action="store_true",
                    help="install the stage-3 and stage-8 candidates as smollm2-135m-reasoner-v2 under assets/")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--n-test", type=int, default=N_TEST)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--settle-stride", type=int, default=2, help="measure the forced answer every k reasoning tokens")
    a = ap.parse_args()
    if a.ship_v2:
        return ship_v2()
    if a.in_dist:
        candidate_in_dist(a.n_test, a.batch_size, a.settle_stride, a.threads, a.in_dist)
        return
    if a.compare_held_out:
        compare_held_out(a.n_held_out, a.batch_size, a.settle_stride, a.threads, a.held_out_split, a.models,
                         a.held_out_seed)
        return
    if not a.eval_only:
        out_dir = a.out_dir or str(STAGE_DIR[a.stage] if a.stage in STAGE_DIR else
                                   ROOT / "runs" / ("reasoner", "reasoner-stage2")[a.stage - 1])
        train(out_dir, a.stage, a.threads)
        if not a.skip_eval:  # a fresh process: generation right after training in the same one ran ~20x slower
            import subprocess

            cmd = [sys.executable, __file__, "--eval-only", "--n-test", str(a.n_test),
                   "--batch-size", str(a.batch_size), "--settle-stride", str(a.settle_stride)]
            if a.stage in VARIED_STAGES:
                cmd = [sys.executable, __file__, "--compare-held-out", "--n-held-out", str(a.n_held_out),
                       "--batch-size", str(a.batch_size), "--settle-stride", str(a.settle_stride)]
            raise SystemExit(subprocess.call(cmd))
    if not a.skip_eval:
        evaluate(a.n_test, a.batch_size, a.settle_stride)


if __name__ == "__main__":
    main()
