"""Concepts during training: lens/filter overhead on LoRA steps, and the pirate-vs-arithmetic experiment.

    python bench/concepts.py [--quick] --json bench/results/concepts.json [--model smollm2-135m]

1. Train a 16× TopK SAE on the model's residual stream at `--layer` (generated pirate/plain answers plus the
   default corpus), label its latents by their top contexts.
2. Step time of LoRA fine-tuning: plain, with the ConceptLens, with lens + a suppress filter — interleaved,
   medians; `lens_overhead` = lens step / plain step − 1.
3. The experiment: fine-tuning data of arithmetic answers, `--style-share` of them (default 0.75) in pirate speak.
   Plain fine-tuning with the lens; the style concept is picked automatically from the lens's timeline (of its
   `--lens-top` latents by |attribution|, those more active on pirate than on plain answers to the same
   questions, weighted by that contrast, combined into one direction). Then fine-tuning with that concept
   suppressed (gradient filter), ablated (CAFT-style forward projection) and steered into (preventative
   steering, coefficient fitted on the base model's training loss, plus a lighter `--light-coef`), and all again
   trained longer (`--long-factors`, default twice as long). A control fine-tune on the same questions with every
   answer plain (`arith_acc_no_style`) shows the arithmetic a perfect style filter could keep. Style rate and
   arithmetic accuracy on held-out questions, scored without filters, compared per question against plain
   fine-tuning of the same length (`vs_plain`: paired difference with its 95% interval).
   `filtered_mode` names the run behind `style_rate_filtered` / `arith_acc_filtered`, chosen by a fixed rule: of
   the filters (same training length) that halve the style rate, the one that keeps the most arithmetic (`steer`
   when none does). The rule picks on the same held-out questions, so every run is reported next to it.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

from _common import machine, parser, write_json


def build_sae(model, tok, layer: int, quick: bool, out: Path):
    import torch

    from probescope.core.capture import capture
    from probescope.core.data import default_corpus
    from probescope.sae import SAEConfig, TensorSource, TrainConfig, save_sae, train_sae
    from probescope.sae.latents import latent_stats, save_latent_stats
    from probescope.core.store import make_contexts
    from probescope.tasks import pirate

    items = pirate.items(400, seed=123)  # disjoint seed from the fine-tuning items
    rng = random.Random(0)
    texts = [pirate.question(it, rng) + " " + pirate.answer(it, rng, pirate=i % 2 == 0) for i, it in enumerate(items)]
    n_ctx = 120 if quick else 600
    ctx = torch.cat([make_contexts(tok, texts, 64, None)[:n_ctx // 2], make_contexts(tok, list(default_corpus()), 64, n_ctx // 2)])
    acts = capture(model, ctx, [layer], batch_size=16).acts[layer]
    x = acts[:, 1:].reshape(-1, acts.shape[-1]) if tok.bos_token_id is not None and bool((ctx[:, 0] == tok.bos_token_id).all()) else acts.reshape(-1, acts.shape[-1])
    cfg = SAEConfig(d_in=x.shape[1], arch="topk", expansion=16, k=32, hook_in=f"resid_post.{layer}", model=getattr(model, "probescope_model_id", ""))
    tcfg = TrainConfig(tokens=(60 if quick else 200) * 1024, batch_size=1024, optimizer="signum", lr=2e-3, seed=0, device="cpu")
    sae = train_sae(TensorSource(x, hook_in=cfg.hook_in), cfg, tcfg, quiet=True)
    save_sae(sae, out)
    stats = latent_stats(sae, model, tok, ctx[: n_ctx // 2], top_n=6)
    save_latent_stats(stats, out)
    with torch.no_grad():
        rec = sae.decode(sae.encode(x))
        fvu = float(((rec - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    return sae, {"tokens": x.shape[0], "fvu": fvu}


def step_times(model_name: str, sae, layer: int, steps: int) -> dict:
    from probescope.finetune.concepts import ConceptLens, LearningFilter, sae_directions
    from probescope.finetune.runner import FinetuneConfig, LoraTrainer, collate, encode_example
    from probescope.core.models import load_model
    from probescope.tasks import pirate

    model, tok = load_model(model_name)
    train, _ = pirate.splits(64, 8, 0)
    enc = [encode_example(tok, e, 256) for e in pirate.examples(train)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = [collate(enc[i:i + 8], pad) for i in range(0, 64, 8)]
    trainer = LoraTrainer(model, FinetuneConfig(model=model_name, batch_size=8), total_steps=10_000)
    lens = ConceptLens(model, sae, layer)
    filt = LearningFilter(sae_directions(sae, list(range(8))), "suppress", layer=layer)
    times = {"plain": [], "lens": [], "lens_filter": []}
    trainer.train_step([batches[0]])  # warm-up
    for i in range(steps):
        b = [batches[i % len(batches)]]
        for mode in times:
            t = time.perf_counter()
            if mode == "plain":
                trainer.train_step(b)
            elif mode == "lens":
                with lens.attach(trainer.model):
                    trainer.train_step(b)
                    lens.step()
            else:
                with lens.attach(trainer.model), filt.attach(trainer.model):
                    trainer.train_step(b)
                    lens.step()
            times[mode].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"step_s": med, "lens_overhead": med["lens"] / med["plain"] - 1, "filter_overhead": med["lens_filter"] / med["plain"] - 1,
            "steps_timed": steps, "batch": "8 sequences of generated pirate-arithmetic chat"}


def pick_style_concept(model, tok, sae, layer: int, timeline_top: list[int], min_ratio: float = 1.0) -> list[dict]:
    """Among the lens's top latents, those more active on pirate than on plain answers to the same questions
    (chat-formatted, as in training), each weighted by that contrast (mean activation difference). With
    `min_ratio` > 1 only latents selective for pirate answers: mean activation there at least `min_ratio` times
    that on plain answers (keeps out latents busy on every answer)."""
    import torch

    from probescope.core.capture import capture
    from probescope.tasks import pirate

    items = pirate.items(60, seed=777)
    rng = random.Random(1)
    qs = [pirate.question(it, rng) for it in items]

    def chat(q, a):
        return tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False)

    pir = [chat(q, pirate.answer(it, random.Random(i), True)) for i, (q, it) in enumerate(zip(qs, items))]
    pla = [chat(q, pirate.answer(it, random.Random(i), False)) for i, (q, it) in enumerate(zip(qs, items))]

    def mean_act(texts):
        cap = capture(model, texts, [layer], tokenizer=tok)
        x = cap.acts[layer][cap.attention_mask.bool()]
        return sae.encode(x).dense().mean(0)

    with torch.no_grad():
        on_pirate, on_plain = mean_act(pir), mean_act(pla)
    contrast = on_pirate - on_plain
    return [{"latent": i, "contrast": float(contrast[i]), "pirate": float(on_pirate[i]), "plain": float(on_plain[i])}
            for i in sorted(timeline_top, key=lambda i: -float(contrast[i]))
            if contrast[i] > 0 and on_pirate[i] >= min_ratio * on_plain[i]]


def train_or_reuse(cfg):
    """run_concept_training, or the metrics a finished earlier run with the very same config and the same version of
    the generated task left in its folder."""
    import dataclasses
    import json

    from probescope.finetune.train import run_concept_training
    from probescope.tasks import pirate

    folder = Path(cfg.out)
    try:
        if json.loads((folder / "config.json").read_text()) == json.loads(json.dumps(dataclasses.asdict(cfg))):
            metrics = json.loads((folder / "metrics.json").read_text())
            if metrics.get("eval", {}).get("task_version") == pirate.VERSION:
                return metrics
    except (OSError, ValueError):
        pass
    return run_concept_training(cfg)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=None, help="default: one third of the depth")
    p.add_argument("--out", default="runs/bench-concepts")
    p.add_argument("--lora-upto-layer", action="store_true",
                   help="adapters only in blocks 0..layer, so every update passes through the filtered layer")
    p.add_argument("--lens-top", type=int, default=320, help="how many of the lens's top latents to consider for the style concept")
    p.add_argument("--min-ratio", type=float, default=1.0,
                   help="style latents: mean activation on pirate answers >= this times that on plain ones (1: any positive contrast)")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-eval", type=int, default=None)
    p.add_argument("--style-share", type=float, default=0.75, help="share of training answers in pirate speak (rest plain)")
    p.add_argument("--long", action="store_true", help="also the train-longer runs in --quick (always in a full run)")
    p.add_argument("--long-factors", default="2", help="train-longer runs at these multiples of the epochs, e.g. 2,4")
    p.add_argument("--light-coef", type=float, default=2.0, help="a second, lighter preventative-steering coefficient")
    args = p.parse_args()
    from probescope.finetune.train import ConceptTrainConfig, paired_diff
    from probescope.finetune.concepts import filter_spec, load_timeline
    from probescope.core.hooks import n_layers
    from probescope.core.models import load_model

    t_start = time.perf_counter()
    out = Path(args.out)
    model, tok = load_model(args.model)
    layer = args.layer if args.layer is not None else n_layers(model) // 3
    sae, sae_info = build_sae(model, tok, layer, args.quick, out / "sae")  # seeded: a rerun rebuilds the same SAE
    res: dict = {"model": args.model, "layer": layer, "sae": sae_info, "machine": machine()}
    res.update(step_times(args.model, sae, layer, steps=3 if args.quick else 8))

    n_train = args.n_train or (96 if args.quick else 160)
    n_eval = args.n_eval or 200
    epochs = 2.0
    base = dict(model=args.model, data="pirate-arith", layer=layer, lens=str(out / "sae"), n_train=n_train,
                n_eval=n_eval, epochs=epochs, batch_size=8, quiet=True, drift_every=4,
                lora_upto_layer=args.lora_upto_layer, style_share=args.style_share)
    plain = train_or_reuse(ConceptTrainConfig(out=str(out / "plain"), **base))
    top = [i for i, _ in load_timeline(out / "plain").top(args.lens_top)]
    chosen = pick_style_concept(model, tok, sae, layer, top, args.min_ratio)  # `model` is the untouched base model
    ids, weights = [c["latent"] for c in chosen] or [0], [c["contrast"] for c in chosen] or [0.0]
    specs = {"suppress": filter_spec("suppress", ids, weights), "ablate": filter_spec("ablate", ids, weights),
             "steer": filter_spec("steer", ids, weights, value="auto")}
    runs = {"plain": plain}
    # control: the same questions with every answer plain: the arithmetic a perfect style filter could keep
    runs["no_style"] = train_or_reuse(ConceptTrainConfig(out=str(out / "no_style"), **{**base, "data": "plain-arith"}))
    for mode, spec in specs.items():
        runs[mode] = train_or_reuse(ConceptTrainConfig(out=str(out / mode), filters=[spec], **base))
    light = filter_spec("steer", ids, weights, value=args.light_coef)
    runs["steer_light"] = train_or_reuse(ConceptTrainConfig(out=str(out / "steer_light"), filters=[light], **base))
    factors = [float(f) for f in args.long_factors.split(",")] if (args.long or not args.quick) else []

    def long_tag(f: float) -> str:
        return "_long" if f == 2 else f"_long{f:g}"

    for f in factors:  # train longer: does the filtered style come back by another route?
        longer, tag = {**base, "epochs": epochs * f}, long_tag(f)
        runs["plain" + tag] = train_or_reuse(ConceptTrainConfig(out=str(out / ("plain" + tag)), **longer))
        for mode, spec in specs.items():
            runs[mode + tag] = train_or_reuse(ConceptTrainConfig(out=str(out / (mode + tag)), filters=[spec], **longer))
    ev = {k: v["eval"] for k, v in runs.items()}

    def vs_plain(name: str) -> dict:  # paired over the same held-out questions, against plain of the same length
        ref = "plain" + name[name.index("_long"):] if "_long" in name else "plain"
        return {"arith": paired_diff(ev[name]["correct"], ev[ref]["correct"]),
                "style": paired_diff(ev[name]["styled"], ev[ref]["styled"])}
    halving = [m for m in (*specs, "steer_light") if ev[m]["style_rate"] <= 0.5 * ev["plain"]["style_rate"]]
    filtered = max(halving, key=lambda m: ev[m]["arith_acc"]) if halving else "steer"
    res.update({
        "concept": {"latents": len(chosen), "of_lens_top": args.lens_top, "min_ratio": args.min_ratio, "top": chosen[:12],
                    "steer_coef": runs["steer"].get("steer_coef", {}).get(specs["steer"])},
        "top_concepts_plain": plain["top_concepts"][:12],
        "filtered_mode": filtered,
        "filtered_mode_rule": "of the filters that halve the style rate, the one with the highest arithmetic (steer if none)",
        "style_rate_plain": ev["plain"]["style_rate"], "arith_acc_plain": ev["plain"]["arith_acc"],
        "style_rate_filtered": ev[filtered]["style_rate"], "arith_acc_filtered": ev[filtered]["arith_acc"],
        "arith_diff_filtered": vs_plain(filtered)["arith"],  # filtered − plain, paired, with its 95% interval
        "style_rate_suppress": ev["suppress"]["style_rate"], "arith_acc_suppress": ev["suppress"]["arith_acc"],
        "style_rate_ablated": ev["ablate"]["style_rate"], "arith_acc_ablated": ev["ablate"]["arith_acc"],
        "runs": {k: {"style_rate": e["style_rate"], "arith_acc": e["arith_acc"], "n": e["n"], "steps": runs[k]["steps"],
                     "arith_acc_styled": e["arith_acc_styled"], "arith_acc_unstyled": e["arith_acc_unstyled"],
                     "final_loss": runs[k]["final_loss"], "samples": e["samples"][:3],
                     **({"vs_plain": vs_plain(k)} if not k.startswith("plain") else {})} for k, e in ev.items()},
        "arith_acc_no_style": ev["no_style"]["arith_acc"],
        "style_rate_steer_light": ev["steer_light"]["style_rate"], "arith_acc_steer_light": ev["steer_light"]["arith_acc"],
        "light_coef": args.light_coef, "style_share": args.style_share,
        "long": {f"{f:g}x": {m: {"style_rate": ev[m + t]["style_rate"], "arith_acc": ev[m + t]["arith_acc"]}
                             for m in ("plain", *specs) for t in [long_tag(f)]} for f in factors},
        "n_train": n_train, "n_eval": n_eval, "epochs": epochs, "lora_upto_layer": args.lora_upto_layer,
        "seconds": time.perf_counter() - t_start,
    })
    res["style_halved"] = res["style_rate_filtered"] <= 0.5 * res["style_rate_plain"]
    res["arith_within_2pts"] = abs(res["arith_acc_filtered"] - res["arith_acc_plain"]) <= 0.02
    write_json(args.json_path, res)


if __name__ == "__main__":
    main()
