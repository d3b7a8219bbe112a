"""Early exit during training: expert iteration (rejection-sampling fine-tuning) whose rollouts the exit probe cuts.

`run_selftrain(SelfTrainConfig(...))` / `probescope exit selftrain`: rounds of
1. *monitor*: the first `drift_n` problems of the round, reasoned in full (greedy, the probe reading along): the
   probe's agreement with the model's own final answers at τ (drift of a probe trained on the start model), and,
   with `drift="recalibrate"`, a new τ calibrated on them (`calibrate.calibrate`) for this round's rollouts;
2. *sample*: `k` rollouts per problem (greedy decoding, as the probe was calibrated: rollout j > 0 shows the
   problem with its options in a seeded other order, so the k rollouts differ), with early exit on (the probe's
   policy at τ, `generate_with_exit`) or off (`exit="off"`: full reasoning; the baseline, everything else the same:
   problems, option orders, seeds, LoRA steps);
3. *grade*: the answer (the probe's at an exit, else the forced answer after the reasoning) against the problem's
   letter; correct rollouts are kept as they were cut (`keep="exited"`) or completed (`keep="completed"`: the
   accepted rows reasoned again in full, those tokens counted, and kept only if the full answer is right too);
4. *train*: a LoRA (`finetune.runner.train_lora`) on the kept traces (prompt -> reasoning + `\\nAnswer: (X)`),
   merged into the weights before the next round (so round r's model = start + r merged adapters, rebuilt from the
   saved adapters: a resumed run and an uninterrupted one load the same weights);
5. *eval* (of the next round's model): full greedy reasoning on a fixed sample of held-out-family test problems
   (`mcq.generate("test", n_test, held_out=True)`; with `--data`, the file's test split): accuracy and the mean
   reasoning length of the model's own full generations.

With `drift="refit"`, at the start of every `refit_every`-th round (rounds R, 2R, ...) the probe is re-fitted on the
model as it is then (`exit.refit.refit_probe`: `refit_n` new problems reasoned in full, the same probe kind and layer
fitted on two thirds of them by `exit train`'s trainer, τ calibrated on the rest with `recal_target`/`recal_rule`),
and that probe and τ serve this round and the following ones (`refit_keep="better"`: unless the probe in use reads
those calibration problems at least as well, when it stays with its τ); with exit on, its tokens and seconds are counted in the
run's cost (`refit_tokens`, `refit_s`), per round and in the totals.

Per round (metrics.json `rounds`): rollout tokens generated (reasoning tokens decoded, the cost), monitor tokens,
sampling / training / monitor / eval wall-clock, accepted traces, accuracy and reasoning length, drift.
Each phase of a round writes its file atomically (`rounds/rNN/`); a rerun skips what is written and the LoRA
resumes from its checkpoints, so a run killed mid-round ends as an uninterrupted one would (tested on tiny-llama).
A round that accepts no trace stops the run with a note (`stopped`), not a crash.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from ..core.io import atomic_write_json, read_json
from ..core.options import LoraOptions, ModelOptions, RunOptions, option
from ..report.job import open_job
from ..tasks import mcq
from .answer import ANSWER_CUE, LETTERS

KIND = "exit-selftrain"
SOURCES = ("varied", "base", "wide")


@dataclass
class SelfTrainConfig(ModelOptions, RunOptions, LoraOptions):
    """Expert iteration whose rollouts an exit probe cuts (or not: --exit off, the baseline); per round the tokens,
    wall-clock, accepted traces, held-out accuracy, reasoning length and the probe's drift."""

    DEFAULTS = {"model": "smollm2-135m-reasoner-v2", "threads": 1,  # threads 1: fastest on a busy few-core machine
                "lora_steps": 8, "lora_batch": 8, "lora_lr": 2e-4, "lora_r": 8}
    out: str = option("runs/exit-selftrain", "run folder", flag="--out -o")
    exit: str = option("on", "on: rollouts cut by the probe at τ; off: full reasoning (the baseline; everything else "
                             "identical)", choices=("on", "off"))
    probe: str = option("", "exit probe folder/file (default: the one shipped for --model)")
    tau: float = option(-1.0, "τ (default -1: the τ of the probe's calibration.json)", min=0, max=1, also=(-1.0,))
    data: str = option("", "JSONL/CSV of your problems (question, options, answer[, split]); default: generated "
                           "problem families")
    families: str = option("varied", "generated training problems: varied (every trained kind) | base (arith/convert) "
                                     "| wide", choices=SOURCES)
    rounds: int = option(3, "rounds of sample -> grade -> fine-tune", min=1)
    problems: int = option(32, "problems per round (new ones each round)", min=1)
    k: int = option(2, "rollouts per problem (rollout j > 0: options reordered)", min=1)
    every: int = option(0, "check the probe every N reasoning tokens (0: at each newline, as the shipped probe was "
                           "calibrated)", min=0)
    keep: str = option("exited", "train on correct traces as cut (exited) or reasoned to the end (completed: those "
                                 "tokens are counted too)", choices=("exited", "completed"))
    max_new_tokens: int = option(160, "reasoning token budget per rollout", min=1)
    batch_size: int = option(16, "rollouts decoded together", min=1)
    n_test: int = option(48, "held-out-family test problems scored every round", min=1)
    eval_rounds: bool = option(True, "score the test sample as every round starts (--no-eval-rounds: only the start "
                                     "and the end)", flag="--eval-rounds/--no-eval-rounds")
    drift_n: int = option(16, "problems of each round reasoned in full to measure the probe's drift (0: none)", min=0)
    drift: str = option("measure", "measure the drift; recalibrate: also a new τ on those problems for the round's "
                                   "rollouts; refit: re-fit the probe and τ on the current model every --refit-every "
                                   "rounds (costs counted)", choices=("measure", "recalibrate", "refit"))
    refit_every: int = option(1, "--drift refit: re-fit as rounds R, 2R, ... start", min=1)
    refit_keep: str = option("new", "--drift refit: new (always use the re-fitted probe) | better (keep the probe in "
                                    "use when it reads the refit's calibration problems at least as well)",
                             choices=("new", "better"))
    refit_n: int = option(32, "--drift refit: new problems reasoned in full per refit (2/3 fit the probe, 1/3 "
                              "calibrate τ)", min=12)
    recal_target: float = option(0.95, "recalibration: target agreement with full reasoning", gt=0, max=1)
    recal_rule: str = option("empirical", "recalibration rule (crc needs >= 99 problems at 0.99)",
                             choices=("crc", "ucb", "empirical"))
    resume: bool = option(True, "continue a killed run in --out (--no-resume: start over)", flag="--resume/--no-resume")
    allow_other_model: bool = option(False, "accept a probe recorded for another model id (the same model under "
                                            "another name)")
    quiet: bool | None = option(None, cli=False)


