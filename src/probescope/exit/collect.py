"""`probescope exit collect`: full greedy reasoning on generated problems, the residual stream at candidate probe
layers for every reasoning token, the final (forced) answers, and the forced-answer curve at checkpoints.

Saved in a run folder: `acts.safetensors` (`layer{L}`: `[N, T, D]` fp16, zero padded; `lengths`: `[N]`) and
`collect.json` (config, per-problem rows: split, gold, final answer, token ids, checkpoints, curve).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .answer import LETTERS, cue_ids, forced_curve_ids, letter_token_ids
from .formats import FormatOptions, ReasoningFormat, boundary_test, get_format
from .free import free_curve, normalize_answer
from ..core.hooks import n_layers
from ..core.io import atomic_write_json, load_tensors, read_json, save_tensors
from ..core.options import ModelOptions, RunOptions, option
from ..core.progress import progress
from ..report.job import open_job
from ..tasks import mcq
from ..tasks.problem_file import DEFAULT_COUNTS, MIN_TRAIN, read_problem_splits
from ..tasks.problem_file import KIND as FILE_KIND
from .generate import ExitPolicy, generate_with_exit
from .prompts import make_prompts


@dataclass
class CollectConfig(FormatOptions, ModelOptions, RunOptions):
    """Full greedy reasoning on generated problems (or yours, --data); activations at candidate layers, answers,
    forced-answer curves.

    What to collect: problems per split (seeded), candidate layers (empty: four spread over the depth), the curve
    stride (forced answer every `stride` tokens, plus at every newline), decoding limits."""

    DEFAULTS = {"model": "smollm2-135m-reasoner-v2", "threads": 1}  # threads 1: fastest on a busy few-core machine
    out: str = option("runs/exit-collect", "run folder: acts.safetensors, collect.json, report.html")
    n_train: int | None = option(
        None, f"train problems the probe is fitted on: `exit train` needs at least {MIN_TRAIN}; 0 collects val/test "
              "only (default 160 generated; with --data see --data)", min=MIN_TRAIN, also=(0,))
    n_val: int | None = option(None, "val problems the layer and τ are chosen on: `exit train` needs 1, calibration "
                                     "certifies τ from 99 (default 100 generated; with --data see --data)", min=0)
    n_test: int | None = option(None, "test problems exit eval reports on (default 50 generated; with --data see "
                                      "--data)", min=0)
    data: str = option(
        "", "your problems: a JSONL/CSV file with question, options (list, or 'a|b|c' in CSV), answer (letter or "
            "option text), optional split (train/val/test). --n-train/--n-val/--n-test are counts: without a "
            "split column they take that many rows drawn by --seed (rows left over unused), and the splits "
            f"without a count share the rest in the shares 160/100/50 with at least {MIN_TRAIN} train and 1 val "
            "problem (so a file of 10 rows or more works without counts); with a split column a count takes the "
            "first N rows of that split. Default: generated problems")
    layers: list[int] = option(list, "candidate probe layers, e.g. 10,15,20 (default: four spread)")
    stride: int = option(4, "forced-answer curve every N tokens (plus every newline)", min=1)
    max_new_tokens: int = option(160, "reasoning token budget per problem", min=1)
    batch_size: int = option(16, "problems decoded together", min=1)
    shots: int = option(1, "few-shot examples for models without a chat template", min=0)
    n_val_held_out: int = option(
        0, "held-out-family val problems added to the generated val split (phrasings and kinds the reasoner never "
           "trained on, `tasks.mcq` held_out): τ is then calibrated on both family groups and calibration.json "
           "reports its guarantee per group", min=0)
    n_test_held_out: int = option(
        0, "held-out-family test problems added to the generated test split: exit eval then reports every method "
           "per family group too", min=0)
    answers: str = option("mcq", "mcq (option letters) | free (free-form answers: the generated arithmetic problems "
                                 "without options, or --data rows without options; an answer-stability probe decides "
                                 "the exit)", choices=("mcq", "free"))
    quiet: bool | None = option(None, cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        for split in ("val", "test"):
            n = getattr(self, f"n_{split}_held_out")
            if self.data and n:
                raise ValueError(f"--n-{split}-held-out {n} adds generated held-out-family problems, but with --data "
                                 f"the {split} problems are your file's: leave it at 0 (put problems of other families "
                                 f"into the file's {split} split instead)")
        if not self.data:  # generated problems: the counts not given are the defaults
            for k, v in DEFAULT_COUNTS.items():
                if getattr(self, f"n_{k}") is None:
                    setattr(self, f"n_{k}", v)


def default_layers(n: int) -> list[int]:
    """Four candidate layers spread over the middle and late blocks."""
    return sorted({max(0, min(n - 1, round(n * f))) for f in (0.35, 0.5, 0.65, 0.8)})




def checkpoints(fed_ids: Sequence[int], cut: int, nl: int | Callable[[int], bool], boundary: str = "newline",
                every: int = 8, cue_first: int | None = None) -> list[tuple[int, int]]:
    """(cut, probe index) of each policy check a live run makes: "every" checks cut t with the probe after token
    t-1; otherwise a boundary token fed at index j (`nl`: the newline id, or a token test such as
    `formats.boundary_test`) checks with the probe after token j, cutting before it when it is the cue's first
    token `cue_first` (default `nl`: the newline of `\nAnswer: (`), else after it. Only cuts <= the full reasoning."""
    if boundary == "every":
        return [(t, t - 1) for t in range(every, cut + 1, every)]
    hit = nl if callable(nl) else (lambda tok: tok == nl)
    first = cue_first if cue_first is not None else (None if callable(nl) else nl)
    out = []
    for j, tok in enumerate(fed_ids):
        if hit(tok):
            c = j if tok == first else j + 1
            if c <= cut:
                out.append((c, j))
    return out


def live_trace(row: Any, policy: ExitPolicy, tokenizer: Any, fmt: ReasoningFormat | str | None = None,
               classes: Sequence[str] = LETTERS) -> "Trace":
    """A live run's row (`ExitRow` with a probe trace) as an offline trace of `policy`'s checks: the checks a run
    with that policy makes (the boundaries `collect` records, `checkpoints`), the probe's confidence there and its
    own prediction (the answer in mode "probe"; the forced answer is not computed here). `policy.replay` on it says
    where that policy stops the reasoning (tested: where live decoding stops it)."""
    from .calibrate import Trace

    fmt = get_format(fmt)
    cue_first = cue_ids(tokenizer, fmt.cue)[0]
    cps = checkpoints(row.fed_ids, row.cut, boundary_test(tokenizer, policy.boundary), policy.boundary, policy.every,
                      cue_first)
    if cps and row.probe_trace is None:
        raise ValueError("the row has no probe trace: run generate_with_exit with a probe")
    P = row.probe_trace[[j for _, j in cps]] if cps else torch.zeros(0, len(classes))
    conf = np.array([policy.confidence(p) for p in P], dtype=float)
    return Trace("", "", "", row.answer, row.cut, np.array([c for c, _ in cps], dtype=int), conf,
                 [str(classes[int(p.argmax())]) for p in P])


def check_probe_fits(col: "Collected", probe: Any, allow_other_model: bool = False) -> None:
    """Raise a clear error unless `probe` reads this collect: its answer kind (letters or answer stability) and its
    model (`allow_other_model`: accept another model id with the same width)."""
    from .free import STABILITY_CLASSES

    free = is_free(col)
    want = list(STABILITY_CLASSES) if free else list(col.meta.get("letters", LETTERS))
    have = [str(c) for c in probe.classes]
    if have != want:
        kinds = ("free-form answers (an answer-stability probe, classes changes/stable)", "option letters")
        raise ValueError(f"the collect holds {kinds[0] if free else kinds[1]}, but the probe's classes are {have} "
                         f"({kinds[1] if free else kinds[0]}): train the probe on this collect (`probescope exit "
                         f"train --collect ...`), or collect{' without' if free else ' with'} --answers free")
    mid = col.meta.get("model_id")
    if not allow_other_model and mid is not None and probe.model_id is not None and mid != probe.model_id:
        raise ValueError(f"the probe was trained on model {probe.model_id!r}, but the collect is of {mid!r}: use a "
                         f"probe trained on {mid!r} (`probescope exit train --collect ...`), or pass "
                         "--allow-other-model if it is the same model under another name")


def row_checks(col: "Collected", row: dict) -> list[tuple[int, int]]:
    """The policy checks of a collected row: stored by collect (for its format's boundary), else at newlines."""
    if "checks" in row:
        return [(int(c), int(j)) for c, j in row["checks"]]
    return checkpoints(row["fed_ids"], row["cut"], col.meta["nl"])


def collect_problems(model: nn.Module, tokenizer: Any, problems: Sequence[mcq.MCQProblem], layers: Sequence[int], *,
                     stride: int = 4, max_new_tokens: int = 160, batch_size: int = 16, shots: int = 1,
                     quiet: bool | None = None, fmt: ReasoningFormat | str | None = None,
                     ) -> tuple[list[dict], dict[int, list[torch.Tensor]]]:
    """Run full reasoning on `problems` in the reasoning format `fmt` (default plain); return per-problem rows
    (with the policy checks of the format's boundary) and per-layer activations (one [n_fed, D] each).
    Free-form problems (no options) get the decoded forced answer at each curve cut (`curve_answers`)."""
    free = bool(problems) and problems[0].free
    fmt = get_format(fmt).free_form() if free else get_format(fmt)
    prompts = make_prompts(problems, tokenizer, shots, fmt)
    res = generate_with_exit(model, tokenizer, prompts, None, ExitPolicy(kind="never"), max_new_tokens=max_new_tokens,
                             batch_size=batch_size, record_layers=layers, quiet=quiet, fmt=fmt,
                             answers="free" if free else "mcq")
    c_ids = cue_ids(tokenizer, fmt.cue)
    lid = [] if free else letter_token_ids(tokenizer)
    at_boundary = boundary_test(tokenizer, fmt.boundary)
    rows, acts = [], {L: [] for L in layers}
    with progress(len(problems), "forced-answer curve", unit="problem", quiet=quiet) as bar:
        for p, prompt, r in zip(problems, prompts, res.rows):
            cps = checkpoints(r.fed_ids, r.cut, at_boundary, fmt.boundary, fmt.every, c_ids[0])
            cuts = sorted(set(range(0, r.cut + 1, stride)) | {c for c, _ in cps} | {r.cut})
            row = {"id": p.id, "split": p.split, "kind": p.kind, "family": p.family, "group": problem_group(p), "gold": normalize_answer(p.result) if free else p.letter,
                   "final": r.answer, "final_probs": r.answer_probs, "stop": r.stop, "cut": r.cut, "n_fed": r.generated,
                   "prompt": prompt, "prompt_ids": r.prompt_ids, "fed_ids": r.fed_ids, "checks": cps, "curve_cuts": cuts}
            if free:
                row["curve_answers"] = free_curve(model, tokenizer, r.prompt_ids, r.reasoning_ids, cuts, c_ids, batch_size)
            else:
                probs = forced_curve_ids(model, r.prompt_ids, r.reasoning_ids, cuts, c_ids, lid)
                row["curve_probs"] = [[round(v, 5) for v in row] for row in probs.tolist()]
            rows.append(row)
            for L in layers:
                acts[L].append(r.acts[L])
            bar.advance(1)
    return rows, acts


def run_collect(cfg: CollectConfig, model: Any = None, tokenizer: Any = None, *, quiet: bool | None = None) -> dict:
    """Collect train/val/test problems into the run folder `cfg.out` with `cfg.threads` torch threads; returns the
    summary it writes to metrics.json (per split). `model`, `tokenizer`: a loaded model instead of `cfg.model`."""
    splits, how = problem_splits(cfg)  # before the model loads: a bad file fails at once
    with open_job(cfg, "exit-collect", model, tokenizer) as job:
        return _collect(cfg, job, splits, how, cfg.quiet if quiet is None else quiet)


def _collect(cfg: CollectConfig, job: Any, splits: dict[str, list[mcq.MCQProblem]], how: str,
             quiet: bool | None) -> dict:
    from ..core.models.registry import model_id

    model, tok = job.model, job.tokenizer
    fmt = cfg.reasoning_format.free_form() if cfg.answers == "free" else cfg.reasoning_format
    fmt.check(tok, () if cfg.answers == "free" else LETTERS)  # before any decoding: the model must use the format's markers and keep the cue apart
    layers = cfg.layers or default_layers(n_layers(model))
    rows, acts = [], {L: [] for L in layers}
    for name in ("train", "val", "test"):
        if not splits[name]:
            continue
        r, a = collect_problems(model, tok, splits[name], layers, stride=cfg.stride, max_new_tokens=cfg.max_new_tokens,
                                batch_size=cfg.batch_size, shots=cfg.shots, quiet=quiet, fmt=fmt)
        rows += r
        for L in layers:
            acts[L] += a[L]
    run = job.run
    run.write_config({**asdict(cfg), "layers": layers})
    save_collected(run.path, rows, acts, {"model": cfg.model, "model_id": model_id(model), "layers": layers,
                                          "nl": cue_ids(tok, "\n")[0], "format": fmt.to_dict(), "answers": cfg.answers,
                                          "letters": list(LETTERS), "config": asdict(cfg)})
    metrics = {**collect_summary(rows, cfg.model), "problems": how}
    run.write_metrics(metrics)
    return metrics


def problem_splits(cfg: CollectConfig) -> tuple[dict[str, list[mcq.MCQProblem]], str]:
    """The problems to collect, from `cfg.data` (its splits, or drawn by seed: counts are counts, see
    `tasks.problem_file`) or generated, and a sentence saying where they came from and how many."""
    if cfg.data:
        splits, how = read_problem_splits(cfg.data, cfg.n_train, cfg.n_val, cfg.n_test, seed=cfg.seed,
                                          answers=cfg.answers)
        how = f"from {cfg.data}: {how}"
    else:
        kw = {"kinds": ("arith",)} if cfg.answers == "free" else {}  # free: the arithmetic problems, no options
        splits = mcq.make_splits(cfg.n_train, cfg.n_val, cfg.n_test, seed=cfg.seed, **kw)
        for split in ("val", "test"):  # problems of the held-out families too: τ certified, methods reported per group
            n = getattr(cfg, f"n_{split}_held_out")
            if n:
                held = mcq.generate(split, n, seed=cfg.seed, held_out=True, **kw)
                splits[split] += [replace(p, id=f"{split}-held-{cfg.seed}-{i:05d}") for i, p in enumerate(held)]
        mcq.check_disjoint(splits)
        if cfg.answers == "free":
            splits = {k: [mcq.as_free(p) for p in v] for k, v in splits.items()}
        held = [f"{s} with {n} held-out-family problems besides" for s, n in (("val", cfg.n_val_held_out),
                                                                              ("test", cfg.n_test_held_out)) if n]
        how = f"generated by seed {cfg.seed}: {cfg.n_train}/{cfg.n_val}/{cfg.n_test} (train/val/test)" + (
            ", " + ", ".join(held) if held else "")
    return splits, how


def problem_group(p: mcq.MCQProblem) -> str:
    """A problem's family group: "file" (from --data), "held-out" (a held-out family) or "original"."""
    return "file" if p.kind == FILE_KIND else "held-out" if p.held_out else "original"


def row_group(row: dict) -> str:
    """A collected row's family group (rows of collects made before groups were recorded: from kind and family)."""
    if row.get("group"):
        return row["group"]
    return "file" if row.get("kind") == FILE_KIND else "held-out" if mcq.is_held_out_family(row.get("family", "")) \
        else "original"


def collect_summary(rows: Sequence[dict], model: str) -> dict:
    """Per split: problems, accuracy of the full-reasoning answer, mean reasoning tokens; answer letters (plot)."""
    splits = {}
    for name in ("train", "val", "test"):
        rs = [r for r in rows if r["split"] == name]
        if rs:
            splits[name] = {"n": len(rs), "accuracy": sum(r["final"] == r["gold"] for r in rs) / len(rs),
                            "mean_reasoning_tokens": sum(r["cut"] for r in rs) / len(rs),
                            "hit_token_budget": sum(r["stop"] == "max_tokens" for r in rs) / len(rs)}
            groups = {g: sum(row_group(r) == g for r in rs) for g in ("original", "held-out", "file")}
            if sum(v > 0 for v in groups.values()) > 1:  # a mixed split: how many of each family group
                splits[name]["groups"] = {g: v for g, v in groups.items() if v}
    plot = {"type": "bar", "title": f"{model}: final answers by letter, all splits",
            "x_label": "letter", "y_label": "problems", "labels": list(LETTERS),
            "values": [sum(r["final"] == L for r in rows) for L in LETTERS]}
    free = any("curve_answers" in r for r in rows)  # free-form answers: no letters to count
    return {"model": model, "splits": splits, "plots": [] if free else [plot]}


def save_collected(path: Path, rows: list[dict], acts: dict[int, list[torch.Tensor]], meta: dict) -> None:
    lengths = torch.tensor([len(a) for a in next(iter(acts.values()))], dtype=torch.long) if acts else torch.zeros(0)
    T = int(lengths.max()) if len(lengths) else 0
    tensors = {"lengths": lengths}
    for L, lst in acts.items():
        D = next((a.shape[-1] for a in lst if a.numel()), 0)
        x = torch.zeros((len(lst), T, D), dtype=torch.float16)
        for i, a in enumerate(lst):
            if a.numel():
                x[i, : len(a)] = a
        tensors[f"layer{L}"] = x
    save_tensors(path / "acts.safetensors", tensors)
    atomic_write_json(path / "collect.json", {**meta, "rows": rows})


@dataclass
class Collected:
    """A loaded collect run: `rows` (dicts), `acts[L]` `[N, T, D]` fp16, `lengths` `[N]`, `meta`."""

    rows: list[dict]
    acts: dict[int, torch.Tensor]
    lengths: torch.Tensor
    meta: dict

    def split(self, name: str) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r["split"] == name]

    def mask(self, idx: Sequence[int]) -> torch.Tensor:
        T = next(iter(self.acts.values())).shape[1]
        return torch.arange(T).unsqueeze(0) < self.lengths[list(idx)].unsqueeze(1)


