"""The 2-D toy: a mixture of Gaussians, an MLP pair, every loss, mode coverage.

The classic picture of what a GAN objective does (WGAN-GP and unrolled-GAN
papers): real points from a ring of 8 Gaussians (radius 2, sigma 0.02) or a
5x5 grid (spacing 2, sigma 0.05), a small MLP generator and critic, trained
by the project's one loop (:class:`kaggle_gan.training.loop.Trainer`) with the same
loss objects as the image presets. The data is a fixed sample of the mixture
drawn from a seeded generator, served by :class:`Points` (a training-loop
source like the prepared images).

Outputs under ``out`` (``WORK/toy`` from the CLI)::

    MIXTURE/LOSS/           the run (config, checkpoints, log.csv, loss.png)
    MIXTURE/LOSS/samples/   one picture per checkpoint: real points, generated points, critic contours
    MIXTURE/summary.png     every loss (rows) at every checkpoint (columns)
    MIXTURE/coverage.csv    one row per loss: modes covered, high-quality share, seconds

Coverage: a sample belongs to its nearest mode; it is *high quality* when
within 3 sigma of it; a mode is *covered* when it holds at least 1% of the
samples as high-quality ones.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ..config import Config, Preset, describe_presets, resolve
from ..core.io import RunLock, UserError, atomic_path, save_figure
from ..data.sources import Batch, fixed_noise

#: mixture name -> (mode centres (K, 2), sigma)
MIXTURES = ("ring8", "grid25")
LOSSES = ("bce", "wgan", "wgan-gp", "hinge")
HQ_SIGMAS = 3.0  # a sample within this many sigma of a mode is high quality
MIN_SHARE = 0.01  # a mode holding at least this share of the samples is covered
EVAL_SAMPLES = 10_000
PICTURE_POINTS = 1_000
CHECKPOINTS = 4  # checkpoints (pictures) per run

# Differences from the image presets, each with its reason; the losses differ from `toy` only where
# their papers say so. Kept apart from config.PRESETS: `kaggle-gan train` cannot run these (they need points).
TOY_PRESETS: Dict[str, Preset] = {p.name: p for p in (
    Preset("toy", None, "MLP pair on 2-D points, the shared part of every toy run", (
        ("model.arch", "mlp", "three ReLU layers each side, as in the WGAN-GP and unrolled-GAN toy experiments"),
        ("model.z_dim", 8, "a few noise dimensions are plenty for a 2-D target"),
        ("model.g_width", 128, "small enough for CPU: a step is a few milliseconds"),
        ("model.d_width", 128, "same"),
        ("model.d_norm", "none", "no normalisation layers in an MLP critic"),
        ("optim.lr_g", 1e-3, "a 2-D problem tolerates a rate 10x the image presets'"),
        ("optim.lr_d", 1e-3, "same"),
        ("train.batch_size", 256, "as in the WGAN-GP toy experiments"),
        ("train.flip", False, "points are not images"),
        ("train.log_every", 100, "a log row every 100 steps"),
        ("train.keep_epochs", False, "an epoch is one checkpoint of the toy; last.pt is enough"),
        ("train.ema_decay", 0.995, "a short run: the average follows the generator within a few hundred steps "
         "and smooths its jitter around each mode (WGAN-GP: HQ 75% at 0.99 and 2000 G steps, 89% here)"),
        ("train.max_steps", 4000, "critic steps: 4000 generator steps at one critic step each"),
    )),
    Preset("toy-bce", "toy", "the sample code's non-saturating BCE loss", (
        ("loss.name", "bce", "the homework's baseline objective: the one expected to drop modes"),
    )),
    Preset("toy-wgan", "toy", "WGAN with weight clipping", (
        ("loss.name", "wgan", "Wasserstein critic, weights clipped to [-c, c]"),
        ("loss.n_critic", 5, "the WGAN paper's 5 critic steps per generator step"),
        ("optim.name", "rmsprop", "the WGAN paper's optimiser"),
        ("optim.lr_g", 5e-4, "RMSprop at the Adam rate diverges on this scale"),
        ("optim.lr_d", 5e-4, "same"),
        ("train.max_steps", 20000, "4000 generator steps, as the other losses"),
    )),
    Preset("toy-wgan-gp", "toy", "WGAN-GP", (
        ("loss.name", "wgan-gp", "gradient penalty at per-sample mixes of real and fake"),
        ("loss.gp_lambda", 0.1, "the WGAN-GP paper's toy value: the ring's scale is far from images'"),
        ("loss.n_critic", 5, "the WGAN-GP paper's 5 critic steps per generator step"),
        ("optim.beta1", 0.5, "WGAN-GP toy code"),
        ("optim.beta2", 0.9, "WGAN-GP toy code"),
        ("train.max_steps", 20000, "4000 generator steps, as the other losses; ~70 s on 2 CPU cores"),
    )),
    Preset("toy-hinge", "toy", "hinge loss, plain critic", (
        ("loss.name", "hinge", "the SN-GAN/BigGAN loss; with model.spectral_norm=true this MLP stalled at 0/8 modes "
         "(measured), so the critic is left unnormalised like BCE's"),
    )),
)}


def mixture(name: str) -> tuple:
    """(centres (K, 2) float64, sigma) of a named mixture."""
    if name == "ring8":
        angles = np.arange(8) * (2 * np.pi / 8)
        return np.stack([2 * np.cos(angles), 2 * np.sin(angles)], 1), 0.02
    if name == "grid25":
        ticks = np.arange(-4.0, 4.1, 2.0)
        return np.stack(np.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(-1, 2), 0.05
    raise UserError(f"unknown mixture {name!r}; choose one of {', '.join(MIXTURES)}")


def sample_mixture(name: str, n: int, seed: int) -> np.ndarray:
    """(n, 2) float32 points: an equally weighted mixture, drawn from a seeded generator."""
    centres, sigma = mixture(name)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(centres), n)
    return (centres[which] + sigma * rng.standard_normal((n, 2))).astype(np.float32)


@dataclass(frozen=True)
class Coverage:
    modes: int  # modes covered
    total: int  # modes in the mixture
    hq: float  # share of samples within HQ_SIGMAS sigma of some mode
    counts: np.ndarray  # (K,) high-quality samples at each mode


def coverage(points: np.ndarray, centres: np.ndarray, sigma: float) -> Coverage:
    """Mode coverage of ``points`` (N, 2): each sample goes to its nearest mode if within 3 sigma of it;
    a mode is covered when it holds at least 1% of the N samples."""
    points = np.asarray(points, dtype=np.float64)
    d = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=2)  # (N, K)
    nearest = d.argmin(1)
    hq = d[np.arange(len(points)), nearest] <= HQ_SIGMAS * sigma
    counts = np.bincount(nearest[hq], minlength=len(centres))
    return Coverage(int((counts >= MIN_SHARE * len(points)).sum()), len(centres), float(hq.mean()), counts)


class Points:
    """A fixed sample of a mixture as a training source (see :class:`kaggle_gan.data.sources.Source`).

    ``batch`` serves rows of the sample in the epoch's order; ``picture``
    draws real and generated points over the critic's contour lines.
    """

    classes = 0
    multi_label = False

    def __init__(self, name: str, n: int, seed: int, device="cpu"):
        import torch

        self.name = name
        self.centres, self.sigma = mixture(name)
        points = sample_mixture(name, n, seed)
        self.sha256 = hashlib.sha256(points.tobytes()).hexdigest()
        self.device = torch.device(device)
        self.points = torch.from_numpy(points).to(self.device)

    def __len__(self) -> int:
        return len(self.points)

    def batch(self, index, generator, keep: slice = slice(None)) -> Batch:
        """Rows ``index[keep]`` (B, 2); no randomness of its own."""
        return Batch(self.points.index_select(0, index[keep].to(self.device)))

    def fixed_inputs(self, z_dim: int, seed: int) -> Batch:
        return Batch(fixed_noise(PICTURE_POINTS, z_dim, seed))

    def extent(self) -> float:
        return float(np.abs(self.centres).max()) + 1.0

    def picture(self, fake, critic, path: Path) -> None:
        """Real points (grey), generated points (red) and the critic's value as contour lines."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import torch

        lim = self.extent()
        ticks = torch.linspace(-lim, lim, 101)
        grid = torch.stack(torch.meshgrid(ticks, ticks, indexing="xy"), -1).reshape(-1, 2)
        with torch.no_grad():
            value = critic(grid.to(self.device)).float().reshape(101, 101).cpu().numpy()
        real = self.points[:PICTURE_POINTS].cpu().numpy()
        fake = fake.detach().float().cpu().numpy()
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.contour(ticks.numpy(), ticks.numpy(), value, levels=12, cmap="viridis", linewidths=0.7)
        ax.scatter(real[:, 0], real[:, 1], s=2, c="0.5", label="real")
        ax.scatter(fake[:, 0], fake[:, 1], s=2, c="tab:red", label="generated")
        cov = coverage(fake, self.centres, self.sigma)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[],
               title=f"{path.parent.parent.name} {path.stem}: {cov.modes}/{cov.total} modes, HQ {cov.hq:.0%}")
        ax.title.set_fontsize(8)
        save_figure(fig, path, dpi=80)


