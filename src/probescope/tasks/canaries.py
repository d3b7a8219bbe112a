"""Canaries: random records a model can only recall by memorizing them (the curvature wing's organism).

A canary is a key (a random code, e.g. "K7QP2M-481 record:") and a body of random common words. Nothing in any corpus
contains them. `candidates` is the seeded stream of (key, body) texts; `canaries` tokenizes it into records of
`prefix_tokens` key tokens + `suffix_tokens` body tokens with distinct prefixes (what the organism trains on).
"""

from __future__ import annotations

import random
from typing import Any, Iterator

WORDS = ("apple river stone cloud yellow garden window silver mountain paper candle forest engine button winter "
         "orange castle pencil ocean market tiger violin marble thunder lemon basket rocket shadow copper meadow "
         "planet harbor jacket saddle tunnel walnut feather lantern puzzle cactus dragon pillow falcon hammer "
         "island kettle ladder mirror needle parrot quartz ribbon spider tomato velvet wagon zebra anchor bridge "
         "carpet desert eagle fabric glacier honey iron jungle kitten lizard magnet nectar olive pepper rabbit "
         "salmon tablet umbrella valley whistle yogurt bamboo cherry dolphin ember fossil ginger hazel igloo "
         "jasmine koala lotus mango nickel oyster pebble quiver raven sapphire tulip vapor willow").split()
CODE_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def candidates(seed: int, suffix_tokens: int) -> Iterator[tuple[str, str]]:
    """The endless seeded stream of (key, body) texts; a body has `suffix_tokens + 4` words (enough tokens to cut)."""
    rng = random.Random(seed * 7919 + 11)
    while True:
        code = "".join(rng.choice(CODE_CHARS) for _ in range(6))
        key = f"{code}-{rng.randint(100, 999)} record:"
        body = " " + " ".join(rng.choice(WORDS) for _ in range(suffix_tokens + 4))
        yield key, body


def canary_records(tokenizer: Any, n: int, prefix_tokens: int, suffix_tokens: int,
                   seed: int) -> list[tuple[str, str, list[int]]]:
    """`n` (key, body, ids) records: ids = the key's first `prefix_tokens` tokens + the body's first `suffix_tokens`,
    distinct prefixes, seeded. Raises ValueError when the tokenizer cannot give `n` distinct prefixes."""
    stream = candidates(seed, suffix_tokens)
    out, seen = [], set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n:
            raise ValueError(f"cannot make {n} canaries with distinct {prefix_tokens}-token prefixes with this tokenizer: "
                             "raise prefix_tokens")
        key, body = next(stream)
        p = tokenizer(key, add_special_tokens=False)["input_ids"]
        s = tokenizer(body, add_special_tokens=False)["input_ids"]
        if len(p) < prefix_tokens or len(s) < suffix_tokens:
            continue
        p = p[:prefix_tokens]
        if tuple(p) in seen:
            continue
        seen.add(tuple(p))
        out.append((key, body, p + s[:suffix_tokens]))
    return out


def canaries(tokenizer: Any, n: int, prefix_tokens: int, suffix_tokens: int, seed: int) -> list[list[int]]:
    """`n` random records as token ids (prefix + suffix), seeded, distinct prefixes."""
    return [ids for _, _, ids in canary_records(tokenizer, n, prefix_tokens, suffix_tokens, seed)]
