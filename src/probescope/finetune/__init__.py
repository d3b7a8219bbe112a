"""Fine-tuning wing: the LoRA runner, the concept lens and learning filters, and `probescope train`."""

from .runner import (  # noqa: F401
    FinetuneConfig,
    collate,
    encode_example,
    load_adapter,
    masked_lm_loss,
    train_lora,
)
