"""Long feature passes that survive an interruption: rows computed a chunk at a time, each chunk saved.

The reference statistics of ``score`` and the neighbour index embed thousands
of training images, tens of minutes on a CPU. :func:`chunked_rows` saves each
finished chunk under a folder named by the caller's cache key, so a run that
is killed, cut off or Ctrl-C'd continues from its last whole chunk instead of
from zero. The caller stores the finished result and then removes the folder.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .io import atomic_path


def chunked_rows(n: int, compute: Callable[[int, int], np.ndarray], folder: Path, chunk: int,
                 desc: str = "rows") -> np.ndarray:
    """The (n, D) array whose rows ``start:stop`` are ``compute(start, stop)``, ``chunk`` rows at a time.

    Chunk ``start:stop`` is saved as ``folder/rows-START-STOP.npy`` (atomically),
    and a chunk already there with the right row count is read back instead of
    computed: the file name pins the rows, the caller's ``folder`` name pins
    everything else (data, weights, counts). An unreadable chunk is computed again.
    """
    from tqdm.auto import tqdm

    if n < 1 or chunk < 1:
        raise ValueError(f"need n >= 1 and chunk >= 1, got n={n}, chunk={chunk}")
    folder = Path(folder)
    parts = []
    bar = tqdm(total=n, unit="img", desc=desc)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        path = folder / f"rows-{start:08d}-{stop:08d}.npy"
        rows = _load(path, stop - start)
        if rows is None:
            rows = np.asarray(compute(start, stop))
            with atomic_path(path, suffix=".npy") as tmp:
                np.save(tmp, rows)
        parts.append(rows)
        bar.update(stop - start)
    bar.close()
    return np.concatenate(parts)


def _load(path: Path, count: int) -> Optional[np.ndarray]:
    if not path.is_file():
        return None
    try:
        rows = np.load(path, allow_pickle=False)
    except Exception:  # truncated or foreign: compute it again
        return None
    return rows if rows.ndim == 2 and len(rows) == count else None


def remove(folder: Path) -> None:
    """Drop the chunks once the caller has stored the whole result."""
    shutil.rmtree(folder, ignore_errors=True)
