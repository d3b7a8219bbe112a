"""An on-disk activation store: sharded safetensors per layer plus a manifest; resumable; shuffled reads.

Layout of a store folder:
    manifest.json                    model, layers, d_model, dtype, context_len, data hash, settings
    tokens/000000.safetensors        token_ids [n_ctx, T], context_index [n_ctx]
    layer_06/000000.safetensors      acts [n_ctx * T, d_model]
    done/000000.json                 written last: the shard is committed only once this exists; it records
                                     each file's size and sha256, so damage is found (`verify_store`)

Shard `i` holds contexts `[i*S, (i+1)*S)`; every file is written to a temp name and renamed, and the
done marker comes last, so a kill at any moment leaves committed shards intact and the next run redoes
only the uncommitted ones: every token is in the store exactly once. Under `torchrun`, rank `r` of `W`
takes the shards with `i % W == r` and writes them into the same store.

A rerun on an existing store verifies every committed shard against its done marker (size and checksum),
redoes a damaged one and says so. Values that are NaN/inf after the dtype cast are refused at write, and
at read with the shard named. A second job writing the same store at the same time is refused (a lock).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .hooks import check_layers, d_model, residual_hooks, read_into, stop_forward
from .io import atomic_write_json, clean_temp_files, file_digest, load_tensors, read_json, save_tensors
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


def _clean_temp_files(root: Path, world: int = 1) -> None:
    """Remove temp files a killed write left behind (under torchrun only old ones: other ranks may be writing)."""
    if world == 1:
        clean_temp_files(root)
        return
    now = time.time()
    for f in root.rglob(".*.tmp"):
        try:
            if now - f.stat().st_mtime > 600:
                f.unlink(missing_ok=True)
        except OSError:
            pass


@contextmanager
def writer_lock(folder: Path, what: str, name: str = ".lock") -> Iterator[None]:
    """Hold an exclusive lock on `folder` while a job writes it; a second job at the same time gets a clear error.

    The lock is an flock on `folder/name`: the kernel drops it when the process dies (even by SIGKILL), so a
    killed run never leaves a stale lock.
    """
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"another probescope job is writing {what} {folder} right now: wait for it to end, "
                         "or use another --out") from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def check_build_args(context_len: int, max_tokens: int | None, batch_size: int, shard_contexts: int) -> None:
    """Refuse values that make no store (before anything is written), naming the value and the fix."""
    if not isinstance(context_len, int) or context_len < 2:
        raise ValueError(f"context_len={context_len!r} is too short: use --context-len 2 or more (128 by default)")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or max_tokens <= 0:
            raise ValueError(f"max_tokens={max_tokens!r}: use a positive --max-tokens (at least one context, "
                             f"{context_len} tokens), or leave it out to cache all the data")
        if max_tokens < context_len:
            raise ValueError(f"max_tokens={max_tokens} is less than one context of {context_len} tokens: raise "
                             f"--max-tokens to at least {context_len} or lower --context-len")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: use --batch-size 1 or more (contexts per forward pass)")
    if not isinstance(shard_contexts, int) or shard_contexts < 1:
        raise ValueError(f"shard_contexts={shard_contexts!r}: use --shard-contexts 1 or more (contexts per shard file)")


def _shard_files(settings: "StoreSettings", i: int) -> list[str]:
    return [f"{layer_dir(layer)}/{_name(i)}.safetensors" for layer in settings.layers] + [f"tokens/{_name(i)}.safetensors"]


def shard_damage(root: Path, settings: "StoreSettings", i: int, deep: bool = True) -> str | None:
    """Why committed shard `i` is damaged (a missing, truncated or changed file; a bad marker), or None if sound.

    `deep=False` checks sizes only; `deep=True` also the sha256 of every file.
    """
    marker = root / "done" / f"{_name(i)}.json"
    try:
        m = read_json(marker)
    except (ValueError, OSError) as e:
        return f"its done marker {marker.name} is unreadable ({e.__class__.__name__})"
    if not isinstance(m, dict):
        return f"its done marker {marker.name} is not a JSON object"
    files = m.get("files")
    expected = _shard_files(settings, i)
    if files is None:  # a marker written before checksums: check the files exist
        for rel in expected:
            if not (root / rel).exists():
                return f"{rel} is missing"
        return None
    for rel in expected:
        if rel not in files:
            return f"its done marker does not list {rel}"
    for rel, d in files.items():
        p = root / rel
        if not p.exists():
            return f"{rel} is missing"
        size = p.stat().st_size
        if size != d.get("size"):
            return f"{rel} has {size} bytes, its done marker says {d.get('size')} (truncated or overwritten)"
        if deep and file_digest(p)["sha256"] != d.get("sha256"):
            return f"{rel} does not match the checksum in its done marker (its bytes changed)"
    return content_damage(root, settings, i) if deep else None


def content_damage(root: Path, settings: "StoreSettings", i: int) -> str | None:
    """What is wrong inside shard `i`'s files, whatever its marker says: each must parse as safetensors (never
    unpickled), an activation file must be [n, d_model] of finite values, a token file must hold its two tensors."""
    from .io import load_tensors

    for rel in _shard_files(settings, i):
        try:
            t = load_tensors(root / rel)
        except (ValueError, OSError) as e:
            return f"{rel} is not a readable safetensors file ({e.__class__.__name__})"
        if rel.startswith("tokens/"):
            if not {"token_ids", "context_index"} <= set(t):
                return f"{rel} lacks token_ids or context_index"
            continue
        acts = t.get("acts")
        if acts is None or acts.dim() != 2 or acts.shape[-1] != settings.d_model:
            return f"{rel} does not hold [n, {settings.d_model}] activations"
        if not bool(torch.isfinite(acts).all()):
            return f"{rel} holds {int((~torch.isfinite(acts)).sum())} NaN/inf values"
    return None


def verify_store(path: str | Path, deep: bool = True) -> dict[str, Any]:
    """Check every committed shard of the store at `path` against its done marker.

    Returns {"path", "ok", "complete", "n_shards", "committed", "damaged": {shard: reason}, "uncommitted": [...],
    "temp_files": [...]}; `ok` is False when a committed shard is damaged.
    """
    store = ActivationStore(path)
    root = store.path
    done = store.done_shards()
    damaged = {i: r for i in done if (r := shard_damage(root, store.settings, i, deep)) is not None}
    extra = [i for i in done if i >= store.settings.n_shards]
    for i in extra:
        damaged[i] = f"shard {i} is beyond the manifest's {store.settings.n_shards} shards"
    uncommitted = [i for i in range(store.settings.n_shards) if i not in set(done)]
    temps = sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp"))
    return {"path": str(root), "ok": not damaged, "complete": not damaged and not uncommitted,
            "n_shards": store.settings.n_shards, "committed": len(done) - len(damaged),
            "damaged": damaged, "uncommitted": uncommitted, "temp_files": temps}


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
    resume: bool = True,
) -> "ActivationStore":
    """Capture `layers` for fixed-length contexts of `texts` into the store at `out`, resuming if it exists.

    Under torchrun each rank writes its share of shards. Returns the store (complete once all ranks end).
    `resume=False` rebuilds a store that exists there from scratch (its shards are deleted first).
    """
    from .data.readers import data_hash

    check_build_args(context_len, max_tokens, batch_size, shard_contexts)
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
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(20, "the store path is a file, not a folder", str(root))
    rank, world = dist_info()
    with writer_lock(root, "the activation store", f".lock-rank{rank}"):
        if not resume and rank == 0 and (root / "manifest.json").exists():
            _remove_store(root)
        return _build_locked(model, contexts, settings, root, layer_ids, torch_dtype, batch_size, quiet, rank, world)


def _remove_store(root: Path) -> None:
    """Delete a store's contents, uncommitting first (done markers go before the data they vouch for)."""
    import shutil

    if (root / "done").exists():
        shutil.rmtree(root / "done")
    (root / "manifest.json").unlink(missing_ok=True)
    for d in [root / "tokens", *root.glob("layer_*")]:
        if d.is_dir():
            shutil.rmtree(d)


