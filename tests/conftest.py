import os

import pytest
import torch

os.environ.setdefault("PROBESCOPE_QUIET", "1")
# every plot a test draws must keep the house's rules (titled axes, named colour scales, intervals both sides):
# report.svg.draw raises on a spec that breaks one (#36)
os.environ.setdefault("PROBESCOPE_STRICT_PLOTS", "1")
# SAE kernel paths by the CPU-flag rule, not by timing on a busy machine (tests/test_sae_autotune.py times them)
os.environ.setdefault("PROBESCOPE_AUTOTUNE", "0")
torch.manual_seed(0)

TINY = ["tiny-llama", "tiny-gemma3", "tiny-gpt2"]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (small ops on a busy 2-core machine run far faster), restored after.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    from probescope.core.threads import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_models():
    """The three tiny seeded models, loaded once."""
    from probescope import load_model

    return {name: load_model(name) for name in TINY}


@pytest.fixture(scope="session")
def smollm2():
    from probescope import load_model

    return load_model("smollm2-135m")


def free_port() -> str:
    """A TCP port free right now on localhost, for torchrun's rendezvous (fixed ports collide between runs)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])
