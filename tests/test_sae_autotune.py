"""The per-machine SAE kernel choice: measured once, cached, overridable; a corrupt cache is measured again."""

import json

import pytest

from probescope.sae import autotune
from probescope.sae.autotune import PATHS, cache_file, choose_path, time_paths

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = dict(d_in=32, n_latents=256, k=8, batch=256)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBESCOPE_CACHE", str(tmp_path))
    monkeypatch.setenv("PROBESCOPE_AUTOTUNE", "1")
    return tmp_path / "kernel_paths.json"


def test_time_paths_measures_every_candidate():
    ms = time_paths(**SHAPE, steps=2)
    assert set(ms) == set(PATHS)
    assert all(v > 0 for v in ms.values())
    assert set(time_paths(**SHAPE, arch="relu", steps=1)) == {"dense fp32"}  # relu has no sparse kernels


def test_auto_measures_once_then_reads_the_cache(cache, monkeypatch):
    first = choose_path(**SHAPE)
    assert first.path in PATHS and set(first.ms_per_step) == set(PATHS)
    assert first.path == min(first.ms_per_step, key=first.ms_per_step.__getitem__)  # the fastest one
    assert cache_file() == cache and cache.exists()
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["path"] == first.path
    monkeypatch.setattr(autotune, "time_paths", lambda *a, **k: pytest.fail("measured again despite the cache"))
    second = choose_path(**SHAPE)
    assert (second.path, second.sparse, second.fast) == (first.path, first.sparse, first.fast)
    assert "cached" in second.why and second.ms_per_step == {}
    # another shape is another key: measured again
    monkeypatch.setattr(autotune, "time_paths", lambda *a, **k: {"dense fp32": 3.0, "sparse fp32": 1.0,
                                                                 "sparse + bf16 top-k select": 2.0})
    other = choose_path(d_in=32, n_latents=512, k=8, batch=256)
    assert other.path == "sparse fp32" and (other.sparse, other.fast) == (True, False)
    assert len(json.loads(cache.read_text())) == 2


def test_the_fastest_measured_path_wins(cache, monkeypatch):
    monkeypatch.setattr(autotune, "time_paths", lambda *a, **k: {"dense fp32": 1.0, "sparse fp32": 2.0,
                                                                 "sparse + bf16 top-k select": 3.0})
    c = choose_path(**SHAPE)
    assert (c.path, c.sparse, c.fast) == ("dense fp32", False, False)
    assert "dense fp32 1.0 ms/step" in c.why


def test_corrupt_cache_is_measured_again_and_rewritten(cache, monkeypatch):
    cache.write_text("{not json")
    monkeypatch.setattr(autotune, "time_paths", lambda *a, **k: {"dense fp32": 3.0, "sparse fp32": 2.0,
                                                                 "sparse + bf16 top-k select": 1.0})
    c = choose_path(**SHAPE)
    assert (c.path, c.fast) == ("sparse + bf16 top-k select", True)
    assert list(json.loads(cache.read_text()).values())[0]["path"] == c.path
    cache.write_text(json.dumps({k: {"path": "warp drive"} for k in json.loads(cache.read_text())}))
    assert choose_path(**SHAPE).path == "sparse + bf16 top-k select"  # an unknown path in the cache is not trusted


def test_overrides_skip_the_measurement(cache, monkeypatch):
    monkeypatch.setattr(autotune, "time_paths", lambda *a, **k: pytest.fail("an override must not measure"))
    assert choose_path(**SHAPE, sparse=False)[:3] == ("dense fp32", False, False)
    assert choose_path(**SHAPE, fast_select="on")[:3] == ("sparse + bf16 top-k select", True, True)
    assert choose_path(**SHAPE, fast_select="off")[:3] == ("sparse fp32", True, False)
    assert choose_path(**SHAPE, arch="jumprelu").path == "dense fp32"
    monkeypatch.setenv("PROBESCOPE_AUTOTUNE", "0")
    rule = choose_path(**SHAPE)
    assert rule.path in ("sparse fp32", "sparse + bf16 top-k select") and rule.ms_per_step == {}
    assert not cache.exists()


def test_train_reports_the_measured_choice(cache, tmp_path):
    import torch

    from probescope.core.io import read_json
    from probescope.sae import SAEConfig, TrainConfig, train_sae
    from probescope.sae.sources import TensorSource

    x = torch.randn(4096, 32, generator=torch.Generator().manual_seed(0))
    train_sae(TensorSource(x), SAEConfig(d_in=32, n_latents=256, k=8), TrainConfig(tokens=1024, batch_size=256,
              device="cpu"), tmp_path / "sae", quiet=True)
    kp = read_json(tmp_path / "sae" / "metrics.json")["kernel_path"]
    assert kp["path"] in PATHS and "measured on this machine" in kp["why"]
    assert cache.exists()
