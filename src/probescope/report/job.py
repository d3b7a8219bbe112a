"""The job runner's inner half: what every job does around its own work, in one place.

    with open_job(cfg, "manifold-find", model, tokenizer) as job:
        layers = job.layers(cfg.layers)          # resolved against the loaded model, never wrapped
        job.run.write_config(cfg)                # the run folder (the --out rule checked) once the checks passed
        acts = capture(job.model, job.tokenizer, job.texts(), ...)   # texts: CorpusOptions' --data, or the default

`open_job` sets the job's torch and BLAS threads (`cfg.threads`) for the whole block and restores them; the model
is loaded from the config's option groups (`model`, `device`, `trust_remote_code`) on first use, or taken as given
(the Python API and the tests pass a model object). The outer half is `clikit.config_command`: options, checks
before anything is written, the `--out` kind rule, the one error handler, progress, the page and the summary.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..core.threads import torch_threads


class Job:
    """One running job: its config, its model (loaded on first use) and its run folder (opened on first use)."""

    def __init__(self, cfg: Any, kind: str | None, model: Any = None, tokenizer: Any = None,
                 out: str | Path | None = None, name: str | None = None, device: str | None = None):
        self.cfg, self.kind, self.name = cfg, kind, name or getattr(cfg, "model", None)
        self.device = device or getattr(cfg, "device", None) or "cpu"
        self._model, self._tokenizer = model, tokenizer
        self._out = out if out is not None else getattr(cfg, "out", None)
        self._run = None

    def _load(self) -> None:
        from ..core.models import load_model

        if not self.name:
            raise ValueError("this job has no model: pass --model (a built-in name, an HF folder or a .gguf file)")
        self._model, self._tokenizer = load_model(self.name, device=self.device,
                                                  trust_remote_code=bool(getattr(self.cfg, "trust_remote_code", False)))

    @property
    def model(self) -> Any:
        """The job's model: the one given, else loaded from `cfg.model` (on `cfg.device`) on first use."""
        if self._model is None:
            self._load()
        return self._model

    @property
    def tokenizer(self) -> Any:
        if self._model is None:
            self._load()
        return self._tokenizer

    def layers(self, layers: Sequence[int] | None) -> list[int]:
        """`layers` checked against the model (an index outside it is refused by name, never wrapped); None: all."""
        from ..core.sites import check_layers, n_layers

        return check_layers(self.model, list(layers)) if layers else list(range(n_layers(self.model)))

    def texts(self) -> list[str]:
        """The job's corpus (`CorpusOptions`): `cfg.data` read through `core.data.corpus_texts` (its `text_field`
        column), or the built-in corpus when no file is given."""
        from ..core.data import corpus_texts

        return corpus_texts(getattr(self.cfg, "data", None), getattr(self.cfg, "text_field", "text") or "text")

    @property
    def run(self) -> Any:
        """The run folder (`RunDir` at `cfg.out`, of this job's kind), opened on first use."""
        if self._run is None:
            from .runs import RunDir

            if self._out is None:
                raise ValueError("this job has no run folder: pass --out DIR")
            self._run = RunDir(self._out, kind=self.kind)
        return self._run


@contextmanager
def open_job(cfg: Any, kind: str | None = None, model: Any = None, tokenizer: Any = None,
             out: str | Path | None = None, name: str | None = None, device: str | None = None) -> Iterator[Job]:
    """Run a job's block with its threads set (torch and BLAS, from `cfg.threads`; 0 or None: unchanged) and a
    `Job` that loads the model (`model` as given, else `name`, else `cfg.model`) and opens the run folder
    (`out`, else `cfg.out`) when first asked, on `device` (else `cfg.device`)."""
    threads = getattr(cfg, "threads", None) or None
    with ExitStack() as stack:
        stack.enter_context(torch_threads(threads))
        if threads:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(threads))
        yield Job(cfg, kind, model, tokenizer, out, name, device)
