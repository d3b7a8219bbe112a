"""Move along the circle (Engels et al. 2024): replace the concept's circle component by a target angle's point.

Prompts "Let's do some days of the week math. {N} days from {Day} is" (and the months version), or one-step
wordings ("If today is {Day}, then tomorrow is"; `concepts.MOVE_TASKS`). At each layer a
circle is fitted (`geometry.fit_circle`, top-k PCA of the per-value means) to the residual at the day token over
all prompts. For every prompt and every target value t ≠ its own, an edit at that token replaces:

- circle:       the circle-plane component by the point at angle 2πt/P (radius × strength):
                x' = x + QQᵀ(p(θₜ) − x), Q an orthonormal basis of the plane; the circle then reads x' as θₜ exactly
- pca:          the top-k PCA subspace component by that of the target value's mean: x' = x + UᵀU(mₜ − x)
- patch_all:    the whole residual by the one from the prompt with the target value (same template)
- average:      the whole residual by the mean over all prompts (value-agnostic control)
- zero_circle:  the circle-plane component by the circle's centre
and beside them the token swap (the prompt written with the target value) and no edit.

`positions` picks where the edits go: `concept` (the value token, one circle per layer over every prompt), or the
positions that read it — `last` (the last token, whose output is the answer), `readers` (every token after the
value token), `all` (the value token and its readers). Away from the value token every (template, offset from the
value token) has its own circle, fitted on that template's prompts (one per value), and every edit there uses that
position's fit (the target's mean, the target prompt's residual at the same offset, the mean there).
`context_prompts` gives more prompts to fit on (the task's prompt after a neutral lead sentence, the value and every
token after it unchanged): with them, every circle, per-value mean and mean is fitted on those prompts alone, never on
the evaluated ones; `patch_all` still takes the evaluated target prompt's own residual.
Success: among the P value names, the model's most likely continuation is the name of (t + N) mod P.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..core.sites import site_hooks
from ..core.stats import wilson
from ..core.tokens import pad_id
from .acts import concept_acts, concept_tokens
from .concepts import FIT_LEADS, MOVE_POSITIONS as POSITIONS, MOVE_TASKS as TASKS, Example
from .geometry import Circle, fit_circle, value_means

METHODS = ("circle", "pca", "patch_all", "average", "zero_circle")


@dataclass
class Prompt:
    text: str
    position: int   # character offset of the value word's last character
    value: int
    offset: int     # N: the answer is value + N (mod the period)
    template: int = 0


def arithmetic_prompts(task: str) -> tuple[list[Prompt], list[str], int]:
    """Every (template, value) prompt of `task` (see `concepts.MOVE_TASKS`), the value names, and the period."""
    if task not in TASKS:
        raise ValueError(f"--task {task!r}: the move step has the prompts of {', '.join(TASKS)}")
    spec = TASKS[task]
    names = spec["names"]
    out = []
    for j, (template, n) in enumerate(spec["prompts"]):
        before = template.split("{x}")[0]
        for v, name in enumerate(names):
            out.append(Prompt(template.format(x=name), len(before) + len(name) - 1, v, n, j))
    return out, names, spec["period"]


def context_prompts(task: str, n: int) -> list[Prompt]:
    """`n` fit prompts per (template, value) of `task`: the task's prompt after each of the first `n` neutral lead
    sentences (`concepts.FIT_LEADS`), so the value and every token after it read as in the task's prompt, while no
    fit prompt's text is an evaluated prompt's."""
    if not 1 <= n <= len(FIT_LEADS):
        raise ValueError(f"--fit-contexts {n}: there are {len(FIT_LEADS)} lead sentences; give 1 to "
                         f"{len(FIT_LEADS)} (0: fit on the task's own prompts)")
    base, _, _ = arithmetic_prompts(task)
    return [Prompt(f"{lead} {p.text}", p.position + len(lead) + 1, p.value, p.offset, p.template)
            for lead in FIT_LEADS[:n] for p in base]


def answer_ids(tokenizer: Any, names: Sequence[str]) -> list[list[int]]:
    """The token ids of each value name as the next word (' Monday'); one id each for most real tokenizers."""
    ids = []
    for n in names:
        t = list(tokenizer(" " + n, add_special_tokens=False)["input_ids"])
        if not t:
            raise ValueError(f"' {n}' encodes to no tokens with this tokenizer: the answer cannot be scored")
        ids.append(t)
    if len({tuple(t) for t in ids}) < len(ids):
        raise ValueError(f"two value names encode to the same tokens with this tokenizer ({list(names)}): the answer "
                         "cannot be told apart")
    return ids


@dataclass
class Rows:
    """The batch of (prompt, target) rows: token ids, the concept token per row, targets and expected answers."""

    ids: torch.Tensor        # [R, T] right-padded
    mask: torch.Tensor
    pos: torch.Tensor        # [R] concept token
    last: torch.Tensor       # [R] last real token
    prompt: np.ndarray       # [R] index into prompts
    target: np.ndarray       # [R] target value
    expect: np.ndarray       # [R] (target + N) mod P
    source: np.ndarray       # [R] index of the prompt with the target value and the same N
    template: np.ndarray     # [R] template of the row's prompt


def prompt_batch(tokenizer: Any, prompts: list[Prompt]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [n, T] right-padded, mask, value token [n], last real token [n]) of the prompts."""
    ids, where = concept_tokens(tokenizer, [Example(p.text, p.position, p.value) for p in prompts])
    seqs = [ids[w[0]] for w in where]
    T = max(map(len, seqs))
    x = torch.full((len(seqs), T), pad_id(tokenizer), dtype=torch.long)
    m = torch.zeros_like(x)
    for r, s in enumerate(seqs):
        x[r, :len(s)] = torch.tensor(s)
        m[r, :len(s)] = 1
    return x, m, torch.tensor([w[1] for w in where]), m.sum(1) - 1