def _build_locked(model, contexts, settings: StoreSettings, root: Path, layer_ids: list[int], torch_dtype,
                  batch_size: int, quiet: bool | None, rank: int, world: int) -> "ActivationStore":
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        old = read_json(manifest_path)
        if not isinstance(old, dict):
            raise ValueError(f"{manifest_path} is not a store manifest: use a new --out folder")
        diff = {k: (old.get(k), v) for k, v in asdict(settings).items() if old.get(k) != v}
        if diff:
            detail = "; ".join(f"{k}: store has {a!r}, this run {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{root} holds a store made with other settings ({detail}): use a new --out folder, "
                             "pass --no-resume to rebuild this one from scratch, or rerun with the store's settings "
                             "to resume it")
    else:
        atomic_write_json(manifest_path, asdict(settings))
    _clean_temp_files(root, world)
    mine = [i for i in range(settings.n_shards) if i % world == rank]
    repaired: dict[int, str] = {}
    for i in mine:  # a rerun verifies what is committed: a damaged shard is uncommitted and redone
        marker = root / "done" / f"{_name(i)}.json"
        if marker.exists() and (why := shard_damage(root, settings, i)) is not None:
            marker.unlink()
            repaired[i] = why
            if not (quiet or os.environ.get("PROBESCOPE_QUIET")):
                print(f"probescope: {root}: shard {i} is damaged ({why}): redoing it", file=sys.stderr)
    todo = [i for i in mine if not (root / "done" / f"{_name(i)}.json").exists()]
    device = next(model.parameters()).device
    shard_contexts, context_len = settings.shard_contexts, settings.context_len
    dname = dtype_name(torch_dtype)
    with progress(len(todo) * shard_contexts * context_len, f"caching (rank {rank})" if world > 1 else "caching",
                  unit="tok", quiet=quiet) as bar:
        for i in todo:
            lo, hi = i * shard_contexts, min((i + 1) * shard_contexts, settings.n_contexts)
            acts = _capture_contexts(model, contexts[lo:hi], layer_ids, batch_size, device)
            cast = {}
            for layer in layer_ids:  # refuse non-finite values after the cast, before any file of the shard is written
                t = acts[layer].to(torch_dtype)
                if not bool(torch.isfinite(t).all()):
                    n_bad = int((~torch.isfinite(t)).sum())
                    big = float(acts[layer].abs().max())
                    raise FloatingPointError(
                        f"layer {layer}, shard {i}: {n_bad} activations become NaN/inf when cast to {dname} "
                        f"(largest |value| {big:.3g}; {dname} holds at most {torch.finfo(torch_dtype).max:.3g}): "
                        "use --dtype bf16 or float32; nothing of this shard was written")
                cast[layer] = t
            files: dict[str, dict[str, Any]] = {}
            for layer in layer_ids:
                rel = f"{layer_dir(layer)}/{_name(i)}.safetensors"
                save_tensors(root / rel, {"acts": cast[layer]})
                files[rel] = file_digest(root / rel)
            rel = f"tokens/{_name(i)}.safetensors"
            save_tensors(root / rel, {"token_ids": contexts[lo:hi], "context_index": torch.arange(lo, hi)})
            files[rel] = file_digest(root / rel)
            atomic_write_json(root / "done" / f"{_name(i)}.json",
                              {"contexts": [lo, hi], "tokens": (hi - lo) * context_len, "rank": rank,
                               "time": time.time(), "files": files})
            bar.advance((hi - lo) * context_len)
    store = ActivationStore(root)
    store.repaired = repaired
    return store


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
        try:
            self.settings = StoreSettings(**self.manifest)
        except TypeError as e:
            raise ValueError(f"{mp} does not hold the fields of a store manifest ({e}): the file is damaged") from None
        self.repaired: dict[int, str] = {}

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

    def _damaged(self, what: str) -> str:
        return (f"{what}: the store is damaged; `probescope store verify {self.path}` lists the damage, and "
                "rerunning `probescope cache` with the same options redoes the damaged shards")

    def _marker(self, i: int) -> dict[str, Any]:
        m = read_json(self.path / "done" / f"{_name(i)}.json")
        if not isinstance(m, dict) or "tokens" not in m:
            raise ValueError(self._damaged(f"the done marker of shard {i} is not a marker written by `probescope cache`"))
        return m

    def shard(self, layer: int, i: int) -> torch.Tensor:
        """Activations `[n_tokens, d_model]` of committed shard `i`, as stored (refused if damaged or non-finite)."""
        self._check_layer(layer)
        p = self.path / layer_dir(layer) / f"{_name(i)}.safetensors"
        if not p.exists():
            raise FileNotFoundError(self._damaged(f"{p} is missing although shard {i} is marked done"))
        try:
            t = load_tensors(p)["acts"]
        except (ValueError, KeyError) as e:
            raise ValueError(self._damaged(f"{p} is unreadable ({e})")) from None
        if t.dim() != 2 or t.shape[-1] != self.d_model:
            raise ValueError(self._damaged(f"shard {i} of layer {layer} ({p}) has shape {tuple(t.shape)}, the manifest says width {self.d_model}"))
        want = self._marker(i)["tokens"]
        if t.shape[0] != want:
            raise ValueError(self._damaged(f"shard {i} of layer {layer} ({p}) has {t.shape[0]} rows, its done marker says {want}"))
        if not bool(torch.isfinite(t).all()):
            raise FloatingPointError(self._damaged(f"shard {i} of layer {layer} ({p}) holds {int((~torch.isfinite(t)).sum())} NaN/inf values"))
        return t

    def tokens(self, i: int) -> dict[str, torch.Tensor]:
        """`token_ids [n_ctx, T]` and `context_index [n_ctx]` of committed shard `i`."""
        p = self.path / "tokens" / f"{_name(i)}.safetensors"
        if not p.exists():
            raise FileNotFoundError(self._damaged(f"{p} is missing although shard {i} is marked done"))
        try:
            t = load_tensors(p)
            t["token_ids"], t["context_index"]
        except (ValueError, KeyError) as e:
            raise ValueError(self._damaged(f"{p} is unreadable ({e})")) from None
        return t

    def verify(self, deep: bool = True) -> dict[str, Any]:
        """`verify_store` of this store."""
        return verify_store(self.path, deep)

    def n_batch_tokens(self, drop_bos: bool = True) -> int:
        """Tokens one epoch of `batches` draws from (committed shards, less BOS positions when dropped)."""
        n = 0
        for i in self.done_shards():
            m = self._marker(i)
            n += m["tokens"]
            if drop_bos and self.settings.bos_token_id is not None:
                lo, hi = m.get("contexts", [0, 0])
                n -= hi - lo
        return n

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
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: use a batch size of 1 or more")
        avail = self.n_batch_tokens(drop_bos)
        if avail < batch_size and (drop_last or loop):
            raise ValueError(
                f"the store {self.path} has {avail:,} tokens of layer {layer}{' (BOS positions dropped)' if drop_bos and self.settings.bos_token_id is not None else ''}, "
                f"fewer than one batch of {batch_size:,}: lower --batch-size to at most {avail:,}, or cache more tokens "
                "(--max-tokens)")
        g = torch.Generator().manual_seed(seed)
        epoch = 0
        while True:
            yielded = 0
            order = [shards[j] for j in torch.randperm(len(shards), generator=g).tolist()]
            buf = torch.empty(0, self.d_model)
            for i in order:
                x, keep = self.shard(layer, i).float(), self._keep_mask(i, drop_bos)
                buf = torch.cat([buf, x if keep is None else x[keep]])
                if buf.shape[0] >= shuffle_buffer:
                    buf = buf[torch.randperm(buf.shape[0], generator=g)]
                    n_out = (buf.shape[0] // 2 // batch_size) * batch_size
                    for s in range(0, n_out, batch_size):
                        yielded += 1
                        yield buf[s : s + batch_size]
                    buf = buf[n_out:]
            buf = buf[torch.randperm(buf.shape[0], generator=g)]
            n_full = buf.shape[0] // batch_size * batch_size
            for s in range(0, n_full, batch_size):
                yielded += 1
                yield buf[s : s + batch_size]
            if not drop_last and n_full < buf.shape[0]:
                yielded += 1
                yield buf[n_full:]
            if loop and not yielded:  # never spin: an epoch without a batch would loop forever
                raise ValueError(f"the store {self.path} gives no batch of {batch_size} for layer {layer}: lower --batch-size")
            epoch += 1
            if not loop:
                return
