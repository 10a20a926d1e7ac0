"""Multi-positive listwise objectives over one example's units (seed 003): JointLH, SumMargLH, LSEPair, Rand1LH.

Scores come padded, ``s[example, unit]``, with ``valid`` marking real units and ``positive`` the gold ones (several per
example). With ``P`` the positives, ``N`` the other valid units and ``LSE`` the log-sum-exp, per example:

- **JointLH** (joint likelihood): ``-(1/|P|) Σ_p log softmax(s)_p`` over all units — every positive must take an
  equal share of the probability mass, so a noisy positive pulls as hard as a clean one.
- **SumMargLH** (summed marginal likelihood): ``-log Σ_p softmax(s)_p = LSE(s) - LSE(s_P)`` — the positives' mass
  counts as a whole, so the easiest positive may take it all.
- **LSEPair** (log-sum-exp over pairs): ``log(1 + Σ_p Σ_n exp(s_n - s_p)) = softplus(LSE(s_N) + LSE(-s_P))`` —
  driven by the hardest positive–negative pairs; seed 003 found it the most robust.
- **Rand1LH**: one positive ``p`` drawn at random per example and step, ``-log(exp(s_p) / (exp(s_p) + Σ_n exp(s_n)))``
  (the other positives are left out of the denominator).

Each returns the mean over examples; an example with no negative contributes 0 to LSEPair and Rand1LH.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

Objective = Literal["lsepair", "jointlh", "summarglh", "rand1lh"]
OBJECTIVES: tuple[Objective, ...] = ("lsepair", "jointlh", "summarglh", "rand1lh")


def _lse(s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-sum-exp of ``s`` over the last axis where ``mask`` (``-inf`` where nothing is masked in)."""
    return torch.logsumexp(s.masked_fill(~mask, float("-inf")), dim=-1)


def joint_lh(s: torch.Tensor, valid: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """JointLH: mean over the positives of their negative log softmax over all units."""
    n_pos = positive.sum(dim=-1).clamp(min=1)
    mean_pos = (s * positive).sum(dim=-1) / n_pos
    return (_lse(s, valid) - mean_pos).mean()


def sum_marg_lh(s: torch.Tensor, valid: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """SumMargLH: negative log of the softmax mass the positives hold together."""
    return (_lse(s, valid) - _lse(s, positive)).mean()


def lse_pair(s: torch.Tensor, valid: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """LSEPair: ``log(1 + Σ_{p,n} exp(s_n - s_p))``."""
    negative = valid & ~positive
    return torch.nn.functional.softplus(_lse(s, negative) + _lse(-s, positive)).mean()


def rand1_lh(
    s: torch.Tensor, valid: torch.Tensor, positive: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Rand1LH: InfoNCE of one positive per example, drawn with ``generator`` (the negatives in the denominator)."""
    negative = valid & ~positive
    draw = torch.rand(s.shape, generator=generator, dtype=torch.float64).to(s.device)
    chosen = torch.where(positive, draw, torch.full_like(draw, -1.0)).argmax(dim=-1)
    s_p = s.gather(-1, chosen[:, None])[:, 0]
    return (torch.logaddexp(s_p, _lse(s, negative)) - s_p).mean()


def objective_fn(
    name: Objective, generator: torch.Generator | None = None
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss function of an objective's name (Rand1LH draws with `generator`)."""
    if name == "jointlh":
        return joint_lh
    if name == "summarglh":
        return sum_marg_lh
    if name == "lsepair":
        return lse_pair
    if name == "rand1lh":
        return lambda s, valid, positive: rand1_lh(s, valid, positive, generator)
    raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
