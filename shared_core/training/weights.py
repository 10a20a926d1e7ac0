"""Learning head weights from captured features: the split by document, head selection, the fit with early stopping.

Heads are **selected first** (the best `top` by detection score on the training examples, an L1 path, or all) and
**weighted second**: one non-negative weight per kept head, fitted with one of seed 003's objectives (`objectives`)
over each example's units, an L2 penalty, and early stopping on the validation examples' nDCG@k. Features are centred
per example and divided by a per-head scale (the head's typical spread on the training examples, or each example's
own spread); the global scale is folded back into the returned weights, so a weighted mean of raw head scores ranks
units as the fitted model does, and validation always measures that weighted mean. Deterministic for a seed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import torch

from shared_core.training.head_features import ExampleFeatures, TrainingInputError
from shared_core.training.objectives import OBJECTIVES, Objective, objective_fn

logger = logging.getLogger(__name__)

Selection = Literal["detection", "l1", "all"]
Normalise = Literal["global", "example"]
L1_GRID = tuple(float(x) for x in np.geomspace(1e-3, 3.0, 16))
"""L1 strengths tried (increasing) by ``select="l1"``: the first that leaves at most `top` heads is used."""


@dataclass(frozen=True)
class TrainSettings:
    """How weights are learned (see `train_weights`)."""

    objective: Objective = "lsepair"
    top: int = 16
    select: Selection = "detection"
    validation: float = 0.3
    """Share of the examples (whole documents) held out for early stopping."""
    l2: float = 1e-2
    lr: float = 0.05
    steps: int = 400
    patience: int = 80
    normalise: Normalise = "global"
    k: int = 10
    seed: int = 0

    def check(self) -> None:
        """Refuse settings that cannot train."""
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.select not in ("detection", "l1", "all"):
            raise ValueError(f"select must be 'detection', 'l1' or 'all', got {self.select!r}")
        if self.normalise not in ("global", "example"):
            raise ValueError(f"normalise must be 'global' or 'example', got {self.normalise!r}")
        if not 0 < self.validation < 1:
            raise ValueError(f"validation must be a share between 0 and 1, got {self.validation}")
        for name in ("top", "steps", "patience", "k"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.l2 < 0 or self.lr <= 0:
            raise ValueError(f"l2 must be >= 0 and lr > 0, got {self.l2} and {self.lr}")


class Grouped(Protocol):
    """Anything that names the document it asks about (`group`)."""

    @property
    def group(self) -> str: ...


G = TypeVar("G", bound=Grouped)


def split_by_document(features: Sequence[G], share: float, seed: int) -> tuple[list[G], list[G]]:
    """Train and validation examples, whole documents on each side, about `share` of the examples validating."""
    groups = sorted({f.group for f in features})
    if len(groups) < 2:
        raise TrainingInputError(
            f"training needs examples over at least two documents (to validate on unseen ones); got {len(groups)}"
        )
    order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    sizes = {g: sum(f.group == g for f in features) for g in groups}
    held: set[str] = set()
    for g in order[:-1]:  # at least one document trains
        if sum(sizes[h] for h in held) >= share * len(features):
            break
        held.add(g)
    return [f for f in features if f.group not in held], [f for f in features if f.group in held]


# ----------------------------------------------------------------------------------------------- tensors


@dataclass
class Batch:
    """Padded features of a set of examples: ``x[example, unit, head]``, ``valid`` and ``positive`` masks."""

    x: torch.Tensor
    valid: torch.Tensor
    positive: torch.Tensor

    @classmethod
    def of(cls, features: Sequence[ExampleFeatures], heads: Sequence[int]) -> Batch:
        """The rows `heads` of every example, padded to the longest example."""
        width = max(f.x.shape[1] for f in features)
        x = torch.zeros(len(features), width, len(heads), dtype=torch.float64)
        valid = torch.zeros(len(features), width, dtype=torch.bool)
        positive = torch.zeros_like(valid)
        rows = list(heads)
        for i, f in enumerate(features):
            n = f.x.shape[1]
            x[i, :n] = torch.from_numpy(f.x[rows].T.astype(np.float64))
            valid[i, :n] = True
            positive[i, :n] = torch.from_numpy(f.gold)
        return cls(x, valid, positive)

    def scores(self, w: torch.Tensor) -> torch.Tensor:
        """``s[example, unit] = Σ_h w_h x[example, unit, h]``."""
        return self.x @ w

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example and head, the mean and the spread (std) of the scores over the valid units."""
        n = self.valid.sum(dim=-1).clamp(min=1)[:, None, None]
        mask = self.valid[:, :, None]
        mean = (self.x * mask).sum(dim=1, keepdim=True) / n
        std = ((((self.x - mean) * mask) ** 2).sum(dim=1, keepdim=True) / n).sqrt()
        return mean, std

    def normalised(self, scale: torch.Tensor | None) -> Batch:
        """Centred per example and head; divided by `scale` per head (None: by the example's own spread)."""
        mean, std = self._moments()
        centred = (self.x - mean) * self.valid[:, :, None]
        divisor = std.clamp(min=1e-12) if scale is None else scale[None, None, :]
        return Batch((centred / divisor).contiguous(), self.valid, self.positive)

    def spread(self) -> torch.Tensor:
        """Per head, the mean over examples of the spread of its scores over the units (the global scale)."""
        return self._moments()[1][:, 0, :].mean(dim=0).clamp(min=1e-12)


