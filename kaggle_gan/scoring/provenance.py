"""How a folder of images was made, read from the marker ``generate`` leaves in it, for the score's record.

Two scores of the same run compare only when the images were drawn the same
way: from the same checkpoint, at the same truncation, with or without a
curated pool. A pool ranked by the detector raises the AFD by design (it keeps
the images the detector likes), so such rows are marked wherever they are
shown. Folders that ``generate`` did not write (real images, another tool's)
say nothing here: their fields are empty.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..core.io import GENERATED_BY, MARKER, written_by

FIELDS = ("checkpoint", "step", "truncation", "pool", "select", "seeds", "condition")


def seeds_text(seeds: Sequence[int]) -> str:
    """``0-999`` for a block of consecutive seeds, else how many and a digest of the list."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        return ""
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    digest = hashlib.sha256(",".join(map(str, seeds)).encode()).hexdigest()[:8]
    return f"{len(seeds)} seeds ({digest})"


def _checkpoint_name(path: str) -> str:
    """``best.pt`` / ``generator.pt`` for a run's own files; the path for any other file."""
    name = Path(path).name
    return name if name in ("best.pt", "generator.pt", "last.pt") else str(path)


def how_drawn(images_dir: Path) -> Dict[str, Optional[object]]:
    """The fields of :data:`FIELDS` for ``images_dir``: from generate's marker, else all None."""
    meta = written_by(Path(images_dir) / MARKER, GENERATED_BY)
    if meta is None:
        return dict.fromkeys(FIELDS)
    pool, count = meta.get("pool"), meta.get("count")
    return {
        "checkpoint": _checkpoint_name(str(meta.get("checkpoint") or meta.get("source") or "")),
        "step": meta.get("step"),
        "truncation": meta.get("truncation", 1.0),
        "pool": pool if meta.get("select") and pool != count else None,
        "select": meta.get("select"),
        "seeds": seeds_text(meta.get("seeds") or []),
        "condition": meta.get("condition") or meta.get("conditions"),
    }


def curated(select: Optional[str]) -> str:
    """The mark a curated row carries: ``*`` for a detector-ranked pool (it games the AFD), ``+`` for a
    critic-ranked one (the run's own critic: within the homework's rules); empty otherwise."""
    return {"detector": "*", "critic": "+"}.get(select or "", "")
