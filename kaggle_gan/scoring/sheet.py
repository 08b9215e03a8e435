"""The neighbour search's contact sheet: each query beside its nearest training images."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from ..core.io import atomic_path

SHEET_PAD = 4


SHEET_TEXT = 24  # two lines of the default font under each image


SHEET_HEADER = 20


def sheet_size(rows: int, k: int, side: int, scale: int = 2) -> Tuple[int, int]:
    """(width, height) in pixels of a sheet of ``rows`` queries with ``k`` neighbours of ``side`` px images."""
    cell = side * scale
    return SHEET_PAD + (k + 1) * (cell + SHEET_PAD), SHEET_HEADER + rows * (cell + SHEET_TEXT + SHEET_PAD) + SHEET_PAD


def contact_sheet(
    path: Path,
    queries: np.ndarray,
    names: Sequence[str],
    train: np.ndarray,
    sims: np.ndarray,
    idx: np.ndarray,
    title: str,
    threshold: Optional[float] = None,
    scale: int = 2,
) -> Tuple[int, int]:
    """Write a PNG: one row per query (the query, then its k neighbours with similarity and index under them).

    ``queries`` (R, S, S, 3) uint8, ``train`` the (N, S, S, 3) uint8 training images,
    ``sims``/``idx`` (R, k). Neighbours at or above ``threshold`` get a red frame.
    Returns the (width, height) written.
    """
    from PIL import Image, ImageDraw

    rows, k = sims.shape
    side = queries.shape[1]
    cell = side * scale
    width, height = sheet_size(rows, k, side, scale)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((SHEET_PAD, 4), title[: width // 6], fill=(0, 0, 0))

    def paste(arr: np.ndarray, col: int, row: int, lines: Sequence[str], frame=None) -> None:
        x = SHEET_PAD + col * (cell + SHEET_PAD)
        y = SHEET_HEADER + row * (cell + SHEET_TEXT + SHEET_PAD)
        sheet.paste(Image.fromarray(np.asarray(arr)).resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        if frame:
            draw.rectangle((x - 2, y - 2, x + cell + 1, y + cell + 1), outline=frame, width=2)
        for i, line in enumerate(lines):
            draw.text((x, y + cell + 1 + 11 * i), line[: cell // 6], fill=(0, 0, 0))

    for r in range(rows):
        paste(queries[r], 0, r, [names[r], "query"])
        for j in range(k):
            hot = threshold is not None and sims[r, j] >= threshold
            paste(train[int(idx[r, j])], j + 1, r, [f"{sims[r, j]:.3f}", f"#{int(idx[r, j])}"], (220, 0, 0) if hot else None)
    with atomic_path(Path(path), suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")
    return width, height