def merge_collected(paths: Sequence[str | Path], out: str | Path) -> Collected:
    """Several `exit collect` runs of one model, layers, format and answer kind as one collect written to `out`
    (rows in order, activations padded to the longest reasoning); its `merged_from` names the sources. Refuses runs
    that differ in any of those, or that share a problem id."""
    cols = [load_collected(p) for p in paths]
    if not cols:
        raise ValueError("no collect runs to merge: give at least one `exit collect` run folder")
    keys = ("model_id", "layers", "nl", "format", "answers")
    for p, c in zip(paths[1:], cols[1:]):
        bad = [k for k in keys if c.meta.get(k) != cols[0].meta.get(k)]
        if bad:
            raise ValueError(f"{p} differs from {paths[0]} in {', '.join(bad)}: merge collects of one model, layers, "
                             "format and answer kind")
    rows = [r for c in cols for r in c.rows]
    seen: dict[str, int] = {}
    for r in rows:
        seen[r["id"]] = seen.get(r["id"], 0) + 1
    dup = sorted(k for k, v in seen.items() if v > 1)
    if dup:
        raise ValueError(f"problem id {dup[0]!r} is in more than one run: merge collects of other seeds")
    acts = {L: [c.acts[L][i, : int(c.lengths[i])] for c in cols for i in range(len(c.rows))] for L in cols[0].acts}
    meta = {**cols[0].meta, "merged_from": [str(p) for p in paths]}
    Path(out).mkdir(parents=True, exist_ok=True)
    save_collected(Path(out), rows, acts, meta)
    return load_collected(out)


def is_free(col: Collected) -> bool:
    """A collect run of free-form answers (`--answers free`)."""
    return col.meta.get("answers") == "free"


def load_collected(path: str | Path) -> Collected:
    """Load a folder written by `probescope exit collect`."""
    path = Path(path)
    if not (path / "collect.json").exists():
        raise FileNotFoundError(f"{path}/collect.json does not exist: run `probescope exit collect --out {path}` first")
    meta = read_json(path / "collect.json")
    t = load_tensors(path / "acts.safetensors")
    acts = {int(k[5:]): v for k, v in t.items() if k.startswith("layer")}
    rows = meta.pop("rows")
    return Collected(rows, acts, t["lengths"], meta)