def toy_config(loss: str, overrides: Optional[Dict[str, str]] = None) -> Config:
    """The toy preset of ``loss``, then ``overrides``."""
    if loss not in LOSSES:
        raise UserError(f"unknown toy loss {loss!r}; choose from {', '.join(LOSSES)}")
    return resolve(f"toy-{loss}", overrides, table=TOY_PRESETS)


def train_toy(name: str, loss: str, run_dir: Path, overrides: Optional[Dict[str, str]] = None,
              checkpoints: int = CHECKPOINTS, device: str = "cpu", progress: bool = True) -> dict:
    """Train one loss on one mixture with the project's loop; its EMA generator's coverage and seconds."""
    import torch

    from ..training.loop import Trainer

    cfg = toy_config(loss, overrides)
    t = cfg.train
    # the sample is one checkpoint's worth of batches: every epoch ends in a checkpoint and a picture
    data = Points(name, max(1, t.max_steps // checkpoints) * t.batch_size, t.seed, "cpu")
    start = time.perf_counter()
    with RunLock(run_dir):
        trainer = Trainer(cfg, data, run_dir, device=device, progress=progress)
        resumed_at = trainer.step
        trainer.run()
    seconds = time.perf_counter() - start
    G = trainer.gan.sampler().eval()
    with torch.no_grad():
        fake = G(fixed_noise(EVAL_SAMPLES, cfg.model.z_dim, t.seed + 2).to(trainer.device)).cpu().numpy()
    cov = coverage(fake, data.centres, data.sigma)
    return {"mixture": name, "loss": loss, "modes": cov.modes, "of": cov.total, "hq": round(cov.hq, 4),
            "steps": trainer.step, "g_steps": trainer.step // cfg.loss.n_critic,
            "seconds": round(seconds, 1), "resumed_at": resumed_at}


def tile(pictures: List[List[Path]], out: Path) -> Path:
    """Paste rows of equally sized PNGs into one picture (rows: losses, columns: checkpoints)."""
    from PIL import Image

    opened = [[Image.open(p) for p in row] for row in pictures if row]
    w, h = opened[0][0].size
    sheet = Image.new("RGB", (w * max(len(r) for r in opened), h * len(opened)), "white")
    for i, row in enumerate(opened):
        for j, img in enumerate(row):
            sheet.paste(img.convert("RGB"), (j * w, i * h))
    with atomic_path(out, suffix=".png") as tmp:
        sheet.save(tmp)
    return out


def toy(out: Union[str, Path], mixtures: Sequence[str] = ("ring8",), losses: Sequence[str] = LOSSES,
        overrides: Optional[Dict[str, str]] = None, checkpoints: int = CHECKPOINTS, device: str = "cpu",
        progress: bool = True) -> "pd.DataFrame":  # noqa: F821
    """Train every loss on every mixture; write pictures, ``summary.png`` and ``coverage.csv``; print the table."""
    import pandas as pd

    out = Path(out)
    rows = []
    for name in mixtures:
        mixture(name)  # an unknown name fails before any training
        for loss in losses:
            toy_config(loss, overrides)
        for loss in losses:
            rows.append(train_toy(name, loss, out / name / loss, overrides, checkpoints, device, progress))
        table = pd.DataFrame([r for r in rows if r["mixture"] == name])
        with atomic_path(out / name / "coverage.csv") as tmp:
            table.to_csv(tmp, index=False)
        tile([sorted((out / name / loss / "samples").glob("step_*.png")) for loss in losses],
             out / name / "summary.png")
    table = pd.DataFrame(rows)
    shown = table.assign(modes=table.modes.astype(str) + "/" + table.of.astype(str),
                         hq=(table.hq * 100).round(1).astype(str) + "%")
    print(shown[["mixture", "loss", "modes", "hq", "steps", "g_steps", "seconds"]].to_string(index=False))
    print(f"toy: pictures, summary.png and coverage.csv under {out}")
    return table


def describe() -> str:
    return describe_presets(TOY_PRESETS)
