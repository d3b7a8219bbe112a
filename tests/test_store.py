"""Activation store: exact contents, resume after a real kill, torchrun ranks, shuffled reads."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port
import torch

import probescope as ps
from probescope.core.store import ActivationStore, build_store, make_contexts

CTX = 16


@pytest.fixture(scope="module")
def texts():
    from probescope.core.data import default_corpus

    return list(default_corpus()[:40])


def _write_jsonl(path: Path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _assert_same_store(a: ActivationStore, b: ActivationStore, layers):
    assert a.done_shards() == b.done_shards()
    for i in a.done_shards():
        for layer in layers:
            assert torch.equal(a.shard(layer, i), b.shard(layer, i)), (layer, i)
        assert torch.equal(a.tokens(i)["token_ids"], b.tokens(i)["token_ids"])


def _every_context_once(store: ActivationStore):
    idx = torch.cat([store.tokens(i)["context_index"] for i in store.done_shards()])
    assert sorted(idx.tolist()) == list(range(store.settings.n_contexts))
    assert store.n_tokens == store.settings.n_contexts * store.settings.context_len


def test_store_contents_equal_capture(tmp_path, tiny_models, texts):
    model, tok = tiny_models["tiny-llama"]
    store = build_store(model, tok, texts, [1, 3], tmp_path / "s", context_len=CTX, shard_contexts=5, max_tokens=40 * CTX)
    assert store.complete and store.layers == [1, 3] and store.d_model == 64
    _every_context_once(store)
    ids = make_contexts(tok, texts, CTX, 40)
    assert (ids[:, 0] == tok.bos_token_id).all()  # the byte tokenizer adds BOS: every context starts with it
    ref = ps.capture(model, ids, layers=[3])
    got = torch.cat([store.shard(3, i) for i in store.done_shards()])
    assert (got - ref.acts[3].flatten(0, 1)).abs().max() <= 1e-5
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["model"] == "tiny-llama" and manifest["context_len"] == CTX and len(manifest["data_hash"]) == 64


def test_shuffled_batches_deterministic_and_complete(tmp_path, tiny_models, texts):
    model, tok = tiny_models["tiny-llama"]
    store = build_store(model, tok, texts, [2], tmp_path / "s", context_len=CTX, shard_contexts=4, max_tokens=48 * CTX)
    a = list(store.batches(2, 32, seed=1, shuffle_buffer=100, drop_last=False))
    b = list(store.batches(2, 32, seed=1, shuffle_buffer=100, drop_last=False))
    c = list(store.batches(2, 32, seed=2, shuffle_buffer=100, drop_last=False))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(torch.cat(a), torch.cat(c))
    everything = store.all(2)  # BOS rows dropped
    assert everything.shape[0] == 48 * (CTX - 1)
    got = torch.cat(a)
    # a permutation of the store: same multiset of rows
    assert got.shape == everything.shape
    assert torch.allclose(got.sum(0), everything.sum(0), atol=1e-3)
    assert torch.equal(got[got[:, 0].argsort()], everything[everything[:, 0].argsort()])
    assert not torch.equal(got, everything)  # and actually shuffled


def test_bf16_store(tmp_path, tiny_models, texts):
    model, tok = tiny_models["tiny-gpt2"]
    store = build_store(model, tok, texts, [0], tmp_path / "s", context_len=CTX, max_tokens=8 * CTX, dtype="bf16")
    assert store.shard(0, 0).dtype == torch.bfloat16
    assert next(store.batches(0, 8)).dtype == torch.float32


def test_resume_refuses_other_settings(tmp_path, tiny_models, texts):
    model, tok = tiny_models["tiny-llama"]
    build_store(model, tok, texts, [1], tmp_path / "s", context_len=CTX, max_tokens=8 * CTX)
    with pytest.raises(ValueError, match="other settings.*layers"):
        build_store(model, tok, texts, [2], tmp_path / "s", context_len=CTX, max_tokens=8 * CTX)


def test_bad_inputs(tmp_path, tiny_models, texts):
    model, tok = tiny_models["tiny-llama"]
    with pytest.raises(ValueError, match="data is empty"):
        build_store(model, tok, [], [1], tmp_path / "a", context_len=CTX)
    with pytest.raises(ValueError, match="fewer than one context"):
        build_store(model, tok, ["hi"], [1], tmp_path / "b", context_len=CTX)
    with pytest.raises(ValueError, match="dtype 'int3'"):
        build_store(model, tok, texts, [1], tmp_path / "c", context_len=CTX, dtype="int3")
    with pytest.raises(FileNotFoundError, match="not an activation store"):
        ActivationStore(tmp_path / "nothing")
    store = build_store(model, tok, texts, [1], tmp_path / "d", context_len=CTX, max_tokens=8 * CTX)
    with pytest.raises(ValueError, match="layer 2 is not in the store"):
        next(store.batches(2, 4))
    shard = tmp_path / "d" / "layer_01" / "000000.safetensors"
    shard.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        store.shard(1, 0)


def _cache_cmd(data: Path, out: Path, extra=()):
    return [sys.executable, "-m", "probescope", "cache", "--model", "tiny-llama", "--data", str(data),
            "--layers", "1,3", "--out", str(out), "--context-len", str(CTX), "--shard-contexts", "2",
            "--batch-size", "2", "--quiet", *extra]


def test_kill_and_resume_real_subprocess(tmp_path, texts):
    data = _write_jsonl(tmp_path / "d.jsonl", texts)
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    env = {**os.environ, "PROBESCOPE_QUIET": "1"}
    limit = ["--max-tokens", str(240 * CTX)]  # 120 shards of 2 contexts
    subprocess.run(_cache_cmd(data, ref_out, limit), check=True, env=env, timeout=300)
    ref = ActivationStore(ref_out)
    total = ref.settings.n_shards
    assert total >= 50
    proc = subprocess.Popen(_cache_cmd(data, out, limit), env=env)
    done = out / "done"
    deadline = time.time() + 120
    while time.time() < deadline:
        n = len(list(done.glob("*.json"))) if done.exists() else 0
        if n >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = ActivationStore(out)
    assert 0 < len(partial.done_shards()) < total, "the run finished before it could be killed"
    subprocess.run(_cache_cmd(data, out, limit), check=True, env=env, timeout=300)
    resumed = ActivationStore(out)
    assert resumed.complete
    _every_context_once(resumed)
    _assert_same_store(resumed, ref, [1, 3])
    assert not list(out.rglob("*.tmp"))


def test_torchrun_two_ranks_write_one_store(tmp_path, texts):
    data = _write_jsonl(tmp_path / "d.jsonl", texts)
    env = {**os.environ, "PROBESCOPE_QUIET": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(_cache_cmd(data, tmp_path / "ref", ["--max-tokens", str(20 * CTX)]), check=True, env=env, timeout=300)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
           "-m", "probescope", *_cache_cmd(data, tmp_path / "ddp", ["--max-tokens", str(20 * CTX)])[3:]]
    subprocess.run(cmd, check=True, env=env, timeout=300)
    ddp = ActivationStore(tmp_path / "ddp")
    assert ddp.complete
    ranks = {json.loads(p.read_text())["rank"] for p in (tmp_path / "ddp" / "done").glob("*.json")}
    assert ranks == {0, 1}
    _every_context_once(ddp)
    _assert_same_store(ddp, ActivationStore(tmp_path / "ref"), [1, 3])


def test_cli_error_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "probescope", "cache", "--model", "tiny-llama", "--layers", "9",
                        "--out", str(tmp_path / "x"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "layer 9 is out of range" in r.stderr and "Traceback" not in r.stderr


def test_cache_config_refuses_like_the_cli_and_the_job_takes_a_model(tmp_path, tiny_models, texts):
    """`CacheConfig` (store/config.py) checks its declared rules on construction, its dtype names are the store's,
    and `run_cache_job` builds from a given model object the store the loader would."""
    from probescope.core.store import DTYPES
    from probescope.store import CacheConfig, run_cache_job
    from probescope.store.config import DTYPE_NAMES

    assert set(DTYPE_NAMES) == set(DTYPES)
    with pytest.raises(ValueError, match=r"--context-len 1 is out of range: it must be ≥ 2"):
        CacheConfig(context_len=1)
    with pytest.raises(ValueError, match=r"--dtype 'int3' is not one of"):
        CacheConfig(dtype="int3")
    with pytest.raises(ValueError, match=r"max_tokens=8 is less than one context of 16"):
        CacheConfig(context_len=CTX, max_tokens=8)  # the cross-field rule, kept in code
    with pytest.raises(ValueError, match=r"--model '' is empty"):
        CacheConfig(model="")
    model, tok = tiny_models["tiny-llama"]
    data = _write_jsonl(tmp_path / "t.jsonl", texts)
    cfg = CacheConfig(model="tiny-llama", data=str(data), layers=[1], out=str(tmp_path / "s"), context_len=CTX,
                      max_tokens=8 * CTX, quiet=True)
    s = run_cache_job(cfg, model, tok)
    assert s["layers"] == [1] and s["tokens"] == 8 * CTX and s["complete"]
    saved = json.loads((tmp_path / "s" / "config.json").read_text())
    assert set(saved) == {"out", "model", "data", "layers", "context_len", "max_tokens", "dtype", "batch_size",
                          "shard_contexts", "text_field", "device", "resume", "quiet"}
    ref = build_store(model, tok, texts, [1], tmp_path / "ref", context_len=CTX, max_tokens=8 * CTX,
                      data_name=str(data))
    _assert_same_store(ActivationStore(tmp_path / "s"), ref, [1])
