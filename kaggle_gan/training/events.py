"""TensorBoard events beside ``log.csv``, for Kaggle's and Colab's ``%tensorboard``: when it is installed.

What a run writes to its folder (``RUN/events.out.tfevents.*``), at the
step it belongs to: every log row's losses, critic statistics and
diagnostics (``loss/``, ``critic/``, ``speed/img_per_s``); every evaluation's
numbers (``eval/afd``, ``eval/kid``, ...); every sample grid (``samples``).
A resumed run drops the events past its checkpoint's step, as ``log.csv`` does.

``tensorboard`` is an optional extra (``pip install 'kaggle-gan[tensorboard]'``;
Kaggle and Colab have it). Without it, or with ``train.tensorboard=false``,
nothing is written, and one line says which.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, Optional

from .losses import DIAGNOSTICS

LOSSES = ("d_loss", "g_loss")


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class Events:
    """A run's event writer; every method does nothing when events are off (``writer`` None)."""

    def __init__(self, run_dir: Path, step: int, wanted: bool = True):
        self.writer = None
        if not wanted:
            return
        if not available():
            print("train: TensorBoard events off (tensorboard is not installed: pip install tensorboard, or "
                  "kaggle-gan[tensorboard]); log.csv and the PNGs have everything")
            return
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events at or after the resumed step from an interrupted attempt are hidden, as log.csv
        # is cut back; a fresh run has nothing to purge
        self.writer = SummaryWriter(str(run_dir), purge_step=step or None, flush_secs=10)

    def log_row(self, step: int, means: Dict[str, float], img_per_s: float) -> None:
        if self.writer is None:
            return
        for name, value in means.items():
            group = "loss" if name in LOSSES else "diagnostics" if name in DIAGNOSTICS else "critic"
            self.writer.add_scalar(f"{group}/{name}", value, step)
        self.writer.add_scalar("speed/img_per_s", img_per_s, step)

    def evaluation(self, step: int, row: Optional[Dict]) -> None:
        if self.writer is None or not row:
            return
        for name in ("afd", "kid", "fid", "precision", "recall"):
            if row.get(name) is not None:
                self.writer.add_scalar(f"eval/{name}", float(row[name]), step)

    def picture(self, step: int, png: Path) -> None:
        """The sample grid (or the toy's picture) written to ``png`` at ``step``."""
        if self.writer is None or not Path(png).is_file():
            return
        import numpy as np
        from PIL import Image

        with Image.open(png) as img:
            self.writer.add_image("samples", np.asarray(img.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