def ndcg_at_k(scores: torch.Tensor | np.ndarray, batch: Batch, k: int) -> np.ndarray:
    """Per example, nDCG@k (binary gains) of the units ranked by `scores` (padding never ranked)."""
    s = torch.as_tensor(scores).masked_fill(~batch.valid, float("-inf")).numpy()
    out = np.zeros(s.shape[0])
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for i in range(s.shape[0]):
        rel = batch.positive[i].numpy()
        top = np.argsort(-s[i], kind="stable")[:k]
        ideal = discounts[: min(int(rel.sum()), k)].sum()
        out[i] = (rel[top] * discounts[: len(top)]).sum() / ideal if ideal > 0 else 0.0
    return out


def head_ndcg(features: Sequence[ExampleFeatures], k: int) -> np.ndarray:
    """Every head's mean nDCG@k alone over `features` (the detection score)."""
    total = np.zeros(features[0].x.shape[0])
    for f in features:
        order = np.argsort(-f.x.astype(np.float64), axis=1, kind="stable")[:, :k]
        discounts = 1.0 / np.log2(np.arange(2, order.shape[1] + 2))
        ideal = discounts[: min(int(f.gold.sum()), k)].sum()
        total += (f.gold[order] * discounts).sum(axis=1) / ideal
    return total / len(features)


# ----------------------------------------------------------------------------------------------- fitting


@dataclass
class Fit:
    """Fitted weights (on raw head scores, folded) and how the fit went."""

    heads: list[int]
    weights: np.ndarray
    """Weights of `heads` on raw head scores (normalisation folded in), summing to 1."""
    validation_ndcg: float
    equal_validation_ndcg: float
    best_step: int
    steps_run: int
    history: list[tuple[int, float, float]] = field(default_factory=list)
    """(step, training loss, validation nDCG@k) every 10 steps."""


