"""Quality along a run: every ``train.eval_every`` thousand images, score the EMA generator and keep the best.

Each evaluation draws ``train.eval_images`` images from the EMA generator
with the same noise every time (so points differ by the weights alone),
at the prepared data's size, and measures:

- AFD with the detector (the cached cascade, ``train --detector`` or
  ``DETECTOR=``; left out, with one line, when there is none);
- with ``train.eval_features`` (``auto``: on a GPU), Inception features of the
  same images: FID, KID and precision/recall against the reference statistics
  that ``score`` uses (same cache), labelled a proxy with random weights.

It appends a row to ``RUN/metrics.csv`` (truncated to the resumed step on a
resume, like ``log.csv``), redraws ``RUN/quality.png`` and, when the rule of
:mod:`kaggle_gan.training.selection` picks the point by ``train.select``
(AFD, KID or FID), writes its generator to ``RUN/best.pt`` with the row
inside it. At the end of training :meth:`Evaluator.confirm` scores that point
again on fresh noise and stores both figures. ``generate`` draws from
``best.pt`` unless told ``--checkpoint last``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from ..config import Config
from ..core.io import UserError, save_figure
from .selection import Selection, spread, value

METRIC_FIELDS = ["step", "kimg", "minutes", "afd", "kid", "kid_sd", "fid", "fid_sd", "precision", "recall", "eval_s", "best"]
BEST = "best.pt"
NOISE_SEED = 31_337  # the evaluation's fixed noise, apart from the run's own streams
FRESH_SEED = NOISE_SEED + 1  # the noise best.pt is scored on again at the end: no selection has seen it


class Evaluator:
    """Scores the EMA generator at fixed intervals of a run; see the module's docstring."""

    def __init__(self, cfg: Config, data_dir: Path, run_dir: Path, device: torch.device, step: int,
                 detector=None, inception_weights: Optional[str] = None, cache: Optional[Path] = None):
        from ..data.prepared import load_prepared
        from ..scoring import afd
        from .runlog import RunLog

        t = cfg.train
        self.cfg, self.run_dir, self.device = cfg, Path(run_dir), device
        self.every = max(1, round(t.eval_every * 1000 / t.batch_size))  # in steps
        self.period = t.eval_minutes * 60  # or in seconds of training
        self.next_time = 0.0
        self.prepared = load_prepared(Path(data_dir))
        self.size = int(self.prepared.images.shape[1])
        self.detector, self.model, self.ref = None, None, None
        try:
            self.detector = afd.make_detector(detector)
        except UserError as err:
            print(f"train: evaluation without AFD ({err})")
        features = t.eval_features == "inception" or (t.eval_features == "auto" and device.type == "cuda")
        if features:
            self._load_features(inception_weights, Path(cache) if cache else self.run_dir / "cache")
        elif t.eval_features == "auto":
            print("train: evaluation on a CPU measures AFD only (Inception takes about 2 min per 1000 images on "
                  "2 cores); add KID/FID with --set train.eval_features=inception")
        self.select = t.select
        if self.select == "afd" and self.detector is None or self.select != "afd" and self.model is None:
            self.select = "kid" if self.model is not None else "afd"
            if self.detector is None and self.model is None:
                print("train: evaluation has neither a detector nor features: it is off")
            else:
                print(f"train: best.pt is chosen by {self.select} (train.select={t.select} cannot be measured here)")
        self.log = RunLog(self.run_dir / "metrics.csv", step, fields=METRIC_FIELDS) if self.active else None
        self.selection = Selection.resume(self.select, t.eval_images, self._stored_best())
        self.last_row: Optional[Dict] = None  # the latest point's numbers (TensorBoard's events read them)

    @classmethod
    def for_run(cls, trainer) -> Optional["Evaluator"]:
        """A :class:`~kaggle_gan.training.loop.Trainer`'s evaluator when ``train.eval_every`` asks for one, on rank 0,
        with prepared images on disk (``trainer.evaluation`` = (options, data folder)) and something to
        measure; else None. Conditional runs are graded by their own experiment (``make cgan``), not here."""
        t = trainer.cfg.train
        if not ((t.eval_every or t.eval_minutes) and trainer.evaluation and trainer.world.is_main):
            return None
        if trainer.cfg.model.classes:
            print("train: train.eval_every is for unconditional images; a conditional run is not evaluated")
            return None
        options, data_dir = trainer.evaluation
        evaluator = cls(trainer.cfg, data_dir, trainer.run_dir, trainer.device, trainer.step, **options)
        evaluator.next_time = evaluator.period * (int(trainer.elapsed // evaluator.period) + 1) if evaluator.period else 0
        return evaluator if evaluator.active else None

    def due(self, step: int, seconds: float) -> bool:
        """Whether a point is due at ``step`` after ``seconds`` of training: every ``train.eval_minutes`` when
        set (the next mark once passed), else every ``train.eval_every`` thousand images."""
        if not self.period:
            return step % self.every == 0
        if seconds < self.next_time:
            return False
        self.next_time = self.period * (int(seconds // self.period) + 1)
        return True

    def run(self, step: int, gan, bar, final: bool = False, seconds: float = 0.0) -> float:
        """The loop's hook: score ``gan``'s sampling generator (:class:`~kaggle_gan.training.step.GANStep`) in eval
        mode and write its line above the progress bar; at the ``final`` step also :meth:`confirm` best.pt.
        Returns the seconds it took (not training time)."""
        from ..nets.layers import evaluating

        started = time.perf_counter()
        with evaluating(gan.sampler(), gan.D) as (G, D):
            row = self(step, G, D, seconds)
        bar.write(describe(row))
        if final:
            line = self.confirm()
            if line:
                bar.write(line)
        return time.perf_counter() - started

    @property
    def active(self) -> bool:
        return self.detector is not None or self.model is not None

    def _load_features(self, weights: Optional[str], cache: Path) -> None:
        from ..scoring import fid, inception

        self.model = inception.load_inception_or_proxy(weights, self.device, "train")
        self.ref = fid.reference_stats(self.prepared.images, self.prepared.meta["images_sha256"], self.model,
                                       cache, self.cfg.train.eval_ref)

    def _stored_best(self) -> Optional[Dict]:
        """The state in ``best.pt`` (written before a resume too), or None when there is none that loads."""
        from .checkpoint import GENERATOR_FORMAT, load_file

        path = self.run_dir / BEST
        if path.is_file():
            try:
                return load_file(path, formats=(GENERATOR_FORMAT,))
            except ValueError:
                print(f"train: {path} is damaged or foreign; the next evaluation replaces it")
        return None

    def chooser(self) -> Dict:
        """What chose best.pt: the metric, and the detector or the feature network that measured it."""
        if self.select == "afd":
            return {"metric": "afd", "by": self.detector.describe()}
        return {"metric": self.select, "by": {"name": self.model.label, "weights": self.model.weights.describe()}}

    @torch.no_grad()
    def draw(self, G: torch.nn.Module, seed: int = NOISE_SEED) -> np.ndarray:
        """(eval_images, size, size, 3) uint8 from ``G`` and the noise of ``seed`` (the same at every call)."""
        from ..data.pictures import to_uint8

        n, z_dim = self.cfg.train.eval_images, self.cfg.model.z_dim
        z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))
        batches = [to_uint8(G(z[a:a + 250].to(self.device)), self.size) for a in range(0, n, 250)]
        return np.concatenate(batches)

    def measure(self, G: torch.nn.Module, seed: int = NOISE_SEED) -> Dict:
        """Every number this evaluation can measure of ``G`` (in eval mode) on the noise of ``seed``."""
        from ..scoring import afd, fid, metrics

        images = self.draw(G, seed)
        row: Dict = {}
        if self.detector is not None:
            row["afd"] = afd.detection_rate(images, self.detector, progress=False).rate
        if self.model is not None:
            feats = fid.activations(images, self.model, desc="evaluate", progress=False)
            row["fid"] = fid.frechet_distance_to_features(feats, self.ref.mu, self.ref.sigma)
            if self.select == "fid":  # the selection rule's spread (30 half-sample FIDs: seconds)
                row["fid_sd"] = fid.half_sample_sd(feats, self.ref.mu, self.ref.sigma)
            if self.ref.real is not None:  # a reference of more than 5 images
                row["kid"], row["kid_sd"] = metrics.kid(feats, self.ref.real)
                pr = metrics.precision_recall_density_coverage(feats, self.ref.real)
                row.update(precision=pr["precision"], recall=pr["recall"])
        return row

    def __call__(self, step: int, G: torch.nn.Module, D: Optional[torch.nn.Module] = None, seconds: float = 0.0) -> Dict:
        """Score ``G`` (the EMA generator, in eval mode) at ``step``: a metrics row, and best.pt if the selection
        rule picks it (with the critic ``D`` of the same step, which ``generate --select critic`` ranks by)."""
        from .checkpoint import save_generator

        started = time.perf_counter()
        row: Dict = {"step": step, "kimg": round(step * self.cfg.train.batch_size / 1000, 3),
                     "minutes": round(seconds / 60, 3), **self.measure(G)}
        row["best"] = self.selection.consider(row)
        if row["best"]:
            save_generator(G.state_dict(), self.cfg.to_dict(), step, self.run_dir / BEST,
                           extra={"metrics": {k: v for k, v in row.items() if k != "best"}, "select": self.select,
                                  "selection": self.selection.state(), "chosen_by": self.chooser(),
                                  **({"D": D.state_dict()} if D is not None else {})})
        row["eval_s"] = round(time.perf_counter() - started, 2)
        self.log.append(row)
        self.last_row = row
        plot_quality(self.run_dir / "metrics.csv", self.run_dir / "quality.png",
                     self.model.label if self.model is not None else "")
        return row

    def confirm(self) -> Optional[str]:
        """Score best.pt's generator again on fresh noise (``FRESH_SEED``), store the figures in it as
        ``metrics_fresh``, and say in one line which point was chosen, by what, and both figures."""
        from ..nets.models import build_models
        from .checkpoint import add_to_generator

        state = self._stored_best()
        if state is None:
            return None
        G, _ = build_models(self.cfg.model)
        G.load_state_dict(state["G"])
        fresh = self.measure(G.to(self.device).eval(), FRESH_SEED)
        add_to_generator(self.run_dir / BEST, {"metrics_fresh": fresh})
        return describe_best({**state, "metrics_fresh": fresh}, self.cfg.train.eval_images)


def describe(row: Dict) -> str:
    """One line for the progress bar's log: the point's numbers, and whether it is the best so far."""
    parts = [f"{row['kimg']:g}k images"]
    parts += [f"AFD {row['afd']:.3f}"] if "afd" in row else []
    parts += [f"KID x1000 {row['kid'] * 1000:.3g}", f"FID {row['fid']:.4g}",
              f"precision {row['precision']:.2f}", f"recall {row['recall']:.2f}"] if "kid" in row else []
    return "eval: " + ", ".join(parts) + (" (best.pt)" if row["best"] else "") + f" [{row['eval_s']:.1f} s]"


def describe_best(state: Dict, images: int) -> str:
    """best.pt in one line: its step, what chose it, its figure on the evaluation's noise and on fresh noise."""
    metric = state.get("select", "afd")
    chosen = state.get("chosen_by") or {}
    by = (chosen.get("by") or {}).get("name", "")
    picked, fresh = value((state.get("metrics") or {}), metric), value((state.get("metrics_fresh") or {}), metric)

    def fmt(v: Optional[float], row: Dict) -> str:
        if v is None:
            return "not measured"
        scale = 1000 if metric == "kid" else 1
        return f"{v * scale:.4g} +- {spread(row, metric, images) * scale:.2g}"

    line = (f"best.pt: step {state['step']}, chosen by {'KID x1000' if metric == 'kid' else metric.upper()}"
            + (f" ({by})" if by else "") + f": {fmt(picked, state.get('metrics') or {})} on the evaluation's noise")
    if "metrics_fresh" in state:
        line += f", {fmt(fresh, state['metrics_fresh'])} on fresh noise (no selection has seen it)"
    return line


def plot_quality(metrics_csv: Path, out_png: Path, features: str = "") -> Optional[Path]:
    """AFD (left) and KID x1000 (right, when measured) against thousands of images shown; best point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(metrics_csv)
    panels = [c for c in ("afd", "kid") if c in df and df[c].notna().any()]
    if df.empty or not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    best = df[df.best.astype(str) == "True"]
    for ax, col in zip(axes[0], panels):
        scale = 1000 if col == "kid" else 1
        ax.plot(df.kimg, df[col] * scale, marker="o")
        if len(best):
            ax.axvline(best.kimg.iloc[-1], color="tab:green", linestyle="--", label="best.pt")
            ax.legend()
        ylabel = "AFD (higher is better)" if col == "afd" else f"KID x1000, {features} (lower is better)"
        ax.set(xlabel="thousand images shown to the critic", ylabel=ylabel, title=Path(metrics_csv).parent.name)
    return save_figure(fig, out_png)
