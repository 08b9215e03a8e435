"""The images folder generate writes: whole or not at all, with a marker of what it wrote, and never over
anything it did not write."""
from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.io import (
    GENERATED_BY,
    MARKER,
    UserError,
    atomic_path,
    current_umask,
    read_json,
    write_failure,
    write_json,
    written_by,
)


def write_batch(images: np.ndarray, folder: Path, first: int, quality: int, ext: str) -> None:
    from PIL import Image

    for i, arr in enumerate(images):
        Image.fromarray(arr).save(folder / f"{first + i}.{ext}", **({"quality": quality} if ext == "jpg" else {}))


def write_folder(drawn, out: Path, n: int, meta: dict, quality: int, image_format: str) -> None:
    """Encode the drawn batches as ``1.EXT .. n.EXT`` in a temporary folder (a thread pool encodes while the next
    batch is drawn), then put it in place of ``out`` whole."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for leftover in [*out.parent.glob(f".tmp-{out.name}.*"), *out.parent.glob(f".old-{out.name}.*")]:
            shutil.rmtree(leftover, ignore_errors=True)  # from a generate killed earlier
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}.", dir=out.parent))
    except OSError as err:
        raise write_failure(err, out) or err from None
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the finished folder gets the usual permissions
    try:
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as workers:
            pending, first = [], 1
            for x, _scores in drawn:
                pending.append(workers.submit(write_batch, x, tmp, first, quality, image_format))
                first += len(x)
            for f in pending:
                f.result()
        write_json(tmp / MARKER, {**meta, "files": [f"{i}.{image_format}" for i in range(1, n + 1)]})
        replace_dir(tmp, out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(err, out)  # None for anything but a full or read-only disk
        if failure is not None:
            raise failure from None
        raise


def is_ours(sidecar: Path) -> bool:
    """Whether ``NAME.json`` beside a folder was written by generate (today's, or the keys older versions wrote)."""
    try:
        meta = read_json(sidecar)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and (meta.get("written_by") == GENERATED_BY
                                       or {"source", "step", "count", "seed", "size"} <= set(meta))


def written_files(folder: Path) -> Optional[set]:
    """The files an earlier generate wrote into ``folder``, or None when nothing says it wrote there."""
    marker = folder / MARKER
    if marker.is_file():
        meta = written_by(marker, GENERATED_BY)
        try:
            return {MARKER, *meta["files"]} if meta is not None else None
        except (KeyError, TypeError):  # a marker of ours, damaged by hand
            return None
    sidecar = folder.parent / f"{folder.name}.json"  # a folder written before the marker existed
    if sidecar.is_file() and is_ours(sidecar):
        return {f"{i}.jpg" for i in range(1, int(read_json(sidecar)["count"]) + 1)}
    return None


def check_replaceable(out: Path) -> None:
    """Refuse ``out`` unless it is absent, empty, or an earlier generate's folder holding only what it wrote."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out} is a file, not a folder; choose a new or empty folder for --out")
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return
    written = written_files(out)
    if written is None:
        raise UserError(f"refusing to write into {out}: it holds {len(present)} file(s) kaggle_gan did not write "
                        f"(e.g. {', '.join(present[:3])}); choose a new or empty folder for --out")
    foreign = [name for name in present if name not in written]
    if foreign:
        raise UserError(f"refusing to replace {out}: besides an earlier generate's images it holds {len(foreign)} "
                        f"other file(s) (e.g. {', '.join(foreign[:3])}); move them out or choose another --out")


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older one."""
    old: Optional[Path] = None
    if final.exists():
        old = final.with_name(f".old-{final.name}.{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


GRID_ROW = 8  # images a row: the lab's 8 x 4 picture of 32 sets


def check_grid(grid: Optional[Path], out: Path) -> None:
    """Refuse a grid path that holds a file an earlier generate into ``out`` did not write (its sidecar names
    the grid it wrote)."""
    if grid is None or not grid.exists():
        return
    sidecar = out.parent / f"{out.name}.json"
    if not (sidecar.is_file() and is_ours(sidecar) and read_json(sidecar).get("grid") == grid.name):
        raise UserError(f"refusing to replace {grid}: kaggle_gan did not write it; move it or choose another --out")


def write_grid(images: np.ndarray, path: Path, per_row: int = GRID_ROW) -> Path:
    """(N, H, W, 3) uint8 images as one PNG, ``per_row`` a row (the last row padded with white), atomically."""
    from PIL import Image

    n, h, w, _ = images.shape
    rows = -(-n // per_row)
    sheet = np.full((rows * h, min(n, per_row) * w, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, per_row)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(sheet).save(tmp, format="PNG")
    return path
