"""The homework's levels and what a local score can say about them."""
from __future__ import annotations

from typing import Optional, Tuple

SUBMISSION_COUNT = 1000  # images in a homework submission: any other count passes no level


# (level, judge FID <=, AFD >=) from the homework slides; FID on the judge's own scale.
LEVELS: Tuple[Tuple[str, float, float], ...] = (
    ("simple", 30000.0, 0.0),
    ("medium", 12000.0, 0.4),
    ("strong", 10000.0, 0.5),
    ("boss", 9000.0, 0.6),
)


def verdicts(afd: float, n_images: int, real_afd: Optional[float] = None) -> dict:
    """Per level: its thresholds, whether the AFD passes, and ``pass`` (AFD and a 1000-image count).

    ``detector_limited`` marks a level whose AFD bar is above the detector's
    rate on held-out real training images: there real faces would fail too.
    """
    out = {}
    for name, fid_max, afd_min in LEVELS:
        afd_ok = bool(afd >= afd_min)
        out[name] = {
            "judge_fid_max": fid_max,
            "afd_min": afd_min,
            "afd_pass": afd_ok,
            "pass": afd_ok and n_images == SUBMISSION_COUNT,
            "detector_limited": real_afd is not None and real_afd < afd_min,
        }
    return out


def best_level(v: dict) -> str:
    passed = [name for name, _, _ in LEVELS if v[name]["pass"]]
    return passed[-1] if passed else "none"
