"""Fault injection, second pass (#37): every case of the issue's "Data lost", "Silent wrong", "Tracebacks" and
"Unclear" lists, on the CLI with tiny models, each with its exact outcome: the exit code, a message that names the
bad value and the fix, the folder byte-identical after a refused run (hashed before and after), nothing
non-finite saved. Cases refused at the door (declared field rules) are also in tests/test_checks.py; here each
one is run against a folder that already holds files, which must come out unchanged.

The exit wing's own cases are at the end: `exit run --answers mcq` on a question with three options believes in
and answers only (A)-(C), and a rerun into a run with other settings is refused before anything is decoded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from probescope.cli import app
from probescope.core.io import atomic_write_json, file_digest, load_tensors, read_json, save_tensors

pytestmark = pytest.mark.usefixtures("one_thread")
CTX = 16


def cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, " ".join(r.output.split())


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (relative names): equal snapshots mean a byte-identical folder."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(code: int, text: str, *needles: str) -> None:
    assert code == 2, text
    assert "Traceback" not in text and "internal error" not in text, text
    for n in needles:
        assert n in text, (n, text)


def all_finite(folder: Path) -> bool:
    return all(torch.isfinite(t).all() for f in Path(folder).rglob("*.safetensors")
               for t in load_tensors(f).values() if t.is_floating_point())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from probescope.core.data import default_corpus

    p = tmp_path_factory.mktemp("data") / "d.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in default_corpus()[:40]))
    return p


def _cache(corpus, out, *extra):
    return ("cache", "--model", "tiny-llama", "--data", corpus, "--layers", "1", "--context-len", CTX,
            "--max-tokens", 12 * CTX, "--shard-contexts", 2, "--batch-size", 2, "--quiet", "--out", out, *extra)


@pytest.fixture(scope="module")
def store(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("s") / "store"
    code, text = cli(*_cache(corpus, out))
    assert code == 0, text
    return out


@pytest.fixture()
def occupied(tmp_path):
    """A folder that already holds a file: a refused run must leave it byte-identical."""
    d = tmp_path / "occupied"
    d.mkdir()
    (d / "notes.txt").write_text("mine\n")
    return d


# -----------------------------------------------------------------------------------------------------------------
# Silent wrong / unclear: values refused at the door, before anything is loaded or written
# -----------------------------------------------------------------------------------------------------------------

DOOR = [
    (["probe", "train", "--lr", "-1"], "--lr -1.0 is out of range: it must be > 0"),
    (["steer", "apply", "--vector", "v", "--prompt", "hi", "--multiplier", "nan"],
     "--multiplier nan: nan is not a finite number"),
    (["steer", "icl", "--strengths", "0,1,inf"], "--strengths '0,1,inf': inf is not a finite number"),
    (["steer", "icl", "--strengths", "0,1,nan"], "--strengths '0,1,nan': nan is not a finite number"),
    (["steer", "icl", "--vector-shots", "0"], "--vector-shots 0 is out of range: it must be ≥ 1"),
    (["unlearn", "run", "--alpha", "-5"], "--alpha -5.0 is out of range: it must be ≥ 0"),
    (["exit", "run", "2+2?", "--tau", "1.5"], "--tau 1.5 is out of range: it must be between 0 and 1"),
    (["exit", "run", "2+2?", "--tau", "nan"], "--tau nan: nan is not a finite number"),
    (["curvature", "organism", "--steps", "0"], "--steps 0 is out of range: it must be ≥ 1"),
    (["curvature", "organism", "--lr", "-1"], "--lr -1.0 is out of range: it must be > 0"),
]


@pytest.mark.parametrize("argv,msg", DOOR, ids=[" ".join(a[:2]) + " " + a[-2] + a[-1] for a, _ in DOOR])
def test_door_refusals_leave_the_folder_byte_identical(occupied, argv, msg):
    """The message names the option, the value and the valid range; an --out already holding files is unchanged;
    a fresh --out is not created."""
    before = snapshot(occupied)
    code, text = cli(*argv, "--out", occupied, "--quiet")
    refused(code, text, msg, "give a finite value" if "finite" in msg else "it must be")
    assert snapshot(occupied) == before
    code, text = cli(*argv, "--out", occupied.parent / "fresh" / "run", "--quiet")
    refused(code, text, msg)
    assert not (occupied.parent / "fresh").exists()


# -----------------------------------------------------------------------------------------------------------------
# Silent wrong: layers and sites resolved against the loaded model, never wrapped; nothing left behind
# -----------------------------------------------------------------------------------------------------------------

MODEL_CHECKS = [
    (["curvature", "fit", "--model", "tiny-llama", "--layers", "9"], "layers '9': layer 9 is out of range: this model has 4 layers"),
    (["curvature", "fit", "--model", "tiny-llama", "--layers", "2,9"], "layers '2,9': layer 9 is out of range"),
    (["curvature", "fit", "--model", "tiny-llama", "--layers", "2-9"], "layers '2-9': layer 9 is out of range"),
    (["curvature", "organism", "--model", "tiny-llama", "--layers", "9"], "layers '9': layer 9 is out of range"),
    (["sae", "train", "--model", "tiny-llama", "--hook-in", "resid_post.3", "--hook-out", "mlp_out.1",
      "--tokens", "512", "--batch-size", "64", "--expansion", "2", "--k", "4", "--context-len", "16"],
     "--hook-in resid_post.3 --hook-out mlp_out.1: the predicted site mlp_out.1 comes before the site read, "
     "resid_post.3, in the forward pass"),
    (["sae", "train", "--model", "tiny-llama", "--hook-in", "mlp_in.9", "--hook-out", "mlp_out.9",
      "--tokens", "512", "--batch-size", "64", "--context-len", "16"], "site 'mlp_in.9': layer 9 is out of range"),
]


@pytest.mark.parametrize("argv,msg", MODEL_CHECKS, ids=[" ".join(a[:2]) + " " + a[5] for a, _ in MODEL_CHECKS])
def test_sites_and_layers_out_of_the_model_are_refused_and_leave_nothing(tmp_path, occupied, argv, msg):
    """`curvature fit --layers 9` on 4 layers fitted layer 1 (wrapped); 2-9 said 'no matrices'; a transcoder that
    predicts a site before the one it reads trained to FVU 2.26. Now each is refused by name after the model loads
    and before training; the run.json/config.json a job writes first are taken back from a fresh --out, and an
    existing folder is byte-identical."""
    fresh = tmp_path / "new" / "run"
    code, text = cli(*argv, "--out", fresh, "--quiet")
    refused(code, text, msg)
    assert not (tmp_path / "new").exists(), list((tmp_path / "new").rglob("*"))
    before = snapshot(occupied)
    code, text = cli(*argv, "--out", occupied, "--quiet")
    refused(code, text, msg)
    assert snapshot(occupied) == before


def test_transcoder_sites_in_forward_order_and_an_sae_still_train(tmp_path):
    """What the order check lets through: a transcoder reading before it writes, and an SAE (one site)."""
    from probescope import load_model
    from probescope.core.sites import check_forward_order

    model, _ = load_model("tiny-llama")
    for a, b in [("mlp_in.1", "mlp_out.1"), ("resid_pre.2", "resid_post.1"), ("resid_post.1", "resid_pre.2"),
                 ("embed", "resid_post.0"), ("resid_post.3", "resid_post.3"), ("attn_out.-1", "logits")]:
        check_forward_order(model, a, b)
    for a, b in [("mlp_out.1", "mlp_in.1"), ("resid_post.2", "resid_pre.2"), ("logits", "embed")]:
        with pytest.raises(ValueError, match="comes before the site read"):
            check_forward_order(model, a, b)
    code, text = cli("sae", "train", "--model", "tiny-llama", "--hook-in", "mlp_in.1", "--hook-out", "mlp_out.1",
                     "--tokens", 512, "--batch-size", 64, "--expansion", 2, "--k", 4, "--context-len", 16,
                     "--out", tmp_path / "tc", "--quiet")
    assert code == 0, text
    cfg = read_json(tmp_path / "tc" / "cfg.json")
    assert (cfg["hook_in"], cfg["hook_out"]) == ("mlp_in.1", "mlp_out.1") and all_finite(tmp_path / "tc")


# -----------------------------------------------------------------------------------------------------------------
# Data lost: refused reruns leave the old run byte-identical (run.json's start time included)
# -----------------------------------------------------------------------------------------------------------------


def _pairs_file(tmp_path, answer="M", wrong="J"):
    p = tmp_path / "pairs.jsonl"
    p.write_text(json.dumps({"clean": "When Mary and John went to the store, John gave a drink to ",
                             "corrupt": "When Mary and John went to the store, Mary gave a drink to ",
                             "answer": answer, "wrong": wrong}) + "\n")
    return p


def test_refused_reruns_leave_the_old_run_byte_identical(tmp_path, corpus):
    """#37 data lost: `steer make` over a vector of other settings replaced the vector and run.json before refusing;
    several jobs rewrote run.json's start time on a refused rerun. Each job here runs once, then again with one
    setting changed: refused (exit 2) naming the differing setting, and every file of the first run unchanged."""
    vec = tmp_path / "vec"
    code, text = cli("steer", "make", "--model", "tiny-llama", "--layers", 1, "--n-pairs", 2, "--out", vec, "--quiet")
    assert code == 0, text
    pairs = _pairs_file(tmp_path)
    jobs = {
        "steer make": (["steer", "make", "--model", "tiny-llama", "--layers", "1", "--n-pairs", "2"],
                       ["--n-pairs", "3"], "n_pairs: there 2, now 3"),
        "steer apply": (["steer", "apply", "--vector", str(vec), "--prompt", "hi", "--max-new-tokens", "2"],
                        ["--multiplier", "2"], "multiplier: there 1.0, now 2.0"),
        "sae train": (["sae", "train", "--model", "tiny-llama", "--layer", "1", "--tokens", "512", "--batch-size", "64",
                       "--expansion", "2", "--k", "4", "--context-len", "16"], ["--k", "3"], "sae.k: there 4, this run 3"),
        "probe train": (["probe", "train", "--model", "tiny-llama", "--task", "truth", "--n", "16", "--layer", "1",
                         "--max-epochs", "2"], ["--seed", "1"], "data.seed: there 0, now 1"),
        "patch": (["patch", "--model", "tiny-llama", "--task", str(pairs), "--families", "resid_pre", "--method",
                   "exact"], ["--families", "mlp_out"], "families: there 'resid_pre', now 'mlp_out'"),
        "curvature fit": (["curvature", "fit", "--model", "tiny-llama", "--layers", "1", "--max-tokens", "2048",
                           "--context-len", "16", "--batch-size", "4"], ["--seed", "1"], "seed: there 0, now 1"),
        "cache": (list(map(str, _cache(corpus, "X")[:-2])), ["--context-len", "8"], "context_len: store has 16, this run 8"),
    }
    for name, (argv, change, diff) in jobs.items():
        out = tmp_path / name.replace(" ", "-")
        code, text = cli(*argv, "--out", out, "--quiet")
        assert code == 0, (name, text)
        before = snapshot(out)
        assert "run.json" in before or name == "cache", name
        code, text = cli(*argv, *change, "--out", out, "--quiet")
        refused(code, text, diff, "--out")
        assert snapshot(out) == before, name


# -----------------------------------------------------------------------------------------------------------------
# Unclear: messages that say what is true and name the fix
# -----------------------------------------------------------------------------------------------------------------


def test_patch_with_answer_equal_to_wrong_says_so(tmp_path):
    """It said "the corruption does not change the answer"; the truth is that answer and wrong are one token, so
    logit[answer] − logit[wrong] is 0 everywhere. Refused before the model runs; nothing written."""
    pairs = _pairs_file(tmp_path, "M", "M")
    code, text = cli("patch", "--model", "tiny-llama", "--task", pairs, "--out", tmp_path / "run", "--quiet")
    refused(code, text, "pair 1: answer 'M' and wrong 'M' are the same token",
            "logit[answer] − logit[wrong] is 0 on every prompt", "give as wrong the token the corrupted prompt leads to")
    assert "does not change" not in text and not (tmp_path / "run").exists()


def test_a_pickled_model_is_never_unpickled_and_the_message_says_how_to_convert(tmp_path, monkeypatch):
    """A folder with pytorch_model.bin: transformers loaded it with a restricted unpickler, and a hostile one gave
    torch's message suggesting weights_only=False. Now no .bin is ever opened (a pickle that runs code on load
    proves it), and the message says why and how to convert to safetensors."""
    import os

    from probescope import load_model

    model, tok = load_model("tiny-llama")
    mark = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {mark}",))

    for name, extra in (("plain", {}), ("hostile", {"x": Boom()})):
        d = tmp_path / name
        model.config.save_pretrained(d)
        tok.save_pretrained(d)
        torch.save({**model.state_dict(), **extra}, d / "pytorch_model.bin")
        out = tmp_path / f"v-{name}"
        code, text = cli("steer", "make", "--model", d, "--layers", 1, "--n-pairs", 2, "--out", out, "--quiet")
        refused(code, text, "holds its weights as pytorch_model.bin: a pickle, which probescope never loads",
                "Convert the folder to safetensors once", "save_pretrained")
        assert "weights_only" not in text and not out.exists()
    assert not mark.exists()
    (tmp_path / "plain" / "pytorch_model.bin").unlink()
    with pytest.raises(ValueError, match="has config.json but no .safetensors weights"):
        load_model(str(tmp_path / "plain"))


def _sae_run(tmp_path, name="sae"):
    out = tmp_path / name
    code, text = cli("sae", "train", "--model", "tiny-llama", "--layer", 1, "--tokens", 512, "--batch-size", 64,
                     "--expansion", 2, "--k", 4, "--context-len", 16, "--out", out, "--quiet")
    assert code == 0, text
    return out


def test_an_sae_site_out_of_range_names_the_file_it_came_from(tmp_path):
    """A site out of range read from an SAE's cfg.json said only 'layer 9 is out of range'. Now `sae eval` and
    `sae latents` name the cfg.json (and a sparsify folder its name) and the fix; eval.json is not written."""
    sae = _sae_run(tmp_path)
    cfg = read_json(sae / "cfg.json")
    atomic_write_json(sae / "cfg.json", {**cfg, "hook_in": "resid_post.9", "hook_out": "resid_post.9"})
    before = snapshot(sae)
    for cmd in (["sae", "eval", "--sae", sae, "--tokens", 256, "--contexts", 2, "--context-len", 16],
                ["sae", "latents", "--sae", sae, "--contexts", 2, "--context-len", 16]):
        code, text = cli(*cmd)
        refused(code, text, f"read from {sae / 'cfg.json'} does not fit tiny-llama", "layer 9 is out of range",
                "pass --model", f"fix hook_in/hook_out in {sae / 'cfg.json'}")
    assert snapshot(sae) == before
    from probescope.sae import load_sae
    from probescope.sae.formats import check_sae_sites
    from probescope import load_model

    w = load_tensors(sae / "weights.safetensors")
    sp = tmp_path / "layers.9"  # sparsify: the hook point is the folder's name
    save_tensors(sp / "sae.safetensors", {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"],
                                          "W_dec": w["W_dec"], "b_dec": w["b_dec"]})
    atomic_write_json(sp / "cfg.json", {"activation": "topk", "k": 4, "d_in": 64})
    with pytest.raises(ValueError, match=r"read from the folder name 'layers.9' \(sparsify layout\)"):
        check_sae_sites(load_sae(sp), load_model("tiny-llama")[0], sp)


def _killed_sae(tmp_path, name):
    """An SAE run stopped after its step-4 checkpoint (Ctrl-C while writing the step-6 one)."""
    import probescope.sae.train as tr

    real, calls = tr.save_tensors, {"n": 0}

    def stop_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(tr, "save_tensors", stop_on_third)
    try:
        code, text = cli(*SAE_ARGS, "--out", tmp_path / name)
    finally:
        mp.undo()
    return code, text


SAE_ARGS = ("sae", "train", "--model", "tiny-llama", "--layer", "1", "--tokens", str(64 * 10), "--batch-size", "64",
            "--expansion", "2", "--k", "4", "--context-len", "16", "--checkpoint-every", "2", "--quiet")


@pytest.mark.parametrize("damage", ["state", "tensors"])
def test_a_corrupt_checkpoint_names_no_resume_and_no_resume_starts_over(tmp_path, damage):
    """A corrupt checkpoint was named without the way out. Now: exit 2 naming the file and --no-resume, the folder
    untouched; with --no-resume the run starts over and ends byte-identical to an uninterrupted run."""
    code, text = _killed_sae(tmp_path, "k")
    assert code == 130 and "interrupted: everything committed so far is kept in" in text, text
    ck = tmp_path / "k" / "checkpoint"
    state = read_json(ck / "state.json")
    assert state["step"] == 4
    if damage == "state":
        (ck / "state.json").write_text("{garbage")
        bad = "state.json is not valid JSON"
    else:
        (ck / state["file"]).write_bytes(b"\0" * 100)
        bad = f"{state['file']} is not a readable safetensors file"
    before = snapshot(tmp_path / "k")
    code, text = cli(*SAE_ARGS, "--out", tmp_path / "k")
    refused(code, text, f"the checkpoint in {ck} cannot be resumed", bad, "Pass --no-resume to start over")
    assert snapshot(tmp_path / "k") == before
    code, text = cli(*SAE_ARGS, "--no-resume", "--out", tmp_path / "k")
    assert code == 0, text
    code, text = cli(*SAE_ARGS, "--out", tmp_path / "ref")
    assert code == 0, text
    assert (tmp_path / "k" / "weights.safetensors").read_bytes() == (tmp_path / "ref" / "weights.safetensors").read_bytes()


def test_the_nan_store_advice_works(store, corpus, tmp_path):
    """`sae train` on a store whose shard holds NaN (its done marker rewritten to vouch for it) says `store verify`
    lists the damage and a `cache` rerun redoes it: both are now true, and training then succeeds, finite."""
    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    p = bad / "layer_01" / "000003.safetensors"
    x = load_tensors(p)["acts"]
    x[5, 3] = float("nan")
    save_tensors(p, {"acts": x})
    marker = bad / "done" / "000003.json"
    m = read_json(marker)
    m["files"]["layer_01/000003.safetensors"] = file_digest(p)
    atomic_write_json(marker, m)
    train = ("sae", "train", "--store", bad, "--layer", 1, "--tokens", 2048, "--batch-size", 64, "--expansion", 2,
             "--k", 4, "--out", tmp_path / "sae", "--quiet")
    code, text = cli(*train)
    refused(code, text, "shard 3 of layer 1", "holds 1 NaN/inf values", f"`probescope store verify {bad}` lists the "
            "damage", "rerunning `probescope cache` with the same options redoes the damaged shards")
    assert not (tmp_path / "sae").exists()  # the refused run took back its run.json, config.json and lock
    code, text = cli("store", "verify", bad)
    assert code == 1 and "damaged shard 3: layer_01/000003.safetensors holds 1 NaN/inf values" in text, text
    code, text = cli(*_cache(corpus, bad))
    assert code == 0, text
    code, text = cli("store", "verify", bad)
    assert code == 0, text
    assert snapshot(bad)["layer_01/000003.safetensors"] == snapshot(store)["layer_01/000003.safetensors"]
    code, text = cli(*train)
    assert code == 0, text
    assert all_finite(tmp_path / "sae")


# -----------------------------------------------------------------------------------------------------------------
# Unclear: Ctrl-C prints one line (what is kept, how to go on); the rerun completes what was kept
# -----------------------------------------------------------------------------------------------------------------


def test_ctrl_c_during_cache_says_what_is_kept_and_the_rerun_completes(store, corpus, tmp_path, monkeypatch):
    import probescope.core.io as io

    real, calls = io.save_file, {"n": 0}

    def stop_on_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(io, "save_file", stop_on_third)
    out = tmp_path / "s"
    code, text = cli(*_cache(corpus, out))
    assert code == 130 and f"interrupted: everything committed so far is kept in {out}" in text, text
    assert "to resume from it" in text and "Traceback" not in text and text.count("interrupted") == 1
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(io, "save_file", real)
    code, text = cli(*_cache(corpus, out))
    assert code == 0, text
    assert {k: v for k, v in snapshot(out).items() if k.endswith(".safetensors")} == \
        {k: v for k, v in snapshot(store).items() if k.endswith(".safetensors")}


def test_ctrl_c_during_sae_train_says_what_is_kept_and_the_rerun_resumes(tmp_path):
    code, text = _killed_sae(tmp_path, "k")
    assert code == 130 and f"interrupted: everything committed so far is kept in {tmp_path / 'k'}" in text, text
    assert "to resume from it" in text and "Traceback" not in text
    assert read_json(tmp_path / "k" / "checkpoint" / "state.json")["step"] == 4
    code, text = cli(*SAE_ARGS, "--out", tmp_path / "k")
    assert code == 0, text
    code, text = cli(*SAE_ARGS, "--out", tmp_path / "ref")
    assert code == 0, text
    assert (tmp_path / "k" / "weights.safetensors").read_bytes() == (tmp_path / "ref" / "weights.safetensors").read_bytes()


def test_ctrl_c_during_unlearn_run_says_what_is_kept_and_the_rerun_resumes(tmp_path, monkeypatch):
    """Unlearning on the untaught tiny llama (the outcome is not the point: the interruption and the resume are)."""
    import probescope.unlearn.train as ut
    from probescope.tasks.entities import entities, facts

    items = facts(entities(6, seed=0), ("capital", "animal"))
    caps = [it for it in items if it.key.endswith(":capital")]
    animals = [it for it in items if it.key.endswith(":animal")]
    (tmp_path / "forget.jsonl").write_text("".join(json.dumps({"prompt": it.prompt, "answer": it.answer,
                                                               "choices": list(it.choices())}) + "\n" for it in caps))
    (tmp_path / "retain.jsonl").write_text("".join(json.dumps({"text": it.statement()}) + "\n" for it in animals))
    args = ["unlearn", "run", "--model", "tiny-llama", "--forget", tmp_path / "forget.jsonl", "--retain",
            tmp_path / "retain.jsonl", "--retain-eval", "none", "--all-facts", "--n-eval", 2, "--utility-docs", 2,
            "--layer", 2, "--steps", 6, "--checkpoint-every", 2, "--batch-size", 2, "--quiet"]
    real, calls = ut.save_tensors, {"n": 0}

    def stop(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # during the second checkpoint (weights, then optimiser, per checkpoint)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ut, "save_tensors", stop)
    out = tmp_path / "u"
    code, text = cli(*args, "--out", out)
    assert code == 130 and f"interrupted: everything committed so far is kept in {out}" in text, text
    assert "to resume from it" in text and "Traceback" not in text
    assert read_json(out / "checkpoint" / "state.json")["step"] == 2
    monkeypatch.setattr(ut, "save_tensors", real)
    w = out / "checkpoint" / "weights.safetensors"
    good = w.read_bytes()
    w.write_bytes(b"\0" * 64)  # a corrupt checkpoint: refused naming --no-resume, the folder untouched
    before = snapshot(out)
    code, text = cli(*args, "--out", out)
    refused(code, text, f"the checkpoint in {out / 'checkpoint'} cannot be resumed", "weights.safetensors",
            "Pass --no-resume to start over")
    assert snapshot(out) == before
    w.write_bytes(good)
    code, text = cli(*args, "--out", out)
    assert code == 0, text
    code, text = cli(*args, "--out", tmp_path / "ref")
    assert code == 0, text
    done, ref = read_json(out / "metrics.json"), read_json(tmp_path / "ref" / "metrics.json")
    assert done["after"] == ref["after"] and all_finite(out)


# -----------------------------------------------------------------------------------------------------------------
# Tracebacks / unclear: files a user brings (readers: file, line, byte; a field over the limit by name)
# -----------------------------------------------------------------------------------------------------------------


def test_bad_bytes_and_huge_fields_in_data_files_are_one_line_and_write_nothing(tmp_path):
    j, c = tmp_path / "q.jsonl", tmp_path / "q.csv"
    cases = [
        (j, b'{"question": "2+2? (A) 4 (B) 5 (C) 6 (D) 7", "answer": "A"}\n{"question": "caf\xe9", "answer": "A"}\n',
         "q.jsonl:2: byte 77 (0xe9) is not UTF-8"),
        (c, b"question,answer\nok,A\nna\xefve,B\n", "q.csv:3: byte 23 (0xef) is not UTF-8"),
        (j, (json.dumps({"question": "x" * 10_000_000, "answer": "A"}) + "\n").encode(),
         "q.jsonl:1: the line holds 10,000,032 characters, over 4 × the field limit of 1,000,000"),
        (c, ("question,answer\n" + "x" * 10_000_000 + ",A\n").encode(), "q.csv:2: a field is over the limit of 1,000,000"),
    ]
    for path, data, msg in cases:
        path.write_bytes(data)
        code, text = cli("exit", "collect", "--model", "tiny-llama", "--data", path, "--out", tmp_path / "ec", "--quiet")
        refused(code, text, msg)
        assert not (tmp_path / "ec").exists()
    d = tmp_path / "d.jsonl"
    d.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    code, text = cli("cache", "--model", "tiny-llama", "--data", d, "--layers", 1, "--out", tmp_path / "cc", "--quiet")
    refused(code, text, "d.jsonl:2: byte 30 (0xe9) is not UTF-8", "save the file as UTF-8")
    assert not (tmp_path / "cc").exists()


# -----------------------------------------------------------------------------------------------------------------
# Error lines print the message as text (a bracket is not markup)
# -----------------------------------------------------------------------------------------------------------------


def test_brackets_in_an_error_are_printed_as_written():
    from probescope.clikit import run_job

    def bad():
        raise ValueError("logit[answer] − logit[wrong] is [red]0[/red]")

    import typer

    from probescope.clikit import console

    with console.capture() as cap, pytest.raises(typer.Exit):
        run_job(bad)
    assert "logit[answer] − logit[wrong] is [red]0[/red]" in cap.get()


# -----------------------------------------------------------------------------------------------------------------
# The exit wing's cases, still open there (another change owns src/probescope/exit/): what they do today, as strict
# expected failures, so the fix turns them into failures to remove the mark
# -----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exit_probe(tmp_path_factory):
    d = tmp_path_factory.mktemp("exit")
    code, text = cli("exit", "collect", "--model", "tiny-llama", "--out", d / "col", "--n-train", 8, "--n-val", 8,
                     "--n-test", 8, "--layers", "1,2", "--max-new-tokens", 12, "--batch-size", 8, "--stride", 4,
                     "--quiet")
    assert code == 0, text
    code, text = cli("exit", "train", "--collect", d / "col", "--out", d / "probe", "--max-epochs", 3, "--n-heads", 2,
                     "--quiet")
    assert code == 0, text
    return d / "probe"


THREE = "Which number is largest?\n(A) 1\n(B) 2\n(C) 3"


def test_exit_run_mcq_with_three_options_has_no_d(exit_probe, tmp_path):
    code, text = cli("exit", "run", THREE, "--model", "tiny-llama", "--probe", exit_probe, "--answers", "mcq",
                     "--tau", "0.3", "--max-new-tokens", 4, "--out", tmp_path / "r", "--quiet")
    if code == 2:  # refused by name is a fix too
        assert "(D)" in text or "options" in text, text
        return
    m = read_json(tmp_path / "r" / "metrics.json")
    assert set(m["answer_probs"]) == {"A", "B", "C"} and m["answer"] in "ABC", m


def test_exit_run_refused_rerun_decodes_nothing(exit_probe, tmp_path, monkeypatch):
    import probescope.exit.generate as gen

    q = THREE + "\n(D) 4"
    base = ("exit", "run", q, "--model", "tiny-llama", "--probe", exit_probe, "--tau", "0.3", "--quiet")
    code, text = cli(*base, "--max-new-tokens", 4, "--out", tmp_path / "r")
    assert code == 0, text
    before = snapshot(tmp_path / "r")
    real, calls = gen.generate_with_exit, []
    monkeypatch.setattr(gen, "generate_with_exit", lambda *a, **k: calls.append(1) or real(*a, **k))
    code, text = cli(*base, "--max-new-tokens", 5, "--out", tmp_path / "r")
    refused(code, text, "max_new_tokens: there 4, now 5")
    assert snapshot(tmp_path / "r") == before  # holds today
    assert not calls, "decoded before refusing"
