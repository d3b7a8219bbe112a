"""Built-in probe tasks: the generated sets of tasks/probing.py (truth, sentiment, topic) as probe datasets.

Each task has at least two domains, so a probe trained on one can be scored on the other (see tasks/probing.py).
"""

from __future__ import annotations

import random

from ..tasks.probing import (  # noqa: F401  (the generators live with the data; re-exported for old callers)
    CITIES, CITY_FRAMES, NEG_ADJ, NOUNS, NUMBER_FRAMES, POS_ADJ, TASKS, TOPICS, Task, list_tasks,
)
from .data import ProbeDataset


def make_task(name: str, n_per_domain: int = 400, seed: int = 0) -> ProbeDataset:
    """Generate a built-in task: `n_per_domain` examples per domain (balanced classes), seeded, with
    stratified train/val/test splits (60/20/20)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)} (or pass --data FILE)")
    if n_per_domain < 10:
        raise ValueError(f"n_per_domain={n_per_domain}: use at least 10 so each split has both classes")
    texts, labels, domains = TASKS[name].generate(n_per_domain, random.Random(seed))
    return ProbeDataset(texts, labels, domains, [], name).with_splits(seed=seed)
