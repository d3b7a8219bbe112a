"""`CacheConfig`: the options of `probescope cache` (the store's format, writer and reader are `core.store`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.options import CorpusOptions, DeviceOptions, ModelOptions, option

# the dtype names `core.store.parse_dtype` reads (kept here so the CLI builds its options without torch)
DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


@dataclass
class CacheConfig(ModelOptions, DeviceOptions, CorpusOptions):
    """Capture activations into a resumable, sharded on-disk store (works under torchrun). Rerun on an existing
    store: committed shards are verified (size and checksum) and a damaged one is redone."""

    out: str = option("runs/store", "store folder (resumed if it exists; it is also the run folder)")
    layers: list[int] = option(lambda: [10], "comma-separated block indices, e.g. 6,12",
                               nonempty="pass --layers, e.g. --layers 6,12")
    context_len: int = option(128, "tokens per context", min=2)
    max_tokens: int | None = option(None, "stop after this many tokens (default: all the data)", min=1)
    dtype: str = option("float32", "float32 | bf16 | fp16", choices=DTYPE_NAMES)
    batch_size: int = option(8, "contexts per forward")
    shard_contexts: int = option(64, "contexts per shard", min=1)
    resume: bool = option(True, "--no-resume: rebuild a store already at --out from scratch",
                          flag="--resume/--no-resume")
    quiet: bool | None = option(None, cli=False)  # None: follow the global progress setting

    def __post_init__(self) -> None:
        super().__post_init__()
        from ..core.store import check_build_args

        check_build_args(self.context_len, self.max_tokens, self.batch_size, self.shard_contexts)  # the cross-field rule
