"""Line breaks (Gurnee et al. 2025, issue #32 item 4): does the model compare the characters since the line start
with the line width, and which heads carry the width to that decision?

Texts are generated so that the question has one answer: a few previous lines of exactly one word count, each
`width − 2 .. width` characters long (the width the text is wrapped at), then a last line that stops `r` characters
short of the width. Every word is one token (with and without a leading space) in the model's tokenizer, so two
texts with the same word counts per line have the same token count, and a pair can differ in the width alone:

* **Behaviour.** The newline's log-odds at the end of the last line, over a sweep of widths and remainders r;
  a least-squares fit `log-odds ≈ a + b_count·count + b_width·width` says whether the model compares (b_count > 0,
  b_width < 0, similar sizes) or only counts (b_width ≈ 0); the AUROC of the log-odds for "no next word fits"
  (r ≤ 1) against "a long word fits" (r ≥ 10).
* **Pairs.** The same last line after previous lines wrapped at `width` (a break is due: r ≤ 1) and at
  `width + delta` (a next word fits): the gap in newline log-odds says how much the width alone moves the decision.
* **Components.** Exact activation patching of every head's and every MLP's output **at the last token only**,
  from the break text into the wide one, metric the newline log-odds; folds of pairs give each effect a 95%
  interval. Only the last token: the two texts' previous lines differ in their words, so a component patched at
  every position would carry those words (MLP 0 alone then restores the whole gap); at the last token it carries
  only what it brings to the decision.
* **What the top components carry.** At the last token, a held-out linear read-out of the count, the width and the
  remaining characters `width − count` from each top component's output, each beside shuffled values; and the
  share of each top head's attention on the newline tokens beside its layer's mean head.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

# Plain words of 2-9 letters; the run keeps those that are one token for the model's tokenizer.
LB_WORDS = ("an as at be by do go he if in is it me my no of on or so to up us we "
            "and are but can day did for get had has her him his how its let man new not now old one "
            "our out put say see she the two use way who why yes you "
            "also back been best both came city come down each even find five four from gave give good hand "
            "have here home just keep kind know last left life like line long look made make many more most "
            "much must name near next only open over part play read room same seen show side some take tell "
            "than that them then they this time tree turn upon very walk want well went were what when will "
            "with word work year "
            "about above after again along began being below black bring built carry clean clear close could "
            "early earth every field first found front given great green group heard heavy horse house large "
            "later learn light might money month music never night north often order other paper party place "
            "plant point power quite river right round seven shall short since small sound south spoke stand "
            "start still stone story study table taken thing think three today under until usual water where "
            "which while white whole woman world would write young "
            "across always animal answer around became before better bright change church common course "
            "during enough family father figure follow friend garden ground happen letter little market "
            "matter minute moment mother number object office orange others people person picture pretty "
            "public reason record school second should simple silver single summer system though toward "
            "travel winter within window yellow "
            "against already another because believe between brother century certain company country "
            "evening example finally general however husband instead kitchen machine million morning nothing "
            "perhaps picture present problem produce program provide quickly several society special through "
            "together without "
            "anything business children continue describe director discover everyone hospital language "
            "material military movement national original possible probably question remember research "
            "security separate shoulder standard strategy thousand together yourself").split()

@dataclass(frozen=True)
class BreakText:
    """One generated text: its width, the characters of the last line (`count`) and the remainder width − count."""

    text: str
    width: int
    count: int

    @property
    def remaining(self) -> int:
        return self.width - self.count


def single_token_words(tokenizer: Any, words: Sequence[str] = LB_WORDS) -> dict[int, list[str]]:
    """Words that are one token after a space and one token after a newline, by length (chars)."""
    nl = tokenizer("\n", add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    out: dict[int, list[str]] = {}
    for w in dict.fromkeys(words):
        a = tokenizer(" " + w, add_special_tokens=False)["input_ids"]
        b = tokenizer("\n" + w, add_special_tokens=False)["input_ids"]
        if len(a) == 1 and len(b) == len(nl) + 1 and b[:len(nl)] == nl and unk not in (a[0], b[-1]):
            out.setdefault(len(w), []).append(w)
    return out


def _lengths(rng: random.Random, m: int, total: int, lens: list[int]) -> list[int] | None:
    """`m` word lengths from `lens` whose words and separating spaces make `total` characters (None: impossible)."""
    lo, hi = min(lens), max(lens)
    need = total - (m - 1)
    if not m * lo <= need <= m * hi:
        return None
    out = [rng.choice(lens) for _ in range(m)]
    for _ in range(2000):
        s = sum(out)
        if s == need:
            return out
        i = rng.randrange(m)
        step = 1 if s < need else -1
        nxt = out[i] + step
        while lo <= nxt <= hi and nxt not in lens:
            nxt += step
        if lo <= nxt <= hi:
            out[i] = nxt
    return None


def _line(rng: random.Random, m: int, total: int, vocab: dict[int, list[str]]) -> str | None:
    ls = _lengths(rng, m, total, sorted(vocab))
    return None if ls is None else " ".join(rng.choice(vocab[n]) for n in ls)


def words_per_line(width: int, vocab: dict[int, list[str]]) -> int:
    """Words per previous line for a text of `width`: about the mean word length plus a space each."""
    mean = float(np.mean([n for n, ws in vocab.items() for _ in ws]))
    return max(2, int(round((width + 1) / (mean + 1))))


def break_text(rng: random.Random, vocab: dict[int, list[str]], width: int, remaining: int, lines: int,
               m: int | None = None, last: str | None = None) -> BreakText | None:
    """A text of `lines` previous lines of `m` words wrapped at `width` (each line width − 2 .. width chars) and a
    last line of count width − remaining (`last`: that line given)."""
    m = m or words_per_line(width, vocab)
    prev = []
    for _ in range(lines):
        ln = _line(rng, m, width - rng.randrange(3), vocab)
        if ln is None:
            return None
        prev.append(ln)
    count = width - remaining
    if last is None:
        mm = max(1, int(round(m * count / width)))
        last = next((x for x in (_line(rng, k, count, vocab) for k in (mm, mm - 1, mm + 1, 1) if k >= 1) if x), None)
        if last is None:
            return None
    return BreakText("\n".join(prev + [last]), width, len(last))


def sweep(tokenizer: Any, widths: Sequence[int], n: int, lines: int, seed: int,
          max_remaining: int = 15) -> list[BreakText]:
    """`n` texts over the widths and remainders 0..max_remaining (cycled evenly; at most width − 3)."""
    vocab = single_token_words(tokenizer)
    check_vocab(vocab)
    rng = random.Random(seed)
    cells = [(w, r) for w in widths for r in range(0, min(max_remaining, w - 3) + 1)]
    out: list[BreakText] = []
    i = 0
    while len(out) < n and i < 20 * n + 100:
        w, r = cells[i % len(cells)]
        i += 1
        t = break_text(rng, vocab, w, r, lines)
        if t is not None:
            out.append(t)
    return out


def pairs(tokenizer: Any, widths: Sequence[int], n: int, lines: int, delta: int, seed: int
          ) -> list[tuple[BreakText, BreakText]]:
    """`n` (break, wide) pairs: the same last line (r ≤ 1 at `width`) after previous lines wrapped at `width` and at
    `width + delta`, with the same word counts, so the same token count (checked)."""
    vocab = single_token_words(tokenizer)
    check_vocab(vocab)
    rng = random.Random(seed + 7)
    out: list[tuple[BreakText, BreakText]] = []
    tries = 0
    while len(out) < n and tries < 50 * n + 100:
        tries += 1
        w = widths[tries % len(widths)]
        m = words_per_line(w + delta // 2, vocab)
        a = break_text(rng, vocab, w, rng.randrange(2), lines, m=m)
        if a is None:
            continue
        last = a.text.split("\n")[-1]
        b = break_text(rng, vocab, w + delta, delta + a.remaining, lines, m=m, last=last)
        if b is None:
            continue
        if len(tokenizer(a.text)["input_ids"]) != len(tokenizer(b.text)["input_ids"]):
            continue
        out.append((a, b))
    return out


def check_vocab(vocab: dict[int, list[str]]) -> None:
    if sum(len(v) for v in vocab.values()) < 20 or len(vocab) < 4:
        raise ValueError(f"only {sum(len(v) for v in vocab.values())} words of {len(vocab)} lengths are one token for "
                         "this tokenizer: line-break texts need ≥ 20 words of ≥ 4 lengths (a byte or character "
                         "tokenizer cannot hold a line's token count fixed; use a model with a BPE vocabulary)")


def newline_id(tokenizer: Any) -> int:
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"'\\n' is {len(ids)} tokens for this tokenizer: the newline decision needs it as one token")
    return int(ids[0])


def newline_logodds(nl: int):
    """A patching metric: log p(newline) − log(1 − p(newline)) at the last position, per row."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        lp = logits[:, -1].float().log_softmax(-1)[:, nl]
        return lp - torch.log1p(-lp.exp().clamp(max=1 - 1e-7))

    metric.last_only = True  # type: ignore[attr-defined]
    return metric


