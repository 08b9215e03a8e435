"""Curated submissions: draw a pool of M images, keep the N a judge of quality ranks highest.

- ``critic``: the run's own critic scores each image (its raw score, higher
  = more real for every loss here), and the top N are kept. This is the
  ranking step of discriminator rejection sampling (Azadi et al. 2019)
  without its acceptance probabilities: we keep a fixed count, as a
  submission must. It uses nothing but what the run trained, so it is
  within HW6's rules (no pretrained models).
- ``detector``: the anime-face detector's confidence (for the cascade: the
  images it counts as faces first, ordered by the weight its last stage
  gives the best window; then the rest by their best raw window). The
  detector is a pretrained model: for competitions that allow one, not HW6.

Ties keep the earlier image; the kept images stay in pool order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..core.io import UserError

SELECTORS = ("critic", "detector")


def keep_top(scores: Sequence, n: int) -> np.ndarray:
    """Indices (ascending) of the ``n`` highest ``scores`` (numbers or tuples); ties keep the earlier index."""
    if not 0 < n <= len(scores):
        raise ValueError(f"cannot keep {n} of {len(scores)} images")
    order = sorted(range(len(scores)), key=lambda i: (scores[i], -i), reverse=True)
    return np.array(sorted(order[:n]), dtype=np.int64)


def load_critic(source: Path, state: Dict, device: torch.device) -> Tuple[torch.nn.Module, int]:
    """(critic in eval mode, its step) for the generator ``state`` loaded from ``source``.

    The critic saved with the generator (best.pt since this version, a
    checkpoint file) when there is one, else the run's latest checkpoint's.
    """
    from ..config import Config
    from ..nets.models import build_models
    from ..training.checkpoint import load_latest

    weights, step = state.get("D"), int(state["step"])
    if weights is None:
        latest = load_latest(Path(source) / "checkpoints") if Path(source).is_dir() else None
        if latest is None:
            raise UserError(f"--select critic needs the run's critic, and {source} holds none; pass the run folder "
                            "(its checkpoints/ keep the critic) or use --select detector")
        weights, step = latest["D"], int(latest["step"])
        if step != int(state["step"]):
            print(f"generate: the critic is the latest checkpoint's (step {step}); the generator is from step "
                  f"{state['step']}")
    cfg = Config.from_dict(state["config"])
    _G, D = build_models(cfg.model, aux_classifier=cfg.loss.aux_weight > 0)
    D.load_state_dict(weights)
    return D.to(device).eval(), step


@torch.no_grad()
def critic_scores(D: torch.nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> np.ndarray:
    """The critic's raw score for each generated image ``x`` (G's output, at the training resolution)."""
    out = D(x) if y is None else D(x, y.to(x.device))
    return out.float().flatten().cpu().numpy()


def detector_scores(images: np.ndarray, detector) -> List[Tuple[bool, float]]:
    """(counted as a face, confidence) per (N, H, W, 3) uint8 image, for :func:`keep_top`."""
    from tqdm.auto import tqdm

    return [detector.confidence(np.asarray(img)) for img in tqdm(images, desc="detector", unit="img", leave=False)]