# ------------------------------------------------------------------------------------------------------- problems
def reorder(problem: mcq.MCQProblem, rng: random.Random) -> mcq.MCQProblem:
    """The problem with its options in another (seeded) order; the answer index follows its option."""
    order = list(range(len(problem.options)))
    while len(order) > 1 and order == list(range(len(order))):
        rng.shuffle(order)
    return replace(problem, options=tuple(problem.options[i] for i in order), answer=order.index(problem.answer))


def rollout_problems(problems: Sequence[mcq.MCQProblem], k: int, seed: int, rnd: int) -> list[mcq.MCQProblem]:
    """k variants per problem (problem-major): the problem as given, then k-1 seeded reorderings of its options."""
    out = []
    for i, p in enumerate(problems):
        out.append(p)
        rng = random.Random(f"{seed}/{rnd}/{i}")
        out += [reorder(p, rng) for _ in range(k - 1)]
    return out


def check_gradable(problems: Sequence[mcq.MCQProblem], what: str) -> None:
    """Every problem must have options and a correct one among them (a letter to grade against)."""
    for p in problems:
        if p.free or not (0 <= p.answer < len(p.options)):
            raise ValueError(f"{what}: problem {p.id!r} has no gradable answer (options and the correct one's letter): "
                             "self-training grades each rollout's letter; give every row `options` and `answer`")


