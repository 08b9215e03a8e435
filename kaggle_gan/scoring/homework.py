"""The homework's levels, and what a local score can say about them: the AFD side only.

Each level has two bars (HW6.md): a judge's FID limit and an AFD rate. The
judge's FID formula is not public and its scale (thousands: a good StyleGAN2
run scored 7,938 there and about 200 with pytorch-fid) is not ours, so the FID
bar is never checked here; a local verdict says ``AFD ok`` or ``AFD fail``
and nothing more.
"""
from __future__ import annotations

from typing import Optional, Tuple

SUBMISSION_COUNT = 1000  # images in a homework submission: the judge takes no other count

# (level, judge FID <=, AFD >=) from the homework slides; FID on the judge's own scale.
LEVELS: Tuple[Tuple[str, float, float], ...] = (
    ("simple", 30000.0, 0.0),
    ("medium", 12000.0, 0.4),
    ("strong", 10000.0, 0.5),
    ("boss", 9000.0, 0.6),
)
FID_NOT_CHECKED = ("the levels' FID bars (judge FID <= 30000, 12000, 10000, 9000) are not checked here: the judge's "
                   "FID formula is not public and its scale is not pytorch-fid's (HW6.md); only the AFD bars are")


def verdicts(afd: float, real_afd: Optional[float] = None) -> dict:
    """Per level: its two bars, whether the AFD clears its own (``afd_pass``), that the FID bar was not
    checked (``fid_checked`` False), and ``detector_limited``: the AFD bar is above the detector's rate on
    held-out real training images, where real faces would fail it too."""
    return {name: {"judge_fid_max": fid_max, "afd_min": afd_min, "afd_pass": bool(afd >= afd_min),
                   "fid_checked": False, "detector_limited": real_afd is not None and real_afd < afd_min}
            for name, fid_max, afd_min in LEVELS}


def afd_level(v: dict) -> str:
    """The highest level whose AFD bar the images clear (its FID bar unchecked), or ``none``."""
    passed = [name for name, _, _ in LEVELS if v[name]["afd_pass"]]
    return passed[-1] if passed else "none"


def verdict_cell(v: dict) -> str:
    """A level's cell in the printed table: what was checked, and only that."""
    if v["afd_pass"]:
        return "AFD ok"
    return "AFD fail (detector)" if v.get("detector_limited") else "AFD fail"