def build_rows(tokenizer: Any, prompts: list[Prompt], period: int, limit: int | None = None, seed: int = 0) -> Rows:
    """Every prompt × every other target value (or `limit` of them, drawn with `seed`)."""
    key = {(p.value, p.template): i for i, p in enumerate(prompts)}
    pairs = [(i, t) for i, p in enumerate(prompts) for t in range(period) if t != p.value]
    if limit and limit < len(pairs):
        rng = np.random.default_rng(seed)
        pairs = [pairs[j] for j in sorted(rng.choice(len(pairs), limit, replace=False))]
    x, m, pos, last = prompt_batch(tokenizer, prompts)
    prompt = np.array([i for i, _ in pairs])
    target = np.array([t for _, t in pairs])
    offs = np.array([prompts[i].offset for i, _ in pairs])
    pi = torch.as_tensor(prompt)
    return Rows(x[pi], m[pi], pos[pi], last[pi], prompt, target, (target + offs) % period,
                np.array([key[(t, prompts[i].template)] for i, t in pairs]),
                np.array([prompts[i].template for i, _ in pairs]))


class Answers:
    """The model's answer among the value names after each row, with edits at the value token; the text before the
    value token runs once.

    The answer is the name with the highest log-probability as the continuation (the sum over its tokens; for
    one-token names, simply the top next token among them). Rows are grouped by (value-token index, length); each
    group's prefix (the tokens before the value token, which no edit there can change) is run once into a KV cache,
    and every scoring pass runs only the suffix (the value token onward, then a multi-token name) through every
    block, with the edit hooks active — equal to the full forward (tested)."""

    def __init__(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                 cand: Sequence[int] | Sequence[Sequence[int]], batch_size: int = 64):
        self.model = model
        self.cand = [[int(c)] if isinstance(c, (int, np.integer)) else [int(x) for x in c] for c in cand]
        self.single = all(len(c) == 1 for c in self.cand)
        lens = mask.sum(1)
        keys: dict[tuple[int, int], list[int]] = {}
        for r in range(ids.shape[0]):
            keys.setdefault((int(pos[r]), int(lens[r])), []).append(r)
        self.batches = []
        with torch.no_grad():
            for (p, n), idx in sorted(keys.items()):
                for s in range(0, len(idx), batch_size):
                    b = np.array(idx[s:s + batch_size])
                    bi = torch.as_tensor(b)
                    cache = None
                    if p > 0:
                        cache = model(input_ids=ids[bi, :p], use_cache=True, logits_to_keep=1).cache
                    self.batches.append((b, p, ids[bi, p:n], cache))
        self.n = ids.shape[0]

    def _run(self, x: torch.Tensor, cache: Any, keep: int) -> torch.Tensor:
        logits = self.model(input_ids=x, cache=cache, use_cache=cache is not None, logits_to_keep=keep).logits
        if cache is not None:
            cache.crop(-x.shape[1])  # back to the prefix for the next pass
        return logits.float()

    @torch.no_grad()
    def __call__(self, edits: Callable[[np.ndarray], dict] | None = None) -> np.ndarray:
        """Index into the value names of the answer per row; `edits(rows)` gives the site hooks for a batch of rows
        (the value token is position 0 of the suffix that runs)."""
        out = np.zeros(self.n, dtype=np.int64)
        for b, p, suffix, cache in self.batches:
            with site_hooks(self.model, edits(b) if edits else {}):
                if self.single:
                    last = self._run(suffix, cache, 1)[:, -1]
                    score = last[:, [c[0] for c in self.cand]]
                else:
                    cols = []
                    for c in self.cand:
                        tail = torch.tensor(c).expand(len(b), len(c))
                        lp = self._run(torch.cat([suffix, tail], 1), cache, len(c) + 1)[:, :-1].log_softmax(-1)
                        cols.append(lp.gather(-1, tail.unsqueeze(-1)).squeeze(-1).sum(-1))
                    score = torch.stack(cols, 1)
            out[b] = score.argmax(-1).numpy()
        return out