@torch.no_grad()
def logodds(model: Any, tokenizer: Any, texts: Sequence[BreakText], batch_size: int) -> np.ndarray:
    """The newline log-odds at the end of every text."""
    from ..core.capture import left_pad
    from ..core.tokens import pad_id

    metric = newline_logodds(newline_id(tokenizer))
    device = next(model.parameters()).device
    out = []
    for b in range(0, len(texts), batch_size):
        seqs = [tokenizer(t.text)["input_ids"] for t in texts[b: b + batch_size]]
        ids, mask = left_pad(seqs, pad_id(tokenizer))
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                       logits_to_keep=1).logits
        out.append(metric(logits).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    d = pos[:, None] - neg[None, :]
    return float((d > 0).mean() + 0.5 * (d == 0).mean())


def behaviour(texts: Sequence[BreakText], lo: np.ndarray) -> dict[str, Any]:
    """The fit log-odds ≈ a + b_count·count + b_width·width (with bootstrap 95% intervals), the AUROC of r ≤ 1
    against r ≥ 10, and the mean log-odds per remainder."""
    c = np.array([t.count for t in texts], float)
    w = np.array([t.width for t in texts], float)
    r = w - c
    A = np.stack([np.ones_like(c), c, w], 1)
    coef = np.linalg.lstsq(A, lo, rcond=None)[0]
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(500):
        i = rng.integers(0, len(lo), len(lo))
        boots.append(np.linalg.lstsq(A[i], lo[i], rcond=None)[0])
    B = np.array(boots)
    ci = np.percentile(B, [2.5, 97.5], axis=0)
    fit_r2 = 1 - float(((lo - A @ coef) ** 2).sum()) / max(float(((lo - lo.mean()) ** 2).sum()), 1e-12)
    A1 = A[:, :2]
    c1 = np.linalg.lstsq(A1, lo, rcond=None)[0]
    count_r2 = 1 - float(((lo - A1 @ c1) ** 2).sum()) / max(float(((lo - lo.mean()) ** 2).sum()), 1e-12)
    per_r = {int(x): float(lo[r == x].mean()) for x in sorted(set(r.astype(int).tolist()))}
    return {"n": len(texts), "b_count": float(coef[1]), "b_count_ci": ci[:, 1].tolist(), "b_width": float(coef[2]),
            "b_width_ci": ci[:, 2].tolist(), "fit_r2": fit_r2, "count_only_r2": count_r2,
            "auroc_due": auroc(lo[r <= 1], lo[r >= 10]), "mean_by_remaining": per_r}


def random_folds(n: int, seed: int) -> np.ndarray:
    f = np.zeros(n, dtype=int)
    f[np.random.default_rng(seed).permutation(n)[1::2]] = 1
    return f


def carried(X: np.ndarray, texts: Sequence[BreakText], n_shuffles: int, seed: int) -> dict[str, dict[str, float]]:
    """Held-out linear read-out R² of the count, the width and the remainder from X [N, d], beside shuffles."""
    from .geometry import probe_r2

    folds = random_folds(len(texts), seed)
    rng = np.random.default_rng(seed + 1)
    out = {}
    for name, v in (("count", [t.count for t in texts]), ("width", [t.width for t in texts]),
                    ("remaining", [t.remaining for t in texts])):
        y = np.array(v, float)[:, None]
        real = probe_r2(X.astype(np.float64), y, folds)
        sh = [probe_r2(X.astype(np.float64), rng.permutation(y), folds) for _ in range(n_shuffles)]
        out[name] = {"probe": real, "probe_p95": float(np.percentile(sh, 95))}
    return out


@torch.no_grad()
def newline_attention(model: Any, tokenizer: Any, texts: Sequence[BreakText], heads: Sequence[tuple[int, int]],
                      batch_size: int) -> dict[str, Any]:
    """Per head (layer, h): the mean share of the last token's attention on newline tokens, and per layer the mean
    over its heads (the baseline each head is shown beside)."""
    from ..core.capture import left_pad
    from ..core.sites import read_sites
    from ..core.tokens import pad_id

    nl = newline_id(tokenizer)
    layers = sorted({L for L, _ in heads})
    if not layers:
        return {"heads": {}, "layer_mean": {}}
    per_layer: dict[int, list[np.ndarray]] = {L: [] for L in layers}
    for b in range(0, len(texts), batch_size):
        seqs = [tokenizer(t.text)["input_ids"] for t in texts[b: b + batch_size]]
        ids, mask = left_pad(seqs, pad_id(tokenizer))
        acts = read_sites(model, ids, mask, [f"attn_pattern.{L}" for L in layers])
        is_nl = (ids == nl).float()  # [B, T]
        for s, P in acts.items():
            last = P[:, :, -1, :].float().cpu()  # [B, H, T]
            per_layer[s.layer].append((last * is_nl[:, None, :]).sum(-1).numpy())  # [B, H]
    shares = {L: np.concatenate(v) for L, v in per_layer.items()}
    return {"heads": {f"{L}.{h}": float(shares[L][:, h].mean()) for L, h in heads},
            "layer_mean": {str(L): float(shares[L].mean()) for L in layers}}


def _groups_by_length(seqs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[list[int]]:
    by: dict[int, list[int]] = {}
    for i, (a, b) in enumerate(seqs):
        if len(a) != len(b):
            raise ValueError(f"pair {i}: {len(a)} and {len(b)} tokens; last-position patching needs equal lengths")
        by.setdefault(len(a), []).append(i)
    return [by[k] for k in sorted(by)]


@torch.no_grad()
def last_position_grid(model: Any, seqs: Sequence[tuple[Sequence[int], Sequence[int]]], metric: Any,
                       cells_per_forward: int = 16) -> tuple[dict[str, np.ndarray], float, float]:
    """Patch every head's and every MLP's clean output at the **last position only** into the corrupted run.

    Returns ({"attn_head": [layers, heads], "mlp_out": [layers, 1]} of the mean metric over pairs after the patch,
    mean clean metric, mean corrupted metric). Pairs are grouped by token count; each group's corrupted prefix (every
    token but the last, which no last-position patch can change) runs once into a KV cache repeated for
    `cells_per_forward` cells, and each cell costs a one-token forward — equal to patching the full forward
    (tests/test_manifold_linebreak.py)."""
    from ..core.kv import cached_forward, returned_cache
    from ..core.sites import Site, n_heads, n_layers, read_sites, site_hooks

    nl, nh = n_layers(model), n_heads(model)
    cells = [Site("attn_head", L, h) for L in range(nl) for h in range(nh)] + [Site("mlp_out", L) for L in range(nl)]
    device = next(model.parameters()).device
    total = np.zeros(len(cells))
    clean_sum = corrupt_sum = 0.0
    n_pairs = 0
    per = max(1, cells_per_forward)
    for g in _groups_by_length(seqs):
        clean = torch.tensor([list(seqs[i][0]) for i in g], device=device)
        bad = torch.tensor([list(seqs[i][1]) for i in g], device=device)
        n = len(g)
        src = {s: a[:, -1] for s, a in read_sites(model, clean, None, cells).items()}
        clean_sum += float(metric(model(input_ids=clean, use_cache=False, logits_to_keep=1).logits).sum())
        cache = returned_cache(cached_forward(model, None, input_ids=bad[:, :-1].repeat(per, 1), logits_to_keep=1))
        last = bad[:, -1:].repeat(per, 1)

        def step(edits: dict) -> torch.Tensor:
            with site_hooks(model, edits):
                out = cached_forward(model, cache, input_ids=last, logits_to_keep=1).logits
            cache.crop(-1)
            return metric(out).reshape(per, n).sum(1).cpu().numpy()

        corrupt_sum += float(step({})[0])
        for start in range(0, len(cells), per):
            chunk = cells[start: start + per]
            by: dict[Site, list[int]] = {}
            for j, s in enumerate(chunk):
                by.setdefault(s, []).append(j)

            def patch(s: Site):
                def fn(x: torch.Tensor) -> torch.Tensor:
                    x = x.clone()
                    for j in by[s]:
                        x[j * n: (j + 1) * n, -1] = src[s].to(x.dtype)
                    return x

                return fn

            total[start: start + len(chunk)] += step({s: patch(s) for s in by})[:len(chunk)]
        n_pairs += n
    mean = total / max(n_pairs, 1)
    return ({"attn_head": mean[: nl * nh].reshape(nl, nh), "mlp_out": mean[nl * nh:].reshape(nl, 1)},
            clean_sum / max(n_pairs, 1), corrupt_sum / max(n_pairs, 1))


def last_position_effects(model: Any, seqs: Sequence[tuple[Sequence[int], Sequence[int]]], metric: Any, folds: int,
                          seed: int = 0, cells_per_forward: int = 16) -> dict[str, Any]:
    """`last_position_grid` per fold of pairs, normalised by the fold's clean − corrupted gap: each component's
    effect as the mean over folds with a 95% t-interval (the schema of `transform.component_effects`)."""
    from scipy import stats

    from ..core.progress import progress
    from ..core.sites import n_heads, n_layers

    order = np.random.default_rng(seed).permutation(len(seqs))
    groups = [g for g in np.array_split(order, min(folds, len(seqs))) if len(g)]
    vals: dict[str, list[np.ndarray]] = {"attn_head": [], "mlp_out": []}
    gaps = []
    with progress(len(groups), "patching heads and MLPs at the last token", unit="fold") as bar:
        for g in groups:
            grid, clean_m, bad_m = last_position_grid(model, [seqs[i] for i in g], metric, cells_per_forward)
            gap = clean_m - bad_m
            if abs(gap) < 1e-6:
                raise ValueError("the newline log-odds are the same with the narrow and the wide lines: nothing to "
                                 "share out (try a larger --delta)")
            gaps.append(gap)
            for fam in vals:
                vals[fam].append((grid[fam] - bad_m) / gap)
            bar.advance()
    nl, nh = n_layers(model), n_heads(model)
    rows = [f"L{L}" for L in range(nl)]
    out: dict[str, Any] = {"n_pairs": len(seqs), "n_folds": len(groups), "gap": float(np.mean(gaps)),
                           "gap_folds": [float(x) for x in gaps], "position": "last"}
    for fam, cols in (("attn_head", [f"H{h}" for h in range(nh)]), ("mlp_out", ["all"])):
        V = np.stack(vals[fam])
        mean = V.mean(0)
        half = (stats.t.ppf(0.975, len(V) - 1) * V.std(0, ddof=1) / np.sqrt(len(V))) if len(V) > 1 else np.full_like(
            mean, np.nan)
        out[fam] = {"rows": rows, "cols": cols, "mean": mean.tolist(), "lo": (mean - half).tolist(),
                    "hi": (mean + half).tolist()}
    return out