def read_selftrain_file(path: Path, seed: int) -> dict[str, list[mcq.MCQProblem]]:
    """The splits of a problem file for self-training; the reader's errors say what this command needs (the
    reader's floor of train rows is worded for `exit train`: here it is said for `exit selftrain`)."""
    from ..tasks.problem_file import MIN_TRAIN, read_problem_file

    try:
        return read_problem_file(path, seed=seed)
    except ValueError as e:
        msg = str(e)
        if "`exit train`" in msg:  # too few train rows: say it for this command, whose options differ
            what = msg.split("`exit train`")[0].rstrip(" ;:,")
            raise ValueError(f"--data {path}: {what}; `exit selftrain` reads a problem file as `exit collect` does, "
                             f"with at least {MIN_TRAIN} train rows (its rollouts) and a test row: add rows (a file "
                             f"of {MIN_TRAIN + 2} rows or more works without a split column), or give the file's "
                             f"split column at least {MIN_TRAIN} train rows and a test row") from None
        raise ValueError(f"--data {path} is not a source of gradable problems: {msg}") from None


class Source:
    """Where a round's problems and the fixed test sample come from: generated families or the user's file."""

    def __init__(self, cfg: SelfTrainConfig):
        self.cfg = cfg
        if cfg.data:
            path = Path(cfg.data)
            if not path.exists():
                raise FileNotFoundError(f"--data {cfg.data}: no such file (JSONL or CSV with question, options, answer)")
            splits = read_selftrain_file(path, cfg.seed)
            self.pool = splits["train"]
            self.test = splits["test"][: cfg.n_test]
            if not self.pool or not self.test:
                raise ValueError(f"--data {cfg.data}: needs rows for rollouts (split train) and for the test sample "
                                 f"(split test); it has {len(self.pool)} and {len(self.test)}: add rows or a split "
                                 "column")
            check_gradable(self.pool + self.test, f"--data {cfg.data}")
        else:
            self.pool = None
            self.test = mcq.generate("test", cfg.n_test, seed=cfg.seed, held_out=True)

    def round(self, rnd: int) -> list[mcq.MCQProblem]:
        """The problems of round `rnd` (new generated ones each round; a file's train rows in turn)."""
        n = self.cfg.problems
        if self.pool is None:
            kw = {"varied": self.cfg.families == "varied", "wide": self.cfg.families == "wide"}
            return mcq.generate("train", n, seed=self.cfg.seed * 1_000 + rnd + 1, **kw)
        return [self.pool[(rnd * n + i) % len(self.pool)] for i in range(n)]

    def refit(self, rnd: int, n: int) -> list[mcq.MCQProblem]:
        """The problems the probe is re-fitted on as round `rnd` starts: generated val-split problems (none is a
        rollout problem), or the file's train rows that follow the round's own."""
        if self.pool is None:
            kw = {"varied": self.cfg.families == "varied", "wide": self.cfg.families == "wide"}
            return mcq.generate("val", n, seed=self.cfg.seed * 1_000 + rnd + 1, **kw)
        start = (rnd + 1) * self.cfg.problems
        return [self.pool[(start + i) % len(self.pool)] for i in range(n)]


# ------------------------------------------------------------------------------------------------------- the job
def run_selftrain(cfg: SelfTrainConfig, model: Any = None, tokenizer: Any = None) -> dict:
    """Run (or resume) the rounds with `cfg.threads` torch threads; write the run folder; return its metrics. The
    start model: the one given (never changed: each round trains on a copy), else `cfg.model` loaded once."""
    with open_job(cfg, KIND, model, tokenizer) as job:
        return SelfTrain(cfg, job).run()