def circle_edit(circle: Circle, X: np.ndarray, target: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """x' = x + QQᵀ(p(θₜ) − x): the circle-plane component of each row replaced by the target angle's point."""
    Q = circle.plane()
    P = circle.point(2 * np.pi * np.asarray(target, dtype=np.float64) / circle.period, strength)
    return X + (P - X) @ Q @ Q.T


def subspace_edit(U: np.ndarray, X: np.ndarray, to: np.ndarray) -> np.ndarray:
    """x' = x + UᵀU(to − x): the component in the row space of U (orthonormal rows) replaced by that of `to`."""
    return X + (to - X) @ U.T @ U


@dataclass
class LayerFit:
    """What the edits at one layer need: the circle, the per-value means, the mean over prompts, the prompts' acts."""

    circle: Circle
    means: np.ndarray     # [P, d] per value
    mean_all: np.ndarray  # [d]
    acts: np.ndarray      # [n_prompts, d]


def fit_layers(model: Any, tokenizer: Any, prompts: list[Prompt], layers: Sequence[int], period: int, k: int,
               batch_size: int = 32, fit_on: list[Prompt] | None = None) -> dict[int, LayerFit]:
    """Read the value token of every prompt at each layer and fit the circle there — on `fit_on` (e.g.
    `context_prompts`) if given, else on `prompts`; `acts` always holds `prompts`' own residuals."""
    both = prompts + (fit_on or [])
    ex = [Example(p.text, p.position, p.value) for p in both]
    acts = concept_acts(model, tokenizer, ex, layers, batch_size, desc="reading the value token")
    fit = slice(len(prompts), None) if fit_on else slice(None, len(prompts))
    v = np.array([p.value for p in both])[fit]
    fits = {}
    for L, A in acts.items():
        A = A.astype(np.float64)
        X = A[fit]
        vals, M = value_means(X, v)
        if len(vals) < period:
            raise ValueError(f"the fit prompts hold {len(vals)} of the {period} values: every value needs one")
        fits[L] = LayerFit(fit_circle(M, vals, period, min(k, len(vals) - 1)), M, X.mean(0), A[:len(prompts)])
    return fits


def edited(method: str, fit: LayerFit, X: np.ndarray, rows: Rows, sl: np.ndarray, strength: float) -> np.ndarray:
    """The new residual rows at the value token for `method` (see the module doc)."""
    t = rows.target[sl]
    if method == "circle":
        return circle_edit(fit.circle, X, t, strength)
    if method == "pca":
        return subspace_edit(fit.circle.U, X, fit.means[t])
    if method == "patch_all":
        return fit.acts[rows.source[sl]]
    if method == "average":
        return np.broadcast_to(fit.mean_all, X.shape).copy()
    if method == "zero_circle":
        Q = fit.circle.plane()
        centre = fit.circle.mu + fit.circle.c @ fit.circle.U
        return X + (centre - X) @ Q @ Q.T
    raise ValueError(f"method={method!r}: use one of {', '.join(METHODS)}")


Fits = dict  # {layer: LayerFit} (at the value token) or {layer: {(template, offset): LayerFit}} (`position_fits`)


def edit_hooks(method: str, fits: Fits, rows: Rows, strength: float,
               at: int | None = 0) -> Callable[[np.ndarray], dict]:
    """For a batch of rows (indices): {resid_post.L: fn} replacing the residual at each layer of `fits` — at the value
    token (a `LayerFit` per layer), or at value token + offset for each row of the template (a {(template, offset):
    LayerFit} per layer, from `position_fits`). The value token is position `at` of the tensor the hook sees (0 for
    `Answers`' suffix), or `rows.pos` if None."""

    def make(b: np.ndarray) -> dict:
        b = np.asarray(b)
        p0 = rows.pos[torch.as_tensor(b)] if at is None else torch.full((len(b),), at)

        def at_layer(L: int):
            table = fits[L] if isinstance(fits[L], dict) else {(None, 0): fits[L]}
            parts = []
            for (tpl, off), fit in table.items():
                sel = np.flatnonzero(rows.template[b] == tpl) if tpl is not None else np.arange(len(b))
                if len(sel):
                    parts.append((fit, sel, torch.as_tensor(sel), p0[torch.as_tensor(sel)] + off))

            def fn(x: torch.Tensor) -> torch.Tensor:
                x = x.clone()
                for fit, sel, r, p in parts:
                    new = edited(method, fit, x[r, p].double().numpy(), rows, b[sel], strength)
                    x[r, p] = torch.as_tensor(new, dtype=x.dtype)
                return x

            return fn

        return {f"resid_post.{L}": at_layer(L) for L in fits}

    return make


def edit_offsets(positions: str, after: int) -> list[int]:
    """Offsets from the value token that `positions` edits, for a prompt with `after` tokens after the value token."""
    if positions not in POSITIONS:
        raise ValueError(f"--positions {positions!r}: use one of {', '.join(POSITIONS)}")
    return {"concept": [0], "last": [after], "readers": list(range(1, after + 1)),
            "all": list(range(after + 1))}[positions]


@torch.no_grad()
def position_fits(model: Any, tokenizer: Any, prompts: list[Prompt], layers: Sequence[int], period: int, k: int,
                  positions: str, batch_size: int = 32,
                  fit_on: list[Prompt] | None = None) -> dict[int, dict[tuple[int, int], LayerFit]]:
    """{layer: {(template, offset): LayerFit}}: per template and offset from the value token that `positions` edits,
    the circle, per-value means and mean over that template's prompts at that position — or over `fit_on`'s prompts
    of that template (e.g. `context_prompts`), which must have the same tokens after the value token (`acts` holds
    each of `prompts`' own residual there, zeros for the other templates' prompts). Every template needs every value
    once or more among the prompts it is fitted on."""
    from ..core.capture import capture

    both = prompts + (fit_on or [])
    n = len(prompts)
    ids, mask, pos, last = prompt_batch(tokenizer, both)
    tpl = np.array([p.template for p in both])
    v = np.array([p.value for p in both])
    fitted = np.arange(len(both)) >= n if fit_on else np.arange(len(both)) < n
    offs = {}
    for t in np.unique(tpl[:n]):
        after = {int(last[i] - pos[i]) for i in np.flatnonzero(tpl[:n] == t)}
        if len(after) > 1:
            raise ValueError(f"template {t}: its prompts have {sorted(after)} tokens after the value token with this "
                             "tokenizer; reader positions need one layout per template (use --positions concept)")
        extra = {int(last[i] - pos[i]) for i in np.flatnonzero(tpl == t)} - after
        if extra:
            raise ValueError(f"template {t}: some fit prompts have {sorted(extra)} tokens after the value token, the "
                             f"task's prompts {after.pop()}: fit prompts must keep the value token and every token after "
                             "it as in the task (use --fit-contexts 0)")
        offs[int(t)] = edit_offsets(positions, after.pop())
    sel = torch.zeros_like(ids, dtype=torch.bool)
    for i in range(len(both)):
        for o in offs.get(int(tpl[i]), []):
            sel[i, int(pos[i]) + o] = True
    cap = capture(model, {"input_ids": ids, "attention_mask": mask}, list(layers), positions=sel,
                  batch_size=batch_size, out_dtype=torch.float32)
    where = {(int(i), int(p)): r for r, (i, p) in enumerate(cap.index.tolist())}
    out: dict[int, dict[tuple[int, int], LayerFit]] = {}
    for L in layers:
        A = cap.acts[L].double().numpy()
        table = {}
        for t, os_ in offs.items():
            own = np.flatnonzero(tpl[:n] == t)
            idx = np.flatnonzero((tpl == t) & fitted)
            for o in os_:
                X = A[[where[(int(i), int(pos[i]) + o)] for i in idx]]
                vals, M = value_means(X, v[idx])
                if len(vals) < period:
                    raise ValueError(f"template {t} has prompts for {len(vals)} of the {period} values: every value "
                                     "needs a prompt in every template")
                acts = np.zeros((n, X.shape[1]))
                acts[own] = A[[where[(int(i), int(pos[i]) + o)] for i in own]]
                table[(t, o)] = LayerFit(fit_circle(M, vals, period, min(k, len(vals) - 1)), M, X.mean(0), acts)
        out[int(L)] = table
    return out


def rate(hits: np.ndarray) -> dict[str, Any]:
    """Success share with its 95% Wilson interval."""
    k, n = int(hits.sum()), int(hits.size)
    lo, hi = wilson(k, n)
    return {"success": k / n if n else float("nan"), "ci": [lo, hi], "k": k, "n": n}
