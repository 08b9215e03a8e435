"""Which evaluated point of a run becomes ``best.pt``.

Every evaluation is one noisy draw: AFD on 1000 images has a standard error
of about 0.016 at a rate of 0.5, KID and FID a spread over subsets or halves
of the images. Taking the highest of many such draws picks the luckiest as
much as the best (the winner's curse), and stores a figure biased upwards.

The rule: a point becomes ``best.pt`` unless it is *clearly worse* than the
best value seen so far (the top), i.e. worse by more than ``Z`` standard
errors of the difference of the two. So

- a tie, or a difference inside the noise, goes to the later point: it has
  trained longer, and its EMA has averaged more steps;
- a real drop (a collapse, a critic that starts to memorise) keeps the
  earlier point;
- the top is compared with, never the current best, so a slow decline cannot
  walk ``best.pt`` downwards one noise-sized step at a time.

Why not "replace only when the gain beats the noise": that keeps the first
point that got lucky, and an exact tie (every smoke evaluation reads AFD 0
on a CPU) then keeps the half-trained generator. A point without a value of
the chosen metric (not measured there) never replaces one that has a value;
between two without, the later wins.

The stored figure is still a selected one: at the end of training the
chosen point is scored again on fresh noise (:meth:`kaggle_gan.training.evaluate.Evaluator.confirm`),
an estimate no selection has touched.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional

METRICS = {"afd": True, "kid": False, "fid": False}  # metric -> higher is better
SPREAD_OF = {"kid": "kid_sd", "fid": "fid_sd"}  # the row's own spread of each distance
Z = 2.0  # standard errors of a difference that make a point "clearly worse"


def value(row: Dict, metric: str) -> Optional[float]:
    """The row's value of ``metric``; None when missing or not a number."""
    v = row.get(metric)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def spread(row: Dict, metric: str, images: int) -> float:
    """The standard error of the row's ``metric``: AFD's binomial one over ``images``; KID's and FID's from the
    row (``kid_sd``, ``fid_sd``); 0 when unknown."""
    v = value(row, metric)
    if v is None:
        return 0.0
    if metric == "afd":
        return math.sqrt(max(v * (1 - v), 0.0) / max(images, 1))
    return value(row, SPREAD_OF[metric]) or 0.0


@dataclass
class Selection:
    """The running state of the rule: the top value and its spread, and whether ``best.pt`` holds a value."""

    metric: str
    images: int
    top: Optional[float] = None
    top_spread: float = 0.0
    top_step: Optional[int] = None
    best_has_value: bool = False

    def consider(self, row: Dict) -> bool:
        """Whether the point of ``row`` becomes ``best.pt`` (and the top updated when it is the new top)."""
        v = value(row, self.metric)
        if v is None:
            return not self.best_has_value
        s = spread(row, self.metric, self.images)
        higher = METRICS[self.metric]
        if self.top is None:
            chosen = True
        else:
            worse_by = (self.top - v) if higher else (v - self.top)
            chosen = worse_by <= Z * math.hypot(s, self.top_spread)
        if self.top is None or (v > self.top if higher else v < self.top):
            self.top, self.top_spread, self.top_step = v, s, row.get("step")
        if chosen:
            self.best_has_value = True
        return chosen

    def state(self) -> Dict:
        return asdict(self)

    @classmethod
    def resume(cls, metric: str, images: int, stored: Optional[Dict]) -> "Selection":
        """The rule's state from a ``best.pt`` written earlier (its ``selection``, or for a file from before the
        rule, its metrics row as the top); a fresh one without a file or when it chose by another metric."""
        if not stored:
            return cls(metric, images)
        saved = stored.get("selection")
        if isinstance(saved, dict) and saved.get("metric") == metric:
            return cls(**{**saved, "images": images})
        row = stored.get("metrics") or {}
        v = value(row, metric)
        if v is None:
            return cls(metric, images, best_has_value=False)
        return cls(metric, images, v, spread(row, metric, images), row.get("step"), True)
