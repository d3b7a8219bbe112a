"""The answer where the token budget runs out: the forced letter, or a letter read otherwise (#33's letter bar).

A reasoning that never writes its own `Answer:` line ends at the budget, and the forced answer after `\\nAnswer: (`
then leans to one letter whatever the problem (v2: D two times in three). The rules (`AT_BUDGET`, a registry:
scores over the letters, the answer is their argmax):

* "forced": the forced answer's letter probabilities (what every path gave until now);
* "calibrated": the forced probabilities divided by the model's letter prior (contextual calibration,
  Zhao et al. 2021; the prior from `answer.letter_prior`, or one read on budget-forced contexts: `budget_prior`);
* "probe": the exit probe's belief after the last reasoning token (the attention probe reads the decision from the
  reasoning states, before the model writes it);
* "product": probe × forced (both beliefs at once: the forced answer where the probe is unsure, and the reverse).

`probe_beliefs` reads the probe over a given reasoning, teacher-forced, through the exit decoder (`ExitDecoder`:
its checks of the probe against the model and `read_probe`, the same fold live decoding applies token by token).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from .answer import LETTERS, encode_prefix

RuleFn = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"], torch.Tensor]


def _need(x: torch.Tensor | None, what: str, rule: str) -> torch.Tensor:
    if x is None:
        raise ValueError(f"at-budget rule {rule!r} needs {what}: pass it, or use --at-budget forced")
    return x


AT_BUDGET: dict[str, RuleFn] = {
    "forced": lambda forced, probe, prior: forced,
    "calibrated": lambda forced, probe, prior: forced / _need(prior, "the letter prior", "calibrated"),
    "probe": lambda forced, probe, prior: _need(probe, "the probe's belief", "probe"),
    "product": lambda forced, probe, prior: forced * _need(probe, "the probe's belief", "product"),
}


def check_rule(rule: str) -> str:
    """`rule` when it is one of `AT_BUDGET`, else a clear error naming the choices."""
    if rule not in AT_BUDGET:
        raise ValueError(f"at-budget rule {rule!r} is unknown: use one of {', '.join(AT_BUDGET)}")
    return rule


def budget_scores(rule: str, forced: Any, probe: Any = None, prior: Any = None) -> torch.Tensor:
    """The rule's scores over the letters `[N, C]` (or `[C]`) from the forced answer's letter probabilities, the
    probe's belief and the letter prior (each where the rule needs it); the answer is their argmax."""
    f = torch.as_tensor(forced, dtype=torch.float64)
    p = None if probe is None else torch.as_tensor(probe, dtype=torch.float64)
    q = None if prior is None else torch.as_tensor(prior, dtype=torch.float64)
    if p is not None and p.shape != f.shape:
        raise ValueError(f"the probe's belief {tuple(p.shape)} and the forced answer {tuple(f.shape)} must cover the "
                         "same letters")
    if q is not None and (q.numel() != f.shape[-1] or not bool((q > 0).all())):
        raise ValueError(f"the letter prior {q.tolist()} must give each of the {f.shape[-1]} letters a share > 0")
    return AT_BUDGET[check_rule(rule)](f, p, q)


def budget_letters(rule: str, forced: Any, probe: Any = None, prior: Any = None,
                   letters: Sequence[str] = LETTERS) -> list[str]:
    """Per row, the letter the rule answers (`budget_scores`' argmax)."""
    s = budget_scores(rule, forced, probe, prior)
    return [letters[i] for i in s.reshape(-1, s.shape[-1]).argmax(-1).tolist()]


def budget_prior(forced: Any) -> torch.Tensor:
    """A letter prior read on budget-forced contexts (domain-context calibration): the mean forced-answer
    distribution of those rows — of a sample other than the one it is applied to. Sums to 1."""
    f = torch.as_tensor(forced, dtype=torch.float64)
    if f.dim() != 2 or not len(f):
        raise ValueError(f"budget_prior needs the forced letter probabilities of at least one row, got {tuple(f.shape)}")
    p = f.mean(0)
    return p / p.sum()


@torch.no_grad()
def probe_beliefs(model: nn.Module, tokenizer: Any, probe: Any, prompt: str, reasoning: str, *,
                  letters: Sequence[str] = LETTERS, allow_other_model: bool = False) -> torch.Tensor:
    """The exit probe's belief over `letters` after each reasoning token, `[n_reasoning_tokens, C]`, on a given
    prompt and reasoning (teacher-forced: one forward pass, read up to the probe's layer). The probe is checked and
    applied by the exit decoder, as live decoding applies it; the last row is its belief where the reasoning ends."""
    from ..core.hooks import read_into, residual_hooks
    from ..core.sites import stop_forward
    from .engine import ExitDecoder
    from .policy import ExitPolicy

    dec = ExitDecoder(model, tokenizer, probe, ExitPolicy(kind="never"), letters=letters,
                      allow_other_model=allow_other_model)
    pi, ri = encode_prefix(tokenizer, prompt, reasoning)
    if not ri:
        raise ValueError("no reasoning tokens: the probe reads the reasoning, give a non-empty one")
    store: list[torch.Tensor] = []
    ids = torch.tensor([pi + ri], device=next(model.parameters()).device)
    with residual_hooks(model, {dec.layer: read_into(store)}, stop_after=dec.layer), stop_forward():
        model(input_ids=ids, use_cache=False)
    hidden = store[0][0, len(pi):]
    dec.start_batch(1)
    return torch.cat([dec.read_probe(hidden[t: t + 1], [0], 1) for t in range(len(ri))])
