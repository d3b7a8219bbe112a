"""An on-disk activation store: sharded safetensors per layer plus a manifest; resumable; shuffled reads.

Layout of a store folder:
    manifest.json                    model, layers, d_model, dtype, context_len, data hash, settings
    tokens/000000.safetensors        token_ids [n_ctx, T], context_index [n_ctx]
    layer_06/000000.safetensors      acts [n_ctx * T, d_model]
    done/000000.json                 written last: the shard is committed only once this exists

Shard `i` holds contexts `[i*S, (i+1)*S)`; every file is written to a temp name and renamed, and the
done marker comes last, so a kill at any moment leaves committed shards intact and the next run redoes
only the uncommitted ones: every token is in the store exactly once. Under `torchrun`, rank `r` of `W`
takes the shards with `i % W == r` and writes them into the same store.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .hooks import check_layers, d_model, residual_hooks, read_into, stop_forward
from .io import atomic_write_json, load_tensors, read_json, save_tensors
from .models.registry import model_id
from .progress import progress

FORMAT = "probescope-activation-store"
VERSION = 1
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    """'float32'/'fp32', 'bfloat16'/'bf16', 'float16'/'fp16' → torch dtype."""
    if name not in DTYPES:
        raise ValueError(f"dtype '{name}' is not supported: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def layer_dir(layer: int) -> str:
    return f"layer_{layer:02d}"


def dist_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# ----------------------------------------------------------------------------------------------------------
# Contexts
# ----------------------------------------------------------------------------------------------------------


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS token in front by default (then every context starts with one)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def make_contexts(tokenizer: Any, texts: Sequence[str], context_len: int, max_contexts: int | None = None) -> torch.Tensor:
    """Tokenize texts, join them with EOS, and cut fixed-length contexts `[N, context_len]`.

    When the tokenizer adds BOS by default, each context is BOS + (context_len − 1) tokens.
    A short tail that does not fill a context is dropped.
    """
    if context_len < 2:
        raise ValueError(f"context_len={context_len} is too short: use at least 2")
    if not texts:
        raise ValueError("no texts to tokenize: the data is empty")
    bos = adds_bos(tokenizer)
    sep = tokenizer.eos_token_id
    body = context_len - 1 if bos else context_len
    stream: list[int] = []
    need = None if max_contexts is None else max_contexts * body
    for t in texts:
        stream.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if sep is not None:
            stream.append(sep)
        if need is not None and len(stream) >= need:
            break
    n = len(stream) // body
    if max_contexts is not None:
        n = min(n, max_contexts)
    if n == 0:
        raise ValueError(
            f"the data has {len(stream)} tokens, fewer than one context of {context_len}: "
            "bring more text or pass a smaller --context-len"
        )
    ids = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    if bos:
        ids = torch.cat([torch.full((n, 1), tokenizer.bos_token_id, dtype=torch.long), ids], dim=1)
    return ids


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


@dataclass
class StoreSettings:
    """What a store is made of; a resumed run must have the same settings."""

    model: str
    layers: list[int]
    d_model: int
    dtype: str
    context_len: int
    n_contexts: int
    shard_contexts: int
    data_hash: str
    data: str = ""
    bos_token_id: int | None = None
    format: str = FORMAT
    version: int = VERSION

    @property
    def n_shards(self) -> int:
        return (self.n_contexts + self.shard_contexts - 1) // self.shard_contexts


def _name(i: int) -> str:
    return f"{i:06d}"


def _clean_temp_files(root: Path) -> None:
    for f in root.rglob(".*.tmp"):
        f.unlink(missing_ok=True)


def build_store(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    layers: Sequence[int],
    out: str | Path,
    *,
    context_len: int = 128,
    max_tokens: int | None = None,
    dtype: str = "float32",
    batch_size: int = 8,
    shard_contexts: int = 64,
    data_name: str = "",
    quiet: bool | None = None,
) -> "ActivationStore":
    """Capture `layers` for fixed-length contexts of `texts` into the store at `out`, resuming if it exists.

    Under torchrun each rank writes its share of shards. Returns the store (complete once all ranks end).
    """
    from .data.readers import data_hash

    layer_ids = sorted(set(check_layers(model, list(layers))))
    torch_dtype = parse_dtype(dtype)
    max_ctx = None if max_tokens is None else max(1, max_tokens // context_len)
    contexts = make_contexts(tokenizer, texts, context_len, max_ctx)
    settings = StoreSettings(
        model=model_id(model), layers=layer_ids, d_model=d_model(model), dtype=dtype_name(torch_dtype),
        context_len=context_len, n_contexts=int(contexts.shape[0]), shard_contexts=shard_contexts,
        data_hash=data_hash(texts), data=data_name,
        bos_token_id=tokenizer.bos_token_id if adds_bos(tokenizer) else None,
    )
    root = Path(out)
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        old = read_json(manifest_path)
        diff = {k: (old.get(k), v) for k, v in asdict(settings).items() if old.get(k) != v}
        if diff:
            detail = "; ".join(f"{k}: store has {a!r}, this run {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{root} holds a store made with other settings ({detail}): use a new --out folder")
    else:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(manifest_path, asdict(settings))
    _clean_temp_files(root)
    rank, world = dist_info()
    todo = [i for i in range(settings.n_shards) if i % world == rank and not (root / "done" / f"{_name(i)}.json").exists()]
    device = next(model.parameters()).device
    with progress(len(todo) * shard_contexts * context_len, f"caching (rank {rank})" if world > 1 else "caching",
                  unit="tok", quiet=quiet) as bar:
        for i in todo:
            lo, hi = i * shard_contexts, min((i + 1) * shard_contexts, settings.n_contexts)
            acts = _capture_contexts(model, contexts[lo:hi], layer_ids, batch_size, device)
            for layer in layer_ids:
                save_tensors(root / layer_dir(layer) / f"{_name(i)}.safetensors",
                             {"acts": acts[layer].to(torch_dtype)})
            save_tensors(root / "tokens" / f"{_name(i)}.safetensors",
                         {"token_ids": contexts[lo:hi], "context_index": torch.arange(lo, hi)})
            atomic_write_json(root / "done" / f"{_name(i)}.json",
                              {"contexts": [lo, hi], "tokens": (hi - lo) * context_len, "rank": rank,
                               "time": time.time()})
            bar.advance((hi - lo) * context_len)
    return ActivationStore(root)


@torch.no_grad()
def _capture_contexts(model, ids: torch.Tensor, layers: list[int], batch_size: int, device) -> dict[int, torch.Tensor]:
    stores: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for s in range(0, ids.shape[0], batch_size):
        b = ids[s : s + batch_size].to(device)
        with residual_hooks(model, {layer: read_into(stores[layer]) for layer in layers}, stop_after=max(layers)):
            with stop_forward():
                model(input_ids=b, use_cache=False)
    out = {}
    for layer in layers:
        x = torch.cat(stores[layer]).flatten(0, 1).float().cpu()
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"layer {layer} produced NaN/inf activations: check the model's dtype and weights")
        out[layer] = x
    return out


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------


class ActivationStore:
    """Read a store: its manifest, committed shards, and shuffled fixed-size token batches."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mp = self.path / "manifest.json"
        if not mp.exists():
            raise FileNotFoundError(f"{self.path} is not an activation store (no manifest.json): build one with `probescope cache`")
        self.manifest: dict[str, Any] = read_json(mp)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{mp} is not a probescope activation store manifest")
        self.settings = StoreSettings(**self.manifest)

    @property
    def layers(self) -> list[int]:
        return list(self.settings.layers)

    @property
    def d_model(self) -> int:
        return self.settings.d_model

    def done_shards(self) -> list[int]:
        """Indices of committed shards, sorted."""
        d = self.path / "done"
        return sorted(int(p.stem) for p in d.glob("*.json")) if d.exists() else []

    @property
    def complete(self) -> bool:
        return len(self.done_shards()) == self.settings.n_shards

    @property
    def n_tokens(self) -> int:
        """Tokens in committed shards."""
        return sum(read_json(self.path / "done" / f"{_name(i)}.json")["tokens"] for i in self.done_shards())

    def _check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise ValueError(f"layer {layer} is not in the store {self.path} (it has layers {self.layers})")

    def shard(self, layer: int, i: int) -> torch.Tensor:
        """Activations `[n_tokens, d_model]` of committed shard `i`, as stored."""
        self._check_layer(layer)
        t = load_tensors(self.path / layer_dir(layer) / f"{_name(i)}.safetensors")["acts"]
        if t.shape[-1] != self.d_model:
            raise ValueError(f"shard {i} of layer {layer} has width {t.shape[-1]}, the manifest says {self.d_model}: the store is corrupt")
        return t

    def tokens(self, i: int) -> dict[str, torch.Tensor]:
        """`token_ids [n_ctx, T]` and `context_index [n_ctx]` of committed shard `i`."""
        return load_tensors(self.path / "tokens" / f"{_name(i)}.safetensors")

    def _keep_mask(self, i: int, drop_bos: bool) -> torch.Tensor | None:
        if not drop_bos or self.settings.bos_token_id is None:
            return None
        return self.tokens(i)["token_ids"].flatten() != self.settings.bos_token_id

    def all(self, layer: int, drop_bos: bool = True) -> torch.Tensor:
        """Every committed token of `layer` in store order, float32 `[N, d]` (small stores only)."""
        parts = []
        for i in self.done_shards():
            x, keep = self.shard(layer, i).float(), self._keep_mask(i, drop_bos)
            parts.append(x if keep is None else x[keep])
        return torch.cat(parts)

    def batches(
        self,
        layer: int,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 1 << 18,
        loop: bool = False,
        drop_bos: bool = True,
        drop_last: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Shuffled float32 batches `[batch_size, d]`: shards in a seeded order through a shuffle buffer.

        Deterministic for a given seed; `loop=True` cycles epochs (each with a new shard order).
        """
        self._check_layer(layer)
        shards = self.done_shards()
        if not shards:
            raise ValueError(f"the store {self.path} has no committed shards yet: run `probescope cache` first")
        g = torch.Generator().manual_seed(seed)
        epoch = 0
        while True:
            order = [shards[j] for j in torch.randperm(len(shards), generator=g).tolist()]
            buf = torch.empty(0, self.d_model)
            for i in order:
                x, keep = self.shard(layer, i).float(), self._keep_mask(i, drop_bos)
                buf = torch.cat([buf, x if keep is None else x[keep]])
                if buf.shape[0] >= shuffle_buffer:
                    buf = buf[torch.randperm(buf.shape[0], generator=g)]
                    n_out = (buf.shape[0] // 2 // batch_size) * batch_size
                    for s in range(0, n_out, batch_size):
                        yield buf[s : s + batch_size]
                    buf = buf[n_out:]
            buf = buf[torch.randperm(buf.shape[0], generator=g)]
            n_full = buf.shape[0] // batch_size * batch_size
            for s in range(0, n_full, batch_size):
                yield buf[s : s + batch_size]
            if not drop_last and n_full < buf.shape[0]:
                yield buf[n_full:]
            epoch += 1
            if not loop:
                return


@dataclass
class CacheConfig:
    """Options of `probescope cache` (also usable from Python with `run_cache`)."""

    out: str
    model: str = "smollm2-135m"
    data: str | None = None
    layers: list[int] = field(default_factory=lambda: [10])
    context_len: int = 128
    max_tokens: int | None = None
    dtype: str = "float32"
    batch_size: int = 8
    shard_contexts: int = 64
    text_field: str = "text"
    device: str = "auto"


def run_cache(cfg: CacheConfig, quiet: bool | None = None) -> ActivationStore:
    """Load the model and data named in `cfg` and build (or resume) the store."""
    from .data import default_corpus, read_texts
    from .models.registry import load_model

    model, tok = load_model(cfg.model, device=cfg.device)
    if tok is None:
        raise ValueError(f"model '{cfg.model}' has no tokenizer files: caching texts needs one")
    texts = list(default_corpus()) if cfg.data is None else read_texts(cfg.data, cfg.text_field)
    return build_store(
        model, tok, texts, cfg.layers, cfg.out, context_len=cfg.context_len, max_tokens=cfg.max_tokens,
        dtype=cfg.dtype, batch_size=cfg.batch_size, shard_contexts=cfg.shard_contexts,
        data_name=cfg.data or "default-corpus:stdlib-docstrings", quiet=quiet,
    )