def fit_weights(
    train: Sequence[ExampleFeatures],
    validation: Sequence[ExampleFeatures],
    heads: Sequence[int],
    settings: TrainSettings,
    *,
    l1: float = 0.0,
    early_stopping: bool = True,
) -> Fit:
    """Fit one non-negative weight per head of `heads` with `settings.objective` (and `l1`, `settings.l2`).

    Projected Adam from equal weights, full batch; every step the validation nDCG@k of the folded weights is measured
    and the best step kept (ties keep the earlier one, so step 0 — the kept heads unweighted, the view an unweighted
    head set gives — wins unless training helps on validation)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few thousand tiny matrix products: one thread is ~10x faster on a busy CPU
    try:
        return _fit(train, validation, heads, settings, l1, early_stopping)
    finally:
        torch.set_num_threads(threads)


def _fit(
    train: Sequence[ExampleFeatures],
    validation: Sequence[ExampleFeatures],
    heads: Sequence[int],
    settings: TrainSettings,
    l1: float,
    early_stopping: bool,
) -> Fit:
    """`fit_weights`' loop."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    loss_fn = objective_fn(settings.objective, generator)
    raw_train = Batch.of(train, heads)
    raw_val = Batch.of(validation, heads)
    scale = raw_train.spread()
    batch = raw_train.normalised(scale if settings.normalise == "global" else None)
    # start from equal weights on the raw scores (the kept heads unweighted): step 0 is the unweighted view
    w = (scale / scale.mean()).clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=settings.lr)

    def folded() -> torch.Tensor:
        raw = w.detach().clamp(min=0) / scale
        total = raw.sum()
        return raw / total if total > 0 else torch.full_like(raw, 1.0 / len(raw))

    def validate() -> float:
        return float(ndcg_at_k(raw_val.scores(folded()), raw_val, settings.k).mean())

    best = validate()
    equal = best
    best_w, best_step, step = folded(), 0, 0
    history: list[tuple[int, float, float]] = []
    for step in range(1, settings.steps + 1):
        opt.zero_grad()
        loss = loss_fn(batch.scores(w), batch.valid, batch.positive) + settings.l2 * (w**2).sum() + l1 * w.sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            w.clamp_(min=0)
        if not early_stopping:
            continue
        score = validate()
        if score > best + 1e-12:
            best, best_w, best_step = score, folded(), step
        if step % 10 == 0:
            history.append((step, loss.item(), score))
        if step - best_step >= settings.patience:
            break
    if not early_stopping:
        best_w, best, best_step = folded(), validate(), step
    return Fit(list(heads), best_w.numpy(), best, equal, best_step, step, history)


def select_heads(train: Sequence[ExampleFeatures], settings: TrainSettings) -> tuple[list[int], dict[str, Any]]:
    """The heads kept before weighting, best first, and how they were chosen."""
    n_heads = train[0].x.shape[0]
    detection = head_ndcg(train, settings.k)
    if settings.select == "all":
        return list(range(n_heads)), {"select": "all"}
    if settings.select == "detection":
        order = np.argsort(-detection, kind="stable")[: settings.top]
        return [int(i) for i in order], {"select": "detection"}
    everything = list(range(n_heads))
    for l1 in L1_GRID:  # the L1 path: the weakest penalty that leaves at most `top` heads
        fit = fit_weights(train, train, everything, settings, l1=l1, early_stopping=False)
        kept = np.flatnonzero(fit.weights > 1e-9)
        if 0 < len(kept) <= settings.top:
            order = kept[np.argsort(-fit.weights[kept], kind="stable")]
            return [int(i) for i in order], {"select": "l1", "l1": round(l1, 6)}
    logger.warning("no L1 strength left %d heads or fewer; the best %d by detection score are kept", settings.top)
    order = np.argsort(-detection, kind="stable")[: settings.top]
    return [int(i) for i in order], {"select": "detection (l1 path found none)"}


def train_weights(
    features: Sequence[ExampleFeatures], names: Sequence[str], settings: TrainSettings
) -> tuple[Fit, dict[str, Any]]:
    """Split by document, select heads on the training part, fit their weights; the fit and a summary."""
    settings.check()
    train, validation = split_by_document(features, settings.validation, settings.seed)
    heads, how = select_heads(train, settings)
    fit = fit_weights(train, validation, heads, settings)
    summary = {
        **how,
        "objective": settings.objective,
        "top": settings.top,
        "normalise": settings.normalise,
        "l2": settings.l2,
        "lr": settings.lr,
        "steps": settings.steps,
        "patience": settings.patience,
        "k": settings.k,
        "seed": settings.seed,
        "validation_share": settings.validation,
        "train_examples": len(train),
        "validation_examples": len(validation),
        "train_documents": len({f.group for f in train}),
        "validation_documents": len({f.group for f in validation}),
        "validation_ndcg": round(fit.validation_ndcg, 6),
        "validation_ndcg_equal_weights": round(fit.equal_validation_ndcg, 6),
        "best_step": fit.best_step,
        "steps_run": fit.steps_run,
        "kept_heads": [names[i] for i in heads],
    }
    return fit, summary
