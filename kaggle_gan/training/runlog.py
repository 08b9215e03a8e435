"""What a run reports as it trains: ``log.csv``, ``loss.png``, the divergence check, and stopping on a signal."""
from __future__ import annotations

import csv
import math
import signal
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..core.io import UserError, atomic_path, save_figure

LOG_FIELDS = ["step", "epoch", "kimg", "seconds", "img_per_s", "d_loss", "g_loss"]


class Interrupted(KeyboardInterrupt):
    """Training stopped on request (Ctrl-C, SIGTERM) after saving its state; ``str()`` says where."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopRequests:
    """SIGINT and SIGTERM (Ctrl-C; what Kaggle, Colab and notebook shutdowns send) become a request
    that the loop honours after the current step, with a checkpoint; a second signal stops at once.

    Only in the main thread (where Python delivers signals), and not under torchrun, whose ranks would
    each see the signal after a different step and wait for each other forever.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signal: Optional[int] = None
        self._old: Dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None:  # asked twice: the user means now
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\ntrain: {signal.Signals(signum).name} received; saving a checkpoint after this step "
              "(send it again to stop without saving)", flush=True)

    def __enter__(self) -> "StopRequests":
        if self.enabled:
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def check_finite(values: Dict[str, float], step: int) -> None:
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise UserError(
            f"training diverged at step {step}: {bad}; the last good checkpoint is kept. "
            "Lower the learning rates (SET='optim.lr_d=... optim.lr_g=...') or use train.amp=off"
        )


def _step_of_row(row: Dict[str, str]) -> float:
    """A log row's step; infinity for a row a full disk or a kill cut short (dropped on resume)."""
    try:
        return int(float(row["step"])) if None not in row.values() else math.inf
    except (TypeError, ValueError, KeyError):
        return math.inf


class LossWindow:
    """The step statistics between two log rows, summed on the device (read back once per row).

    Under fp16 the gradient scaler skips the steps whose gradients overflowed
    (and lowers its scale); their losses are inf/NaN by design and are left
    out of the means. A window with no finite value left is divergence all
    the same (:func:`check_finite` catches it). In fp32 and bf16 every value
    counts: a NaN reaches the mean and stops the run.
    """

    def __init__(self, skip_overflow: bool, step: int = 0):
        self.skip_overflow = skip_overflow
        self.restart(step)

    def restart(self, step: int) -> None:
        """An empty window from now, at ``step``."""
        self.sums: Dict[str, "torch.Tensor"] = {}  # noqa: F821
        self.counts: Dict[str, object] = {}  # ints, or tensors when overflowing steps are skipped
        self.started, self.first_step = time.perf_counter(), step

    def add(self, stats: Dict[str, "torch.Tensor"]) -> None:  # noqa: F821
        import torch

        for k, v in stats.items():
            if self.skip_overflow:
                kept = torch.isfinite(v)
                v = torch.where(kept, v, torch.zeros_like(v))
                self.counts[k] = self.counts[k] + kept if k in self.counts else kept.to(torch.int64)
            else:
                self.counts[k] = self.counts.get(k, 0) + 1
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()

    def take(self, step: int) -> Tuple[Dict[str, "torch.Tensor"], float, int]:  # noqa: F821
        """The window's means (still on the device), its seconds and its steps; a fresh window starts at ``step``."""
        means = {k: self.sums[k] / self.counts[k] for k in self.sums}
        seconds, steps = time.perf_counter() - self.started, step - self.first_step
        self.restart(step)
        return means, seconds, steps

    def running(self) -> float:
        """Seconds of training since the window started (other work excluded)."""
        return time.perf_counter() - self.started

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` of other work (an evaluation) out of the window's time."""
        self.started += seconds


class RunLog:
    """A run's CSV (``log.csv``, ``metrics.csv``), truncated to the resumed step so a resumed curve has no
    duplicates; a row with a new column rewrites the header."""

    def __init__(self, path: Path, step: int, fields: Optional[List[str]] = None):
        self.path = path
        rows = []
        if path.is_file():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if _step_of_row(r) <= step]
        self.fields = list(fields or LOG_FIELDS)
        for r in rows:
            self.fields += [k for k in r if k not in self.fields]
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, self.fields)
                w.writeheader()
                w.writerows(rows)
        self.fh = open(path, "a", newline="")

    def write(self, step, epoch, kimg, seconds, rate, means: Dict[str, float]) -> None:
        self.append({"step": step, "epoch": round(epoch, 4), "kimg": round(kimg, 3), "seconds": round(seconds, 2),
                     "img_per_s": round(rate, 1), **{k: f"{v:.6g}" for k, v in means.items()}})

    def append(self, row: Dict) -> None:
        if any(k not in self.fields for k in row):  # a new statistic: rewrite the header
            self.fh.close()
            self.fields += [k for k in row if k not in self.fields]
            with open(self.path, newline="") as fh:
                old = list(csv.DictReader(fh))
            with atomic_path(self.path) as tmp:
                with open(tmp, "w", newline="") as fh:
                    w = csv.DictWriter(fh, self.fields)
                    w.writeheader()
                    w.writerows(old)
            self.fh = open(self.path, "a", newline="")
        csv.DictWriter(self.fh, self.fields).writerow(row)
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def plot_losses(log_csv: Path, out_png: Path) -> Optional[Path]:
    """Loss curves against images shown, one panel for the losses and one for extra statistics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    if not Path(log_csv).is_file():
        return None
    df = pd.read_csv(log_csv)
    if df.empty:
        return None
    from .losses import DIAGNOSTICS

    diagnostics = [c for c in df.columns if c in DIAGNOSTICS]
    extras = [c for c in df.columns if c not in LOG_FIELDS and c not in DIAGNOSTICS]
    panels = 1 + bool(extras) + bool(diagnostics)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    for col in ("d_loss", "g_loss"):
        if col in df:
            axes[0][0].plot(df.kimg, df[col], label=col)
    axes[0][0].set(xlabel="thousand images shown to the critic", ylabel="loss", title=Path(log_csv).parent.name)
    axes[0][0].legend()
    for col in extras:
        axes[0][1].plot(df.kimg, df[col], label=col)
    if extras:
        axes[0][1].set(xlabel="thousand images shown to the critic", title="critic statistics")
        axes[0][1].legend()
    for col in diagnostics:
        axes[0][-1].plot(df.kimg, df[col], label=col)
    if diagnostics:  # README: a flat critic has both sds near 0, d_sign_ok near 0.5 and d_gap near 0
        axes[0][-1].set(xlabel="thousand images shown to the critic", title="critic diagnostics (flat: all near 0, "
                        "sign_ok 0.5)")
        axes[0][-1].legend()
    return save_figure(fig, out_png)
