"""Fault injection: kills, full disks, bad values, corrupt files, concurrent runs (issue 15; docs/reliability.md).

Each test asserts the exact outcome: the error names the bad value and the fix, nothing already written is
lost or half-written, nothing non-finite is saved. Tiny models, in-process CLI calls (typer's CliRunner);
subprocesses only where a real SIGKILL is the point.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from probescope.cli import app
from probescope.core.io import atomic_write_json, load_tensors, save_tensors
from probescope.core.store import ActivationStore, build_store, verify_store, writer_lock

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
CTX = 16


@pytest.fixture(scope="module")
def llama():
    from probescope import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def texts():
    from probescope.core.data import default_corpus

    return list(default_corpus()[:40])


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, texts):
    p = tmp_path_factory.mktemp("data") / "d.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return p


def _store(llama, texts, out, layers=(1, 2), **kw):
    model, tok = llama
    args = dict(context_len=CTX, shard_contexts=2, max_tokens=12 * CTX, batch_size=2, quiet=True)
    args.update(kw)
    return build_store(model, tok, texts, list(layers), out, **args)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, llama, texts):
    out = tmp_path_factory.mktemp("s") / "store"
    _store(llama, texts, out)
    return out


def cli(*args: str):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.output


def _one_line_error(code: int, text: str, *needles: str) -> None:
    assert code == 2, text
    assert "Traceback" not in text, text
    flat = " ".join(text.split())
    for n in needles:
        assert n in flat, (n, text)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.safetensors"))}


# ---------------------------------------------------------------------------------------------------------
# 1. No hang
# ---------------------------------------------------------------------------------------------------------


def test_batch_larger_than_the_store_is_an_error_not_a_hang(store_dir):
    st = ActivationStore(store_dir)
    with pytest.raises(ValueError, match=r"fewer than one batch of 100,000: lower --batch-size"):
        next(st.batches(1, batch_size=100_000, loop=True))
    code, out = cli("sae", "train", "--store", store_dir, "--layer", "1", "--expansion", "4", "--tokens", "200000",
                    "--batch-size", "100000", "--out", store_dir.parent / "sae-hang", "--quiet")
    _one_line_error(code, out, "fewer than one batch of 100,000", "lower --batch-size")
    assert not (store_dir.parent / "sae-hang" / "weights.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------
# 2. Nothing non-finite saved
# ---------------------------------------------------------------------------------------------------------


def test_fp16_overflow_refused_at_write_after_the_cast(llama, texts, tmp_path):
    model, tok = llama
    big = copy.deepcopy(model)
    with torch.no_grad():
        big.get_input_embeddings().weight.mul_(1e7)  # finite in float32, beyond fp16's 65504
    with pytest.raises(FloatingPointError, match=r"layer 1, shard 0: .* cast to float16 .* use --dtype bf16 or float32"):
        build_store(big, tok, texts, [1], tmp_path / "fp16", context_len=CTX, shard_contexts=2, max_tokens=4 * CTX,
                    dtype="fp16", quiet=True)
    assert not list((tmp_path / "fp16").glob("layer_01/*.safetensors"))
    assert not (tmp_path / "fp16" / "done").exists() or not list((tmp_path / "fp16" / "done").iterdir())
    st = build_store(big, tok, texts, [1], tmp_path / "fp32", context_len=CTX, shard_contexts=2, max_tokens=4 * CTX,
                     dtype="float32", quiet=True)
    assert st.complete and torch.isfinite(st.shard(1, 0)).all()


def test_nan_shard_refused_at_read_with_the_shard_named(store_dir, tmp_path):
    import shutil

    from probescope.sae import SAEConfig, StoreSource, TrainConfig, train_sae

    bad = tmp_path / "bad"
    shutil.copytree(store_dir, bad)
    p = bad / "layer_01" / "000003.safetensors"
    x = load_tensors(p)["acts"]
    x[5, 3] = float("nan")
    save_tensors(p, {"acts": x})
    st = ActivationStore(bad)
    with pytest.raises(FloatingPointError, match=r"shard 3 of layer 1 .*000003.safetensors.* NaN/inf.*store verify"):
        st.shard(1, 3)
    with pytest.raises(FloatingPointError, match="shard 3 of layer 1"):
        train_sae(StoreSource(bad, 1), SAEConfig(d_in=64, k=4, expansion=2),
                  TrainConfig(tokens=2048, batch_size=64, device="cpu"), tmp_path / "sae", quiet=True)
    assert not (tmp_path / "sae" / "weights.safetensors").exists()
    assert verify_store(bad)["damaged"].keys() == {3}  # the checksum sees the edit too


class _PoisonAt:
    """A source that turns batch `at` into NaN (a bad row deep in the data)."""

    def __init__(self, src, at: int):
        self.src, self.at = src, at
        for k in ("d_in", "d_out", "hook_in", "hook_out", "model"):
            setattr(self, k, getattr(src, k))

    def fingerprint(self):
        return self.src.fingerprint()

    def batches(self, batch_size, seed=0, skip=0):
        for i, (x, y) in enumerate(self.src.batches(batch_size, seed, skip), start=skip):
            yield (torch.full_like(x, float("nan")) if i == self.at else x), y


def _tensor_source(n=4096, d=16, seed=0):
    from probescope.sae import TensorSource

    g = torch.Generator().manual_seed(seed)
    return TensorSource(torch.randn(n, d, generator=g))


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from probescope.sae import SAEConfig, TrainConfig, train_sae

    out = tmp_path / "sae"
    cfg = TrainConfig(tokens=64 * 20, batch_size=64, checkpoint_every=5, device="cpu")
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 8 .* last good checkpoint \(step 5\) is kept"):
        train_sae(_PoisonAt(_tensor_source(), 7), SAEConfig(d_in=16, k=4, expansion=2), cfg, out, quiet=True)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 5
    ck = load_tensors(out / "checkpoint" / state["file"])
    assert all(torch.isfinite(v).all() for v in ck.values() if v.is_floating_point())
    assert not (out / "weights.safetensors").exists() and not (out / "metrics.json").exists()


def test_a_nan_sae_is_never_saved(tmp_path):
    from probescope.sae import SAE, SAEConfig
    from probescope.sae.formats import save_sae

    sae = SAE(SAEConfig(d_in=8, k=2, expansion=2))
    with torch.no_grad():
        sae.b_dec.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="b_dec"):
        save_sae(sae, tmp_path / "s")
    assert not (tmp_path / "s" / "weights.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------
# 3. Resume refuses a changed run
# ---------------------------------------------------------------------------------------------------------


class _KillAt:
    """A source that raises at batch `at`: an interrupted run that left a checkpoint."""

    def __init__(self, src, at):
        self.src, self.at = src, at
        for k in ("d_in", "d_out", "hook_in", "hook_out", "model"):
            setattr(self, k, getattr(src, k))

    def fingerprint(self):
        return self.src.fingerprint()

    def batches(self, batch_size, seed=0, skip=0):
        for i, b in enumerate(self.src.batches(batch_size, seed, skip), start=skip):
            if i == self.at:
                raise KeyboardInterrupt
            yield b


def test_sae_resume_refuses_other_settings_and_names_them(tmp_path):
    from probescope.sae import SAEConfig, TrainConfig, train_sae

    src, scfg, out = _tensor_source(), SAEConfig(d_in=16, k=4, expansion=2), tmp_path / "sae"
    base = dict(tokens=64 * 20, batch_size=64, checkpoint_every=5, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train_sae(_KillAt(src, 7), scfg, TrainConfig(**base), out, quiet=True)
    ck = (out / "checkpoint" / "state.json").read_bytes()
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for change, field in (({"batch_size": 32}, "train.batch_size"), ({"seed": 1}, "train.seed"),
                          ({"lr": 1e-3}, "train.lr"), ({"tokens": 64 * 12}, "train.tokens")):
        with pytest.raises(ValueError, match=rf"{field}: checkpoint .* this run .*--no-resume.* new --out"):
            train_sae(src, scfg, TrainConfig(**{**base, **change}), out, quiet=True)
    with pytest.raises(ValueError, match=r"sae.k: checkpoint 4, this run 8"):
        train_sae(src, SAEConfig(d_in=16, k=8, expansion=2), TrainConfig(**base), out, quiet=True)
    with pytest.raises(ValueError, match=r"data.data: checkpoint"):
        train_sae(_tensor_source(seed=1), scfg, TrainConfig(**base), out, quiet=True)
    assert (out / "checkpoint" / "state.json").read_bytes() == ck  # refused runs touch nothing
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == kept
    # the same settings resume; the result equals an uninterrupted run; the checkpoint folder goes at the end
    train_sae(src, scfg, TrainConfig(**base), out, quiet=True)
    train_sae(src, scfg, TrainConfig(**base), tmp_path / "ref", quiet=True)
    assert _digests(out)["weights.safetensors"] == _digests(tmp_path / "ref")["weights.safetensors"]
    assert not (out / "checkpoint").exists()
    # a finished SAE is not replaced by a run with other settings unless --no-resume
    with pytest.raises(ValueError, match=r"finished SAE trained with other settings .*train.seed.*--no-resume"):
        train_sae(src, scfg, TrainConfig(**{**base, "seed": 3}), out, quiet=True)
    train_sae(src, scfg, TrainConfig(**{**base, "seed": 3}), out, resume=False, quiet=True)
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 3


def test_cache_resume_refuses_other_settings(store_dir, data_file, tmp_path):
    import shutil

    code, out = cli("cache", "--model", "tiny-llama", "--data", data_file, "--layers", "1,2", "--out", store_dir,
                    "--context-len", "32", "--shard-contexts", "2", "--max-tokens", 12 * CTX, "--quiet")
    _one_line_error(code, out, "other settings", "context_len: store has 16, this run 32", "new --out", "--no-resume")
    s = tmp_path / "s"
    shutil.copytree(store_dir, s)
    code, out = cli("cache", "--model", "tiny-llama", "--data", data_file, "--layers", "1", "--out", s,
                    "--context-len", "32", "--shard-contexts", "2", "--max-tokens", 12 * CTX, "--quiet", "--no-resume")
    assert code == 0, out
    st = ActivationStore(s)
    assert st.complete and st.layers == [1] and st.settings.context_len == 32 and not (s / "layer_02").exists()


# ---------------------------------------------------------------------------------------------------------
# 4. Runs do not overwrite runs
# ---------------------------------------------------------------------------------------------------------


def _sae_run(tmp_path) -> Path:
    from probescope.sae import SAEConfig, TrainConfig, train_sae

    out = tmp_path / "sae-run"
    train_sae(_tensor_source(), SAEConfig(d_in=16, k=4, expansion=2), TrainConfig(tokens=640, batch_size=64, device="cpu"),
              out, quiet=True)
    return out


def test_jobs_refuse_an_out_holding_another_kind_of_run(tmp_path, data_file, store_dir):
    sae = _sae_run(tmp_path)
    before = {p.name: p.read_bytes() for p in sae.iterdir() if p.is_file()}
    code, out = cli("probe", "train", "--model", "tiny-llama", "--task", "truth", "--out", sae, "--quiet")
    _one_line_error(code, out, "holds a sae run", "use another --out", "--overwrite")
    code, out = cli("cache", "--model", "tiny-llama", "--data", data_file, "--layers", "1", "--out", sae,
                    "--context-len", CTX, "--max-tokens", 4 * CTX, "--quiet")
    _one_line_error(code, out, "holds a sae run", "use another --out")
    code, out = cli("sae", "train", "--store", sae, "--layer", "1", "--out", tmp_path / "x", "--quiet")
    _one_line_error(code, out, "not an activation store")
    code, out = cli("exit", "run", "Q? (A) 1 (B) 2 (C) 3 (D) 4", "--model", "tiny-llama", "--out", sae, "--quiet")
    _one_line_error(code, out, "holds a sae run", "use another --out")
    probe_run = tmp_path / "probe-run"
    probe_run.mkdir()
    atomic_write_json(probe_run / "run.json", {"kind": "probe-train"})
    code, out = cli("sae", "train", "--store", store_dir, "--layer", "1", "--batch-size", "64", "--tokens", "128",
                    "--out", probe_run, "--quiet")
    _one_line_error(code, out, "holds a probe-train run", "--no-resume")
    assert sorted(p.name for p in probe_run.iterdir()) == ["run.json"]
    assert {p.name: p.read_bytes() for p in sae.iterdir() if p.is_file()} == before  # nothing touched


def test_same_kind_with_other_settings_is_refused_unless_overwrite(tmp_path):
    from probescope.report.runs import RunDir

    r = RunDir(tmp_path / "r", kind="probe-train")
    r.write_config({"layer": 1, "kind": "linear", "quiet": False})
    RunDir(tmp_path / "r", kind="probe-train").write_config({"layer": 1, "kind": "linear", "quiet": True})  # a rerun
    with pytest.raises(FileExistsError, match=r"other settings \(layer: there 1, now 2\).*--overwrite"):
        RunDir(tmp_path / "r", kind="probe-train").write_config({"layer": 2, "kind": "linear"})
    with pytest.raises(FileExistsError, match="holds a probe-train run"):
        RunDir(tmp_path / "r", kind="steering-apply")
    RunDir(tmp_path / "r", kind="probe-train", overwrite=True).write_config({"layer": 2, "kind": "linear"})
    assert json.loads((tmp_path / "r" / "config.json").read_text())["layer"] == 2


# ---------------------------------------------------------------------------------------------------------
# 5. A damaged store is found, reported and redone
# ---------------------------------------------------------------------------------------------------------


def test_damaged_store_is_verified_and_redone(llama, texts, store_dir, tmp_path):
    import shutil

    ref = _digests(store_dir)
    bad = tmp_path / "bad"
    shutil.copytree(store_dir, bad)
    (bad / "layer_02" / "000001.safetensors").unlink()
    p = bad / "layer_01" / "000004.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    (bad / "done" / "000005.json").write_text("{ not json")
    rep = verify_store(bad)
    assert not rep["ok"] and sorted(rep["damaged"]) == [1, 4, 5]
    assert "layer_02/000001.safetensors is missing" in rep["damaged"][1]
    assert "truncated" in rep["damaged"][4]
    code, out = cli("store", "verify", bad)
    assert code == 1 and "damaged shard 1" in out and "rerun `probescope cache`" in " ".join(out.split())
    with pytest.raises(FileNotFoundError, match=r"000001.safetensors is missing .* store verify"):
        ActivationStore(bad).shard(2, 1)
    st = _store(llama, texts, bad)
    assert sorted(st.repaired) == [1, 4, 5]
    assert _digests(bad) == ref  # redone byte for byte
    code, out = cli("store", "verify", bad)
    assert code == 0 and "ok" in out


# ---------------------------------------------------------------------------------------------------------
# 6. exit run without options
# ---------------------------------------------------------------------------------------------------------


def test_exit_run_refuses_a_question_without_options(tmp_path):
    code, out = cli("exit", "run", "What is 2 + 3?", "--model", "tiny-llama", "--answers", "mcq", "--quiet")
    _one_line_error(code, out, "has no options", "(A) ... (B) ... (C) ... (D)", "--answers free")
    # without options the answer is free-form: it needs an answer-stability probe, and none is shipped for tiny-llama
    code, out = cli("exit", "run", "What is 2 + 3?", "--model", "tiny-llama", "--quiet")
    _one_line_error(code, out, "no answer-stability probe is shipped for 'tiny-llama'", "--answers free", "--probe")


# ---------------------------------------------------------------------------------------------------------
# 7. Nonsense values
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,needles", [
    (["--max-tokens", "0"], ["--max-tokens 0 is out of range", "≥ 1"]),  # the declared rules (store/config.py)
    (["--max-tokens", "-5"], ["--max-tokens -5 is out of range", "≥ 1"]),
    (["--max-tokens", "10"], ["max_tokens=10 is less than one context of 16", "raise --max-tokens"]),
    (["--context-len", "0"], ["--context-len 0 is out of range", "≥ 2"]),
    (["--shard-contexts", "0"], ["--shard-contexts 0 is out of range", "≥ 1"]),
    (["--batch-size", "0"], ["--batch-size 0 is out of range", "≥ 1"]),  # the declared rule (core/checks.NAMED)
    (["--dtype", "fp8"], ["--dtype 'fp8' is not one of", "bf16"]),
    (["--layers", ""], ["--layers", "pass --layers, e.g. --layers 6,12"]),
])
def test_cache_refuses_nonsense_values_before_writing(tmp_path, data_file, args, needles):
    out = tmp_path / "s"
    base = ["cache", "--model", "tiny-llama", "--data", data_file, "--layers", "1", "--out", out, "--context-len", CTX,
            "--quiet"]
    code, text = cli(*base, *args)
    _one_line_error(code, text, *needles)
    assert not out.exists()  # no manifest left behind


@pytest.mark.parametrize("args,needles", [
    (["--lr", "-1"], ["--lr -1.0 is out of range", "≥ 0"]),  # the declared rules (sae/run.py, sae/config.py)
    (["--tokens", "100"], ["tokens=100 is less than one batch of 256"]),
    (["--k", "0"], ["--k 0 is out of range", "≥ 1"]),
    (["--k", "100000"], ["k=100000 must lie in 1..n_latents"]),  # the cross-field rule, kept in code
    (["--optimizer", "sgd"], ["--optimizer 'sgd' is not one of", "sf-signum"]),
    (["--arch", "nope"], ["arch='nope' is unknown", "topk"]),
    (["--expansion", "0"], ["expansion=0"]),
])
def test_sae_train_refuses_nonsense_values(store_dir, tmp_path, args, needles):
    code, text = cli("sae", "train", "--store", store_dir, "--layer", "1", "--batch-size", "256", "--tokens", "1024",
                     "--out", tmp_path / "o", "--quiet", *args)
    _one_line_error(code, text, *needles)
    assert not (tmp_path / "o" / "weights.safetensors").exists()


def test_probe_labels_with_a_fraction_are_refused():
    from probescope.probes.data import infer_classes

    with pytest.raises(ValueError, match=r"label 2 is 0.5, not a class: .*threshold or round"):
        infer_classes([0, 1, 0.5, 1])
    assert infer_classes([0, 1.0, 1, 0]) == [0, 1]  # integral floats are the classes 0 and 1


def test_steering_vector_made_on_another_model_is_refused(llama):
    from probescope import load_model
    from probescope.steering import SteeringVector

    gpt2, _ = load_model("tiny-gpt2")
    vec = SteeringVector({1: torch.ones(64)}, model_id="tiny-llama")
    with pytest.raises(ValueError, match=r"made on model 'tiny-llama', not 'tiny-gpt2': load 'tiny-llama'"):
        with vec.apply(gpt2):
            pass
    with vec.apply(llama[0]):  # the model it was made on
        pass


def test_sae_cfg_with_wrong_types_or_widths_names_the_field_and_file(tmp_path):
    from probescope.sae import SAE, SAEConfig, load_sae
    from probescope.sae.formats import save_sae

    save_sae(SAE(SAEConfig(d_in=8, k=2, expansion=2)), tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    atomic_write_json(tmp_path / "s" / "cfg.json", {**cfg, "k": "32"})
    with pytest.raises(ValueError, match=r"cfg.json: k='32' is a str, not an int"):
        load_sae(tmp_path / "s")
    atomic_write_json(tmp_path / "s" / "cfg.json", {**cfg, "d_in": 16, "n_latents": 16})
    with pytest.raises(ValueError, match=r"tensor 'W_enc' has shape \(16, 8\), but cfg.json \(d_in=16.*fix d_in"):
        load_sae(tmp_path / "s")


def test_arch_names_come_from_the_registry_and_duplicates_are_refused():
    from probescope.sae import SAEConfig
    from probescope.sae.core import ARCHS, TopK, register_arch

    class MyTopK(TopK):
        name = "my-topk"

    try:
        register_arch(MyTopK)
        assert SAEConfig(d_in=8, arch="my-topk", k=2).arch == "my-topk"

        class Again(TopK):
            name = "my-topk"

        with pytest.raises(ValueError, match="'my-topk' is already registered"):
            register_arch(Again)
        with pytest.raises(ValueError, match="already registered"):
            register_arch(type("T2", (TopK,), {"name": "topk"}))
    finally:
        ARCHS.pop("my-topk", None)


def test_lora_resume_names_the_differing_fields(tmp_path):
    from probescope.finetune.runner import FinetuneConfig, train_lora

    ex = [[{"role": "user", "content": f"{a}+{b}?"}, {"role": "assistant", "content": f"{a + b}."}]
          for a in range(2, 6) for b in range(3, 5)]
    base = dict(model="tiny-llama", out_dir=str(tmp_path), batch_size=4, grad_accum=1, max_steps=4, lr=3e-3,
                checkpoint_every=1, quiet=True, max_len=32)
    train_lora(FinetuneConfig(**base, stop_after=1), ex)
    with pytest.raises(ValueError, match=r"config.lr: checkpoint 0.003, this run 0.001.*--no-resume"):
        train_lora(FinetuneConfig(**{**base, "lr": 1e-3}), ex)


# ---------------------------------------------------------------------------------------------------------
# 8. Operating-system failures: one short message through the CLI's one handler; committed work survives
# ---------------------------------------------------------------------------------------------------------


def _cache_args(data_file, out, *extra):
    return ["cache", "--model", "tiny-llama", "--data", data_file, "--layers", "1,2", "--out", out,
            "--context-len", CTX, "--shard-contexts", "2", "--max-tokens", 12 * CTX, "--batch-size", "2", "--quiet", *extra]


def test_disk_full_mid_cache_keeps_committed_shards_and_resumes(data_file, store_dir, tmp_path, monkeypatch):
    import probescope.core.io as io

    real, calls = io.save_file, {"n": 0}

    def full_disk(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] > 7:  # shards 0 and 1 commit (3 files each), the 3rd shard hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(io, "save_file", full_disk)
    out = tmp_path / "s"
    code, text = cli(*_cache_args(data_file, out))
    _one_line_error(code, text, "no space left on the disk", "free space", "resumes")
    rep = verify_store(out)
    assert rep["ok"] and rep["committed"] == 2 and not rep["temp_files"]
    monkeypatch.setattr(io, "save_file", real)
    code, text = cli(*_cache_args(data_file, out))
    assert code == 0, text
    assert _digests(out) == _digests(store_dir)


@pytest.mark.parametrize("err,needle", [
    (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only: choose a writable folder with --out"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied: choose a folder you can write to"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
])
def test_os_failures_are_one_line(data_file, tmp_path, monkeypatch, err, needle):
    import probescope.core.io as io

    def fail(*a, **k):
        err.filename = str(tmp_path / "s" / "manifest.json")
        raise err

    monkeypatch.setattr(io.tempfile, "mkstemp", fail)
    code, text = cli(*_cache_args(data_file, tmp_path / "s"))
    _one_line_error(code, text, needle, "manifest.json")


def test_a_failing_disk_inside_safetensors_is_an_oserror(tmp_path, monkeypatch):
    import probescope.core.io as io

    def rust_error(*a, **k):  # what safetensors raises when the disk fills mid-write
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull }) (os error 28)")

    monkeypatch.setattr(io, "save_file", rust_error)
    with pytest.raises(OSError) as e:
        save_tensors(tmp_path / "x.safetensors", {"a": torch.ones(2)})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())  # no temp file left


def test_a_failed_json_write_names_its_file_and_leaves_nothing(tmp_path, monkeypatch):
    import probescope.core.io as io

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    atomic_write_json(tmp_path / "a.json", {"old": 1})
    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(OSError) as e:
        atomic_write_json(tmp_path / "a.json", {"new": 2})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text()) == {"old": 1}  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_out_that_is_a_file_is_one_line(data_file, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    code, text = cli(*_cache_args(data_file, f))
    _one_line_error(code, text, "a path component is a file, not a folder", str(f))
    code, text = cli("sae", "train", "--store", f, "--layer", "1", "--out", tmp_path / "o", "--quiet")
    _one_line_error(code, text, "not an activation store")
    assert f.read_text() == "x"


# ---------------------------------------------------------------------------------------------------------
# 9. Leftovers and durability
# ---------------------------------------------------------------------------------------------------------


def test_files_get_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_tensors(tmp_path / "a.safetensors", {"x": torch.ones(2)})
        atomic_write_json(tmp_path / "a.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_temp_leftovers_are_cleaned_on_the_next_run(llama, texts, store_dir, tmp_path):
    import shutil

    from probescope.sae import SAEConfig, TrainConfig, train_sae

    s = tmp_path / "s"
    shutil.copytree(store_dir, s)
    (s / "layer_01" / ".000004.safetensors.k1lled.tmp").write_bytes(b"\0" * 1000)
    (s / "done" / "000004.json").unlink()  # the kill came before shard 4's marker
    _store(llama, texts, s)
    assert not list(s.rglob("*.tmp")) and verify_store(s)["complete"]
    out = tmp_path / "sae"
    ck = out / "checkpoint"
    ck.mkdir(parents=True)
    (ck / ".ckpt-00000005.safetensors.x.tmp").write_bytes(b"\0" * 1000)
    (ck / "ckpt-00000099.safetensors").write_bytes(b"orphan")  # no state.json names it
    with pytest.raises(KeyboardInterrupt):
        train_sae(_KillAt(_tensor_source(), 3), SAEConfig(d_in=16, k=4, expansion=2),
                  TrainConfig(tokens=640, batch_size=64, checkpoint_every=2, device="cpu"), out, quiet=True)
    assert sorted(p.name for p in ck.iterdir()) == ["ckpt-00000002.safetensors", "state.json"]


def test_previous_checkpoint_kept_until_the_new_one_is_durable(tmp_path, monkeypatch):
    import probescope.sae.train as tr
    from probescope.sae import SAEConfig, TrainConfig, train_sae

    real, calls = tr.save_tensors, {"n": 0}

    def dies_on_second(path, tensors, metadata=None, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the power goes during the 2nd checkpoint write
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path, tensors, metadata, **kw)

    monkeypatch.setattr(tr, "save_tensors", dies_on_second)
    out, src = tmp_path / "sae", _tensor_source()
    cfg = TrainConfig(tokens=64 * 12, batch_size=64, checkpoint_every=4, device="cpu")
    with pytest.raises(OSError):
        train_sae(src, SAEConfig(d_in=16, k=4, expansion=2), cfg, out, quiet=True)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and (out / "checkpoint" / state["file"]).exists()
    monkeypatch.setattr(tr, "save_tensors", real)
    train_sae(src, SAEConfig(d_in=16, k=4, expansion=2), cfg, out, quiet=True)  # resumes from step 4
    train_sae(src, SAEConfig(d_in=16, k=4, expansion=2), cfg, tmp_path / "ref", quiet=True)
    assert _digests(out)["weights.safetensors"] == _digests(tmp_path / "ref")["weights.safetensors"]
    assert not (out / "checkpoint").exists()


# ---------------------------------------------------------------------------------------------------------
# Concurrent runs
# ---------------------------------------------------------------------------------------------------------


def test_a_second_writer_at_the_same_time_is_refused(llama, texts, store_dir, tmp_path):
    from probescope.sae import SAEConfig, TrainConfig, train_sae

    with writer_lock(store_dir, "the activation store", ".lock-rank0"):
        with pytest.raises(ValueError, match=r"another probescope job is writing the activation store .* right now"):
            _store(llama, texts, store_dir)
    _store(llama, texts, store_dir)  # the lock goes with the job (and with a killed process)
    with writer_lock(tmp_path / "sae", "the SAE run"):
        with pytest.raises(ValueError, match="another probescope job is writing the SAE run"):
            train_sae(_tensor_source(), SAEConfig(d_in=16, k=4, expansion=2),
                      TrainConfig(tokens=640, batch_size=64, device="cpu"), tmp_path / "sae", quiet=True)


# ---------------------------------------------------------------------------------------------------------
# 10. Foreign SAE formats, from fixtures written in their layouts here (no peer package needed)
# ---------------------------------------------------------------------------------------------------------


def test_saelens_layout_fixture_loads_and_matches(tmp_path):
    from probescope.sae import load_sae

    g = torch.Generator().manual_seed(0)
    d_in, d_sae, k = 8, 24, 3
    w = {"W_enc": torch.randn(d_in, d_sae, generator=g), "W_dec": torch.randn(d_sae, d_in, generator=g),
         "b_enc": torch.randn(d_sae, generator=g), "b_dec": torch.randn(d_in, generator=g)}
    folder = tmp_path / "blocks.2.hook_resid_post"
    save_tensors(folder / "sae_weights.safetensors", w)
    atomic_write_json(folder / "cfg.json", {  # SAELens 6 writes these keys
        "architecture": "topk", "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "k": k, "metadata": {"model_name": "tiny-llama", "hook_name": "blocks.2.hook_resid_post",
                             "hook_head_index": None, "prepend_bos": True, "context_size": 128}})
    sae = load_sae(folder, d_in=d_in, hook="resid_post.2")
    x = torch.randn(16, d_in, generator=g)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    v, i = pre.topk(k, dim=-1)
    ref = torch.zeros_like(pre).scatter(1, i, v.relu()) @ w["W_dec"] + w["b_dec"]
    torch.testing.assert_close(sae(x).reconstruction, ref, atol=1e-4, rtol=1e-4)
    assert sae.cfg.model == "tiny-llama" and sae.cfg.hook_in == "resid_post.2"
    atomic_write_json(folder / "cfg.json", {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": "three"})
    with pytest.raises(ValueError, match=r"cfg.json: k='three' is not an integer"):
        load_sae(folder)


def test_sparsify_layout_fixture_loads_and_matches(tmp_path):
    from probescope.sae import load_sae

    g = torch.Generator().manual_seed(1)
    d_in, m, k = 8, 40, 4
    w = {"encoder.weight": torch.randn(m, d_in, generator=g), "encoder.bias": torch.randn(m, generator=g),
         "W_dec": torch.randn(m, d_in, generator=g), "b_dec": torch.randn(d_in, generator=g)}
    folder = tmp_path / "layers.3"  # sparsify's save_to_disk: <hookpoint>/cfg.json + sae.safetensors
    save_tensors(folder / "sae.safetensors", w)
    atomic_write_json(folder / "cfg.json", {"activation": "topk", "expansion_factor": 5, "normalize_decoder": True,
                                            "num_latents": m, "k": k, "multi_topk": False, "skip_connection": False,
                                            "transcode": False, "d_in": d_in})
    sae = load_sae(folder, d_in=d_in, hook="resid_post.3")
    x = torch.randn(16, d_in, generator=g)
    pre = (x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"]
    v, i = pre.relu().topk(k, dim=-1)
    ref = torch.zeros_like(pre).scatter(1, i, v) @ w["W_dec"] + w["b_dec"]
    torch.testing.assert_close(sae(x).reconstruction, ref, atol=1e-4, rtol=1e-4)
    atomic_write_json(folder / "cfg.json", {"activation": "topk", "k": k, "d_in": 16})
    with pytest.raises(ValueError, match=r"layers.3: encoder.weight \(40, 8\) .* disagree with d_in=16"):
        load_sae(folder)


# ---------------------------------------------------------------------------------------------------------
# What already held: nothing unpickled; SIGKILL + rerun is byte-identical
# ---------------------------------------------------------------------------------------------------------


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('PWNED_MARK', '/tmp/probescope-pwned')}",))


def test_pickles_are_never_loaded(tmp_path, monkeypatch):
    from probescope.probes.base import load_probe
    from probescope.sae import load_sae
    from probescope.steering import SteeringVector

    mark = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_MARK", str(mark))
    blob = tmp_path / "evil.pt"
    torch.save({"x": _Boom()}, blob)
    targets = []
    sae = tmp_path / "sae"
    sae.mkdir()
    atomic_write_json(sae / "cfg.json", {"format": "probescope-sae", "d_in": 8, "k": 2, "expansion": 2})
    (sae / "weights.safetensors").write_bytes(blob.read_bytes())
    targets.append(lambda: load_sae(sae))
    vec = tmp_path / "vec"
    SteeringVector({1: torch.ones(8)}, model_id="m").save(vec)
    for f in vec.glob("*.safetensors"):
        f.write_bytes(blob.read_bytes())
    targets.append(lambda: SteeringVector.load(vec))
    (tmp_path / "p.safetensors").write_bytes(blob.read_bytes())
    targets.append(lambda: load_probe(tmp_path / "p.safetensors"))
    targets.append(lambda: load_tensors(blob))
    for t in targets:
        with pytest.raises((ValueError, FileNotFoundError)):
            t()
    assert not mark.exists()


def _sigkill_when(proc, cond, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if cond():
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_of_cache_then_rerun_is_byte_identical(data_file, store_dir, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PROBESCOPE_QUIET": "1", "OMP_NUM_THREADS": "1"}
    args = [str(a) for a in _cache_args(data_file, out, "--max-tokens", 160 * CTX)]  # 80 shards
    proc = subprocess.Popen([sys.executable, "-m", "probescope", *args], env=env, cwd=ROOT)
    done = out / "done"
    _sigkill_when(proc, lambda: done.exists() and len(list(done.glob("*.json"))) >= 2)
    partial = ActivationStore(out)
    assert 0 < len(partial.done_shards()) < partial.settings.n_shards, "finished before the kill"
    code, text = cli(*args)
    assert code == 0, text
    ref = tmp_path / "ref"
    code, text = cli(*[str(a) for a in _cache_args(data_file, ref, "--max-tokens", 160 * CTX)])
    assert code == 0, text
    assert _digests(out) == _digests(ref) and verify_store(out)["complete"]
    assert not list(out.rglob("*.tmp"))


def test_sigkill_of_sae_train_then_rerun_is_byte_identical(store_dir, tmp_path):
    base = ["sae", "train", "--store", str(store_dir), "--layer", "1", "--k", "4", "--expansion", "2",
            "--tokens", str(64 * 16), "--batch-size", "64", "--checkpoint-every", "5", "--quiet"]
    # killed mid-checkpoint: step 10's file is written, state.json still names step 5's
    env = {**os.environ, "PROBESCOPE_QUIET": "1", "OMP_NUM_THREADS": "1", "PROBESCOPE_SAE_KILL_IN_CHECKPOINT": "10"}
    killed = tmp_path / "killed"
    r = subprocess.run([sys.executable, "-m", "probescope", *base, "--out", str(killed)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr[-2000:]
    ck = killed / "checkpoint"
    assert json.loads((ck / "state.json").read_text())["step"] == 5
    assert sorted(p.name for p in ck.glob("ckpt-*")) == ["ckpt-00000005.safetensors", "ckpt-00000010.safetensors"]
    code, text = cli(*base, "--out", killed)
    assert code == 0, text
    code, text = cli(*base, "--out", tmp_path / "ref")
    assert code == 0, text
    assert (killed / "weights.safetensors").read_bytes() == (tmp_path / "ref" / "weights.safetensors").read_bytes()
    assert not ck.exists()


def test_every_job_refuses_another_kinds_out_before_work_and_overwrite_allows(tmp_path):
    """patch / train / exit / steer: --out holding another kind of run is refused up front; --overwrite replaces."""
    from typer.testing import CliRunner

    from probescope.cli import app
    from probescope.core.io import atomic_write_json

    r = CliRunner()
    sae_run = tmp_path / "sae_run"
    sae_run.mkdir()
    atomic_write_json(sae_run / "run.json", {"kind": "sae"})
    atomic_write_json(sae_run / "config.json", {"keep": True})
    for argv in (["patch", "--model", "tiny-llama"], ["train", "--model", "tiny-llama"],
                 ["exit", "collect", "--model", "tiny-llama"], ["exit", "eval"],
                 ["steer", "make", "--model", "tiny-llama"], ["steer", "eval", "--vector", str(tmp_path / "v")]):
        res = r.invoke(app, argv + ["--out", str(sae_run)])
        assert res.exit_code == 2 and "holds a sae run" in res.output, (argv, res.output)
        assert (sae_run / "config.json").read_text().find("keep") > 0  # untouched
    ok = r.invoke(app, ["steer", "make", "--model", "tiny-llama", "--n-pairs", "2", "--layers", "1", "--out",
                        str(sae_run), "--overwrite", "--json"])
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("damage", ["nan", "pickle"])
def test_verify_reads_what_is_inside_not_only_the_marker(store_dir, llama, texts, tmp_path, damage):
    """#37 item 3: a shard holding NaN, or a pickle, whose done marker was rewritten to match its bytes, is reported
    damaged by `store verify` (never unpickled) and redone by a `cache` rerun, which then verifies complete."""
    import pickle
    import shutil

    from probescope.core.io import atomic_write_json, file_digest, read_json

    bad = tmp_path / "bad"
    shutil.copytree(store_dir, bad)
    p = bad / "layer_01" / "000003.safetensors"
    x = load_tensors(p)["acts"]
    if damage == "nan":
        x[5, 3] = float("nan")
        save_tensors(p, {"acts": x})
    else:
        p.write_bytes(pickle.dumps({"acts": x.numpy()}))
    marker = bad / "done" / "000003.json"
    m = read_json(marker)
    m["files"]["layer_01/000003.safetensors"] = file_digest(p)  # the marker now vouches for the damage
    atomic_write_json(marker, m)
    rep = verify_store(bad)
    want = "NaN/inf" if damage == "nan" else "not a readable safetensors file"
    assert rep["damaged"].keys() == {3} and want in rep["damaged"][3], rep
    code, out = cli("store", "verify", bad)
    assert code == 1 and "damaged" in out
    st = _store(llama, texts, bad)
    assert 3 in st.repaired and verify_store(bad)["complete"]
    assert torch.equal(load_tensors(p)["acts"], load_tensors(store_dir / "layer_01" / "000003.safetensors")["acts"])