class SelfTrain:
    def __init__(self, cfg: SelfTrainConfig, job: Any = None):
        from ..probes.base import load_probe
        from ..report.runs import check_run_folder
        from .calibrate import load_calibration
        from .live import shipped_probe

        from ..report.job import Job

        self.cfg, self.job = cfg, job if job is not None else Job(cfg, KIND)
        self.source = Source(cfg)  # bad --data: refused before anything is written
        need_probe = cfg.exit == "on" or cfg.drift_n > 0
        self.probe = self.probe_path = None
        self.tau0, self.mode = math.inf, "probe"
        if need_probe:
            path = Path(cfg.probe) if cfg.probe else shipped_probe(cfg.model)
            if not path.exists():
                raise ValueError(f"{'--probe ' + cfg.probe if cfg.probe else f'no exit probe is shipped for {cfg.model!r}'}"
                                 f"{': no such file or folder' if cfg.probe else ''}: train one with `probescope exit "
                                 "collect` and `probescope exit train`, then pass --probe FOLDER"
                                 + ("" if cfg.exit == "on" else ", or use --drift-n 0"))
            p = load_probe(path)
            if not cfg.allow_other_model and p.model_id is not None and p.model_id != cfg.model:
                raise ValueError(f"the probe {str(path)!r} was trained on model {p.model_id!r}, not {cfg.model!r}: use a "
                                 f"probe trained on {cfg.model!r} (`probescope exit collect --model {cfg.model}` then "
                                 "`probescope exit train`), or --allow-other-model if it is the same model")
            if [str(c) for c in p.classes] != list(LETTERS):
                raise ValueError(f"the probe {str(path)!r} has classes {list(p.classes)}: self-training grades option "
                                 f"letters, so it needs an option probe (classes {list(LETTERS)})")
            if cfg.tau < 0:
                cal = load_calibration(path, p, "mcq")
                self.tau0, self.mode = cal["tau"], cal.get("mode", "probe")
            else:
                self.tau0 = cfg.tau
            if cfg.drift == "refit":
                from .refit import check_refittable

                check_refittable(p, cfg.refit_n)
            self.probe, self.probe_path = p, path
        check_run_folder(cfg.out, KIND)
        self.out = Path(cfg.out)

    # ---- model of round r: the start + the adapters of rounds < r, merged in order ---------------------------------
    def model(self, rnd: int):
        import copy

        from ..core.models.adapters import load_adapter

        model, tok = copy.deepcopy(self.job.model), self.job.tokenizer  # the start model itself is never trained
        for j in range(rnd):
            model = load_adapter(model, self.rdir(j) / "lora" / "adapter", merge=True)
        model.eval()
        return model, tok

    def rdir(self, rnd: int) -> Path:
        return self.out / "rounds" / f"r{rnd:02d}"

    def policy(self, tau: float):
        from .policy import ExitPolicy

        if self.cfg.exit == "off":
            return ExitPolicy(kind="never")
        return self.probe_policy(tau, self.mode)

    def probe_policy(self, tau: float, mode: str):
        from .policy import ExitPolicy

        return ExitPolicy(kind="probe", tau=tau, mode=mode, boundary="every" if self.cfg.every else "newline",
                          every=self.cfg.every or 8)

    def refits(self, rnd: int) -> bool:
        """Whether the probe is re-fitted as round `rnd` starts."""
        return (self.cfg.drift == "refit" and self.probe is not None and rnd > 0
                and rnd % self.cfg.refit_every == 0)

    def generate(self, model, tok, problems, policy, probe=None):
        from .generate import generate_with_exit
        from .prompts import make_prompts

        prompts = make_prompts(problems, tok)
        res = generate_with_exit(model, tok, prompts, probe, policy, max_new_tokens=self.cfg.max_new_tokens,
                                 batch_size=self.cfg.batch_size, quiet=True,
                                 allow_other_model=self.cfg.allow_other_model)
        return prompts, res

    # ---- the phases ----------------------------------------------------------------------------------------------
    def evaluate(self, model, tok) -> dict:
        """Full greedy reasoning on the fixed test sample: accuracy, its Wilson interval, mean reasoning length."""
        from .policy import ExitPolicy

        t0 = time.perf_counter()
        _, res = self.generate(model, tok, self.source.test, ExitPolicy(kind="never"))
        correct = [int(r.answer == p.letter) for r, p in zip(res.rows, self.source.test)]
        return {"accuracy": sum(correct) / len(correct), "accuracy_ci95": wilson(sum(correct), len(correct)),
                "n": len(correct), "correct": correct,
                "reasoning_tokens_mean": statistics.fmean(r.cut for r in res.rows),
                "reasoning_tokens": [r.cut for r in res.rows], "eval_s": time.perf_counter() - t0}

    def monitor(self, model, tok, problems, tau: float, probe: Any) -> dict:
        """The first drift_n problems reasoned in full with the probe reading: its agreement with the model's final
        answers (at τ, and at the end of the reasoning), and a recalibrated τ when asked."""
        from .calibrate import calibrate
        from .collect import live_trace
        from .policy import ExitPolicy

        t0 = time.perf_counter()
        probs = problems[: self.cfg.drift_n]
        base = self.probe_policy(math.inf, "probe")
        _, res = self.generate(model, tok, probs, ExitPolicy(kind="never"), probe)
        traces = [replace(live_trace(r, base, tok), id=p.id, split="val", gold=p.letter) for r, p in zip(res.rows, probs)]
        at_end = [int(r.probe_trace is not None and LETTERS[int(r.probe_trace[-1].argmax())] == r.answer)
                  for r in res.rows]
        out = {"n": len(probs), "tokens": sum(r.generated for r in res.rows),
               "agreement_at_end": sum(at_end) / len(at_end)}
        used = tau
        if self.cfg.drift == "recalibrate":
            cal = calibrate(traces, self.cfg.recal_target, self.cfg.recal_rule)
            used = cal.tau
            out.update(recalibrated_tau=None if math.isinf(cal.tau) else cal.tau, recal_note=cal.note)
        for name, t in (("tau_in", tau), ("tau_used", used)):
            o = base.with_tau(t).replay_all(traces)
            out[name] = None if math.isinf(t) else t
            out[f"agreement_{name[4:]}"] = o.agreement
            out[f"tokens_saved_{name[4:]}"] = o.tokens_saved
        out["seconds"] = time.perf_counter() - t0
        return out

    def sample(self, model, tok, problems, tau: float, rnd: int, probe: Any) -> dict:
        """k rollouts per problem, graded; the kept traces and the token and time accounting."""
        from .policy import ExitPolicy

        variants = rollout_problems(problems, self.cfg.k, self.cfg.seed, rnd)
        t0 = time.perf_counter()
        prompts, res = self.generate(model, tok, variants, self.policy(tau), probe if self.cfg.exit == "on" else None)
        rows = []
        for v, prompt, r in zip(variants, prompts, res.rows):
            rows.append({"id": v.id, "letter": v.letter, "prompt": prompt, "answer": r.answer, "stop": r.stop,
                         "generated": r.generated, "cut": r.cut, "correct": r.answer == v.letter,
                         "trace": tok.decode(r.reasoning_ids) + ANSWER_CUE + r.answer + ")"})
        completion_tokens = 0
        if self.cfg.keep == "completed" and self.cfg.exit == "on":
            todo = [i for i, r in enumerate(rows) if r["correct"] and r["stop"] == "exit"]
            if todo:
                _, full = self.generate(model, tok, [variants[i] for i in todo], ExitPolicy(kind="never"))
                for i, fr in zip(todo, full.rows):
                    completion_tokens += fr.generated
                    rows[i].update(correct=fr.answer == variants[i].letter, completed_tokens=fr.generated,
                                   trace=tok.decode(fr.reasoning_ids) + ANSWER_CUE + fr.answer + ")")
        seconds = time.perf_counter() - t0
        kept = [r for r in rows if r["correct"]]
        return {"rows": rows, "n": len(rows), "tau": None if math.isinf(tau) or self.cfg.exit == "off" else tau,
                "rollout_tokens": sum(r["generated"] for r in rows) + completion_tokens,
                "completion_tokens": completion_tokens,
                "exited": sum(r["stop"] == "exit" for r in rows), "accepted": len(kept),
                "rollout_accuracy": sum(r["correct"] for r in rows) / len(rows),
                "kept_reasoning_tokens_mean": statistics.fmean(r["cut"] for r in kept) if kept else None,
                "sampling_s": seconds}

    def refit(self, model, tok, probe: Any, tau: float, rnd: int) -> dict:
        """A probe like `probe` re-fitted on round `rnd`'s model, its τ calibrated (`exit.refit.refit_probe`)."""
        from .refit import refit_probe

        cfg = self.cfg
        return refit_probe(model, tok, self.source.refit(rnd, cfg.refit_n), probe, self.rdir(rnd) / "refit",
                           seed=cfg.seed * 1_000 + rnd, every=cfg.every, mode=self.mode, target=cfg.recal_target,
                           rule=cfg.recal_rule, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                           model_name=cfg.model, keep=cfg.refit_keep, current_tau=tau)

    def train(self, model, tok, sampled: dict, rnd: int) -> dict:
        from ..finetune.runner import FinetuneConfig, train_lora

        cfg = self.cfg
        examples = [(r["prompt"], r["trace"]) for r in sampled["rows"] if r["correct"]]
        ft = FinetuneConfig(model=cfg.model, out_dir=str(self.rdir(rnd) / "lora"), r=cfg.lora_r, alpha=2 * cfg.lora_r,
                            lr=cfg.lora_lr, batch_size=min(cfg.lora_batch, len(examples)), max_steps=cfg.lora_steps,
                            warmup_steps=min(2, cfg.lora_steps - 1), seed=cfg.seed * 1_000 + rnd, max_len=512,
                            checkpoint_every=max(1, cfg.lora_steps // 4), resume=True, quiet=True)
        res = train_lora(ft, examples, model=model, tokenizer=tok)
        return {"steps": res.steps, "examples": len(examples), "tokens": res.tokens, "train_s": res.seconds_total,
                "final_loss": res.losses[-1] if res.losses else None}

    # ---- the loop ------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        from ..core.progress import progress
        from ..report.runs import RunDir

        cfg = self.cfg
        run = RunDir(cfg.out, kind=KIND)
        conf = {k: v for k, v in asdict(cfg).items() if k not in ("quiet", "threads", "resume")}
        if not cfg.resume:
            shutil.rmtree(self.out / "rounds", ignore_errors=True)
        run.write_config(conf)
        rounds: list[dict] = []
        tau, probe, probe_from = self.tau0, self.probe, None
        stopped = ""
        with progress(cfg.rounds, "self-training", unit="round", quiet=cfg.quiet) as bar:
            for rnd in range(cfg.rounds):
                d = self.rdir(rnd)
                d.mkdir(parents=True, exist_ok=True)
                model, tok = self.model(rnd)
                ev = (phase(d / "eval.json", lambda: self.evaluate(model, tok))  # the model as this round starts
                      if rnd == 0 or cfg.eval_rounds else None)
                problems = self.source.round(rnd)
                ref = None
                if self.refits(rnd):  # the probe in use re-fitted on this round's model (read back from its folder)
                    from ..probes.base import load_probe

                    ref = phase(d / "refit.json", lambda: self.refit(model, tok, probe, tau, rnd))
                    probe, probe_from = load_probe(d / "refit" / "probe"), rnd
                    tau = math.inf if ref["tau"] is None else ref["tau"]
                mon = (phase(d / "monitor.json", lambda: self.monitor(model, tok, problems, tau, probe))
                       if cfg.drift_n > 0 and self.probe is not None else None)
                if mon is not None and cfg.drift == "recalibrate":
                    tau = math.inf if mon["recalibrated_tau"] is None else mon["recalibrated_tau"]
                samp = phase(d / "rollouts.json", lambda: self.sample(model, tok, problems, tau, rnd, probe))
                rec = round_record(rnd, ev, mon, samp, cfg)
                if probe is not None:
                    rec["probe_from"] = "start" if probe_from is None else f"refit in round {probe_from}"
                if ref is not None:
                    rec["refit"] = {k: v for k, v in ref.items() if k != "seconds"}
                    rec["refit_tokens"], rec["refit_s"] = ref["tokens"], ref["seconds"]
                if samp["accepted"] == 0:
                    stopped = (f"round {rnd} accepted no trace ({samp['n']} rollouts, none answered right): the run "
                               "stops here; more problems (--problems), rollouts (--k) or a stronger start model")
                    rounds.append(rec)
                    break
                tr = phase(d / "train.json", lambda: self.train(model, tok, samp, rnd))
                rec.update(train_s=tr["train_s"], train_steps=tr["steps"], train_examples=tr["examples"],
                           final_loss=tr["final_loss"])
                rounds.append(rec)
                bar.advance(1)
                bar.note(tokens=samp["rollout_tokens"], accepted=samp["accepted"])
        n_done = sum("train_s" in r for r in rounds)
        model, tok = self.model(n_done)
        self.rdir(n_done).mkdir(parents=True, exist_ok=True)
        final = phase(self.rdir(n_done) / "eval.json", lambda: self.evaluate(model, tok))
        m = summarize(cfg, rounds, final, stopped, self.tau0)
        run.write_metrics(m)
        return m


def phase(path: Path, fn) -> dict:
    """The phase's result from `path` when a run already wrote it, else computed and written (atomically)."""
    if path.exists():
        return read_json(path)
    out = fn()
    atomic_write_json(path, out)
    return json.loads(json.dumps(out))


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson interval of k/n as a list ([0, 1] when there is nothing to count)."""
    from ..core.stats import wilson as _wilson

    return [0.0, 1.0] if n == 0 else list(_wilson(k, n, z))


def round_record(rnd: int, ev: dict | None, mon: dict | None, samp: dict, cfg: SelfTrainConfig) -> dict:
    ev = ev or {"accuracy": None, "accuracy_ci95": None, "reasoning_tokens_mean": None, "eval_s": 0.0}
    rec = {"round": rnd, "accuracy": ev["accuracy"], "accuracy_ci95": ev["accuracy_ci95"],
           "reasoning_tokens_mean": ev["reasoning_tokens_mean"], "eval_s": ev["eval_s"],
           "rollouts": samp["n"], "rollout_tokens": samp["rollout_tokens"],
           "completion_tokens": samp["completion_tokens"], "exited": samp["exited"], "accepted": samp["accepted"],
           "rollout_accuracy": samp["rollout_accuracy"], "kept_reasoning_tokens_mean": samp["kept_reasoning_tokens_mean"],
           "sampling_s": samp["sampling_s"], "tau": samp["tau"]}
    if mon is not None:
        rec["drift"] = {k: v for k, v in mon.items() if k != "seconds"}
        rec["monitor_tokens"], rec["monitor_s"] = mon["tokens"], mon["seconds"]
    return rec


def summarize(cfg: SelfTrainConfig, rounds: list[dict], final: dict, stopped: str, tau0: float) -> dict:
    counted_monitor = cfg.exit == "on" and cfg.drift == "recalibrate"
    counted_refit = cfg.exit == "on" and cfg.drift == "refit"
    rollout = sum(r["rollout_tokens"] for r in rounds)
    refit = sum(r.get("refit_tokens", 0) for r in rounds)
    refit_s = sum(r.get("refit_s", 0.0) for r in rounds)
    monitor = sum(r.get("monitor_tokens", 0) for r in rounds)
    sampling = sum(r["sampling_s"] for r in rounds)
    train = sum(r.get("train_s", 0.0) for r in rounds)
    mon_s = sum(r.get("monitor_s", 0.0) for r in rounds)
    totals = {"rollout_tokens": rollout, "monitor_tokens": monitor, "refit_tokens": refit,
              "cost_tokens": rollout + (monitor if counted_monitor else 0) + (refit if counted_refit else 0),
              "sampling_s": sampling, "train_s": train, "monitor_s": mon_s, "refit_s": refit_s,
              "wallclock_s": sampling + train + (mon_s if counted_monitor else 0.0) + (refit_s if counted_refit else 0.0),
              "accepted": sum(r["accepted"] for r in rounds)}
    m: dict[str, Any] = {"model": cfg.model, "exit": cfg.exit, "keep": cfg.keep, "drift_policy": cfg.drift,
                         "tau_start": None if math.isinf(tau0) else tau0, "rounds_done": sum("train_s" in r for r in rounds),
                         "rounds": rounds, "final": final, "totals": totals, "stopped": stopped,
                         "monitor_counted": counted_monitor, "refit_counted": counted_refit,
                         "refit_rounds": [r["round"] for r in rounds if "refit" in r]}
    xs = [r["round"] for r in rounds]
    scored = [r for r in rounds if r["accuracy"] is not None]
    last = m["rounds_done"] == len(rounds)  # the final eval is of a model no round started with
    evx = [r["round"] for r in scored] + ([m["rounds_done"]] if last else [])
    accs = [r["accuracy"] for r in scored] + ([final["accuracy"]] if last else [])
    lens = [r["reasoning_tokens_mean"] for r in scored] + ([final["reasoning_tokens_mean"]] if last else [])
    m["plots"] = [
        {"type": "line", "title": "Rollout tokens generated per round", "x_label": "round", "y_label": "tokens",
         "series": [{"name": f"exit {cfg.exit}", "x": xs, "y": [r["rollout_tokens"] for r in rounds]}]},
        {"type": "line", "title": "Held-out-family accuracy (full reasoning) after each round", "x_label":
            "rounds trained", "y_label": "accuracy", "series": [{"name": f"exit {cfg.exit}", "x": evx, "y": accs}]},
        {"type": "line", "title": "Mean reasoning length of the model's own full generations", "x_label":
            "rounds trained", "y_label": "reasoning tokens", "series": [{"name": f"exit {cfg.exit}", "x": evx, "y": lens}]},
    ]
    drift = [r["drift"]["agreement_in"] for r in rounds if "drift" in r]
    if drift:
        m["plots"].append({"type": "line", "title": "Probe agreement with the model's final answers (the probe and τ "
                                    "in use as the round starts)", "x_label": "round", "y_label": "agreement",
                           "series": [{"name": f"drift {cfg.drift}", "x": [r["round"] for r in rounds if "drift" in r],
                                       "y": drift}]})
    return m


def show_selftrain(m: dict) -> None:
    """The rounds as a table, then one summary line."""
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=True)
    t = Table(title=f"{m['model']}: self-training, exit {m['exit']} (keep {m['keep']})")
    for c in ("round", "accuracy at start", "reasoning len", "rollout tokens", "accepted", "sampling s", "train s",
              "probe agreement"):
        t.add_column(c)
    refits = bool(m.get("refit_rounds"))
    if refits:
        t.add_column("refit tokens / s")
    for r in m["rounds"]:
        d = r.get("drift", {})
        acc, ln = r["accuracy"], r["reasoning_tokens_mean"]
        t.add_row(str(r["round"]), "" if acc is None else f"{acc:.3f}", "" if ln is None else f"{ln:.1f}",
                  str(r["rollout_tokens"]),
                  f"{r['accepted']}/{r['rollouts']}", f"{r['sampling_s']:.1f}", f"{r.get('train_s', 0.0):.1f}",
                  "" if not d else f"{d['agreement_in']:.3f}",
                  *([f"{r['refit_tokens']} / {r['refit_s']:.1f}" if "refit" in r else ""] if refits else []))
    con.print(t)
    f, tot = m["final"], m["totals"]
    con.print(f"[green]self-trained[/green] {m['rounds_done']} rounds (exit {m['exit']}): final held-out accuracy "
              f"{f['accuracy']:.3f} [{f['accuracy_ci95'][0]:.3f}, {f['accuracy_ci95'][1]:.3f}], "
              f"{tot['cost_tokens']} tokens generated and {tot['wallclock_s']:.0f} s spent (sampling + training"
              + (" + monitor" if m["monitor_counted"] else "") + (" + refits" if m.get("refit_counted") else "") + ")"
              + (refit_words(m) if m.get("refit_rounds") else "") + (f"; {m['stopped']}" if m["stopped"] else ""))


def refit_words(m: dict) -> str:
    """The refits of a run in words: when, their cost, and whether it is counted."""
    tot, rs = m["totals"], m["refit_rounds"]
    when = ", ".join(str(r) for r in rs)
    return (f"; the probe was re-fitted as round{'s' if len(rs) > 1 else ''} {when} started ({tot['refit_tokens']} "
            f"tokens, {tot['refit_s']:.0f} s, {'counted above' if m['refit_counted'] else 'not counted: exit off'})")
