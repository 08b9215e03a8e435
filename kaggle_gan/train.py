"""The one training loop, for every preset, the 2-D toy and the class-conditional GAN.

Presets differ by configuration and by the loss object
(:mod:`kaggle_gan.losses`); the loop only schedules critic and generator
steps, keeps the EMA generator, logs, samples and checkpoints.

What it trains on is a *source*: the prepared images
(:class:`kaggle_gan.data.DeviceImages`, with labels for a conditional run)
or the toy's 2-D points (:class:`kaggle_gan.toy.Points`). A source serves
batches ``(x, y)`` (``y`` None when unlabelled) for positions of the
epoch's order, and draws the run's pictures. For labelled data the fake
batch takes the real batch's labels, and the losses receive the critic
bound to them (:class:`kaggle_gan.models.Bound`), so no loss knows about labels.

Run folder layout::

    RUN/config.json          resolved configuration (also inside every checkpoint)
    RUN/checkpoints/         last.pt, previous.pt, epoch_0001.pt, ...
    RUN/log.csv, RUN/loss.png
    RUN/samples/step_*.png   fixed-noise grids from the EMA generator
    RUN/generator.pt         EMA generator + config, written when training finishes
"""
from __future__ import annotations

import contextlib
import copy
import csv
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from . import __version__
from . import distributed
from .checkpoint import candidates, check_compatible, load_latest, save_checkpoint, save_generator
from .augment import AugmentedCritic
from .config import Config, validate
from .data import Batch, DeviceImages, Source, load_prepared, resize_images
from .io import RunLock, UserError, atomic_path, write_json
from .losses import StepContext, build_loss
from .models import bind, build_models
from .runtime import resolve_device

STANDING_BATCHES = 16  # batches of noise that measure the EMA generator's batch-norm statistics
STANDING_SEED = 7
LOG_FIELDS = ["step", "epoch", "kimg", "seconds", "img_per_s", "d_loss", "g_loss"]


class EMA:
    """An exponential moving average of the generator's weights (``torch.optim.swa_utils.AveragedModel``).

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first
    updates, so short runs are not dominated by the random initialisation.
    Batch-norm statistics are not averaged: averaged weights need statistics
    of their own, which :meth:`calibrated` measures on fresh noise before the
    copy is used ("standing statistics", BigGAN; SWA's ``update_bn``). The
    average of the live generator's running statistics drew darker, flatter
    images: the same baseline checkpoint scored proxy FID 4.8 with it and 1.5
    with measured statistics in the race (README).
    """

    def __init__(self, G: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.model = AveragedModel(G, multi_avg_fn=self._average, use_buffers=False)
        self.model.eval()
        self._calibrated_at = -1  # self.updates when the statistics were last measured

    @torch.no_grad()
    def _average(self, averaged: List[torch.Tensor], current: List[torch.Tensor], _n) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for a, c in zip(averaged, current):
            a.lerp_(c, 1 - d)

    def update(self, G: nn.Module) -> None:
        self.model.update_parameters(G)
        self.updates += 1

    def load(self, state: Dict[str, torch.Tensor], updates: int) -> None:
        self.model.load_state_dict(state)
        self.updates = updates
        self._calibrated_at = -1  # measure again: checkpoints of older versions hold averaged statistics

    @torch.no_grad()
    def calibrated(self, z_dim: int, classes: int, batch_size: int, device: torch.device) -> nn.Module:
        """The averaged generator, in eval mode, with batch-norm statistics measured for its weights.

        Each batch norm's running mean and variance become the plain average
        over ``STANDING_BATCHES`` training-sized batches of noise (and uniform
        labels for a conditional generator) drawn from a fixed seed, so the
        result depends on the weights alone: not on when it is called, and
        without touching the training's random streams.
        """
        G = self.model.module
        norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms and self._calibrated_at != self.updates:
            momenta = [m.momentum for m in norms]
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches below
            G.train()
            noise = torch.Generator().manual_seed(STANDING_SEED)
            for _ in range(STANDING_BATCHES):
                z = torch.randn(batch_size, z_dim, generator=noise).to(device)
                y = torch.randint(classes, (batch_size,), generator=noise).to(device) if classes else None
                bind(G, y)(z)
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            self._calibrated_at = self.updates
        return G.eval()


@dataclass
class Precision:
    dtype: Optional[torch.dtype]

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.dtype)


def choose_precision(amp: str, device: torch.device) -> Precision:
    """bf16 on GPUs with bf16 tensor cores (compute capability 8.0+: A100, H100, RTX 30xx+), fp16 with
    gradient scaling on older ones (T4, P100, V100, where bf16 is emulated and slow); fp32 on CPU."""
    if device.type != "cuda" or amp == "off":
        return Precision(None)
    if amp == "auto":
        return Precision(torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16)
    return Precision({"bf16": torch.bfloat16, "fp16": torch.float16}[amp])


def make_optimizer(params, cfg: Config, lr: float, device: torch.device) -> torch.optim.Optimizer:
    o = cfg.optim
    # fused kernels on CUDA, multi-tensor (foreach) on CPU; the plain per-tensor loop when fast=False
    kw = {"fused": True} if (cfg.train.fast and device.type == "cuda") else {"foreach": cfg.train.fast}
    if o.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(o.beta1, o.beta2), **kw)
    kw.pop("fused", None)
    return torch.optim.RMSprop(params, lr=lr, foreach=cfg.train.fast)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch, a function of (seed, epoch) alone: resuming re-derives it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class Trainer:
    """Holds the state of one run; :meth:`run` trains it to the configured length.

    ``data`` is a prepared data folder (images, and labels when ``model.classes`` > 0)
    or a ready source object such as :class:`kaggle_gan.toy.Points`.
    """

    def __init__(self, cfg: Config, data: Union[str, Path, Source], run_dir: Path, device: str = "auto",
                 resume: bool = True, progress: bool = True, preset: str = ""):
        validate(cfg)
        self.cfg, self.run_dir, self.progress, self.preset = cfg, Path(run_dir), progress, preset
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.world = distributed.current()  # several ranks under torchrun; only rank 0 writes
        self.device = distributed.local_device(resolve_device(device), self.world)
        t = cfg.train
        distributed.check_batch(t.batch_size, self.world)
        self.channels_last = t.fast and self.device.type == "cuda"
        self.data = self._open_images(Path(data)) if isinstance(data, (str, Path)) else data
        if self.data.classes != cfg.model.classes:
            raise UserError(f"the data has {self.data.classes or 'no'} classes but model.classes={cfg.model.classes}; "
                            f"set model.classes={self.data.classes}")
        self.data_sha256 = self.data.sha256
        if len(self.data) < t.batch_size:
            raise UserError(f"only {len(self.data)} examples for train.batch_size={t.batch_size}; lower the batch size")
        self.steps_per_epoch = len(self.data) // t.batch_size
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch

        torch.manual_seed(t.seed)
        self.G, self.D = build_models(cfg.model, aux_classifier=cfg.loss.aux_weight > 0)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.G.to(self.device, memory_format=memory_format)
        self.D.to(self.device, memory_format=memory_format)
        self.ema = EMA(self.G, t.ema_decay) if t.ema_decay > 0 else None
        self.loss = build_loss(cfg.loss)
        self.opt_G = make_optimizer(self.G.parameters(), cfg, cfg.optim.lr_g, self.device)
        self.opt_D = make_optimizer(self.D.parameters(), cfg, cfg.optim.lr_d, self.device)
        self.precision = choose_precision(t.amp, self.device)
        self.scaled = self.precision.dtype == torch.float16
        self.scaler_G = torch.amp.GradScaler("cuda", enabled=self.scaled)
        self.scaler_D = torch.amp.GradScaler("cuda", enabled=self.scaled)
        self.gen = torch.Generator(self.device).manual_seed(t.seed)
        self.ctx = StepContext(self.gen, self.precision.autocast, self.scaled, self.world.rank, self.world.size)
        self.step, self.elapsed = 0, 0.0
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        # DDP wrappers under torchrun, compiled twins when train.compile is on; self.G/self.D stay plain
        self.G_step = distributed.wrap(self.G, self.device, self.world)
        self.D_step = distributed.wrap(self.D, self.device, self.world)
        if t.augment:  # the losses see D(augment(x)) for real, fake and penalty points alike (DiffAugment)
            self.D_step = AugmentedCritic(self.D_step, t.augment, self.gen)
        self._eager: Optional[tuple] = None  # the eager pair while the first compiled step is pending
        if t.compile:
            self._compile()
        if resume:
            self._resume()
        elif candidates(self.ckpt_dir):
            raise UserError(f"{self.ckpt_dir} already holds checkpoints; resume it, or use another RUN name")

    def _open_images(self, data_dir: Path) -> DeviceImages:
        """The prepared images (resized once to ``model.resolution`` if need be) on the training device."""
        cfg = self.cfg
        prepared = load_prepared(data_dir)
        images, labels, sha = prepared.images, None, prepared.meta["images_sha256"]
        if cfg.model.classes:
            if prepared.labels is None:
                raise UserError(f"{data_dir} holds no labels for model.classes={cfg.model.classes}; prepare it with "
                                "--labels folders (class_name/*.jpg) or --labels FILE.csv")
            labels, sha = prepared.labels, f"{sha}+{prepared.meta['labels_sha256']}"
        if images.shape[1] != cfg.model.resolution:
            print(f"train: prepared images are {images.shape[1]}px, resizing once to model.resolution={cfg.model.resolution}")
            images = resize_images(images, cfg.model.resolution)
        return DeviceImages(images, self._data_device(images), self.channels_last, labels=labels,
                            classes=len(prepared.classes) if labels is not None else 0, flip=cfg.train.flip,
                            sha256=sha)

    def _data_device(self, images: np.ndarray) -> torch.device:
        """Keep the uint8 data on the GPU when it takes under a quarter of its memory."""
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            if images.nbytes < free / 4:
                return self.device
            print("train: data kept in host memory (too large for a quarter of the free GPU memory)")
            return torch.device("cpu")
        return self.device

    def _compile(self) -> None:
        """Wrap G, and D where it can be, in ``torch.compile``.

        D stays eager in two cases. A gradient penalty (WGAN-GP, R1)
        differentiates through D's gradient, which compiled graphs do not
        support. Spectral norm updates its power-iteration vectors in place at
        every forward pass, and the critic's loss runs D twice (real, fake)
        before one backward: inductor's backward then fails ("modified by an
        inplace operation"; torch 2.11 on an H100 and 2.14 on CPU). Keeping
        that D eager and compiling G gave boss 856 img/s against 797 fully
        eager on an H100 (README).

        Compilation really happens at the first call, so wrapping alone proves
        nothing: the first step runs under :meth:`_first_compiled_step`, which
        falls back to eager mode if it fails. ``KAGGLE_GAN_COMPILE_BACKEND``
        picks another dynamo backend (default ``inductor``).
        """
        backend = os.environ.get("KAGGLE_GAN_COMPILE_BACKEND", "inductor")
        G_step, D_step = self.G_step, self.D_step
        eager_d = ("gradient penalty" if self.loss.double_backward
                   else "spectral norm" if self.cfg.model.spectral_norm else "")
        try:
            self.G_step = torch.compile(G_step, backend=backend)
            self.D_step = D_step if eager_d else torch.compile(D_step, backend=backend)
            self._eager = (G_step, D_step)
            if eager_d and self.world.is_main:
                print(f"train: torch.compile on the generator; the critic runs eagerly ({eager_d})")
        except Exception as err:  # an unknown backend, or no dynamo on this platform
            print(f"train: torch.compile unavailable ({type(err).__name__}: {err}); running eagerly")
            self.G_step, self.D_step = G_step, D_step

    def _first_compiled_step(self, batch: Batch) -> Dict[str, torch.Tensor]:
        """The first compiled step; if compiling or running it fails, undo what it did and go eager.

        The step may fail half-way (after the critic's update, in the
        generator's first compiled backward), so weights, optimisers, scalers,
        EMA and random states are restored from a copy taken before it, and the
        eager step then draws the same noise: the run is the one eager mode gives.
        """
        eager, self._eager = self._eager, None
        before = copy.deepcopy(self.state())
        try:
            return self._train_step(batch)
        except Exception as err:
            print(f"train: torch.compile failed at the first step ({type(err).__name__}: "
                  f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); running eagerly")
            self._load_state(before)
            self.opt_G.zero_grad(set_to_none=True)
            self.opt_D.zero_grad(set_to_none=True)
            self.G_step, self.D_step = eager
            return self._train_step(batch)

    # --- state ---------------------------------------------------------------------

    def state(self) -> Dict:
        rng = {"torch": torch.get_rng_state(), "loop": self.gen.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.ema:
            self.sampler()  # the saved copy carries batch-norm statistics measured for its weights
        return {
            "config": self.cfg.to_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "elapsed": self.elapsed,
            "data_sha256": self.data_sha256,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.ema.model.state_dict() if self.ema else None,
            "ema_updates": self.ema.updates if self.ema else 0,
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "scaler_G": self.scaler_G.state_dict(),
            "scaler_D": self.scaler_D.state_dict(),
            "rng": rng,
        }

    def _resume(self) -> None:
        state = load_latest(self.ckpt_dir, map_location=str(self.device))
        if state is None:
            if candidates(self.ckpt_dir):  # starting afresh would write over the only copies the user has
                raise UserError(f"every checkpoint in {self.ckpt_dir} is damaged (see the warnings above); "
                                "move that folder aside to start this run afresh, or train under another RUN name")
            return
        check_compatible(state["config"], self.cfg.to_dict(), state["path"])
        if state["data_sha256"] != self.data_sha256:
            raise UserError(
                f"{state['path']} was trained on other prepared data; use another RUN name for the new data"
            )
        self._load_state(state)
        print(f"train: resumed from {state['path']} at step {self.step}/{self.total_steps}")

    def _load_state(self, state: Dict) -> None:
        """Put the run back to ``state`` (as :meth:`state` returns it): weights, optimisers, RNGs, step."""
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.ema:
            self.ema.load(state["G_ema"], state["ema_updates"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.scaler_G.load_state_dict(state["scaler_G"])
        self.scaler_D.load_state_dict(state["scaler_D"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.gen.set_state(state["rng"]["loop"].cpu())  # a CUDA generator's state is a CPU ByteTensor too
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        self.step, self.elapsed = state["step"], state["elapsed"]

    def save(self, epoch_copy: Optional[int] = None) -> None:
        if self.world.is_main:
            save_checkpoint(self.state(), self.ckpt_dir, epoch_copy)

    # --- the loop ------------------------------------------------------------------

    def _batch(self, order: torch.Tensor, position: int) -> Batch:
        B = self.cfg.train.batch_size
        index = order[position * B : (position + 1) * B]
        # every rank draws for the global batch (keeping RNG states equal) and keeps its slice
        return self.data.batch(index, self.gen, self.world.share(B))

    def _noise(self) -> torch.Tensor:
        z = torch.randn(self.cfg.train.batch_size, self.cfg.model.z_dim, device=self.device, generator=self.gen)
        return z[self.world.share(len(z))]

    def train_step(self, batch: Union[Batch, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """One critic step, and a generator step every ``loss.n_critic`` critic steps.

        ``batch`` is the source's :class:`~kaggle_gan.data.Batch`: real examples
        (images (B, 3, R, R) in [-1, 1], or points (B, 2)) and their labels (B,)
        or None; a bare tensor is an unlabelled batch. Returns detached 0-d
        losses and statistics, still on the device (reading them back is the caller's choice).
        """
        if isinstance(batch, torch.Tensor):
            batch = Batch(batch)
        if self._eager is not None:
            return self._first_compiled_step(batch)
        return self._train_step(batch)

    def _train_step(self, batch: Batch) -> Dict[str, torch.Tensor]:
        real, labels = batch
        # labelled data: fakes are asked for the real batch's classes, and the critic is judged on them
        G, D, loss = bind(self.G_step, labels), bind(self.D_step, labels), self.loss
        with torch.no_grad(), self.precision.autocast():
            fake = G(self._noise())
        d_loss, stats = loss.critic_loss(D, real, fake, self.ctx)
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler_D.scale(d_loss).backward()
        self.scaler_D.step(self.opt_D)
        self.scaler_D.update()
        loss.after_critic_step(self.D)
        stats["d_loss"] = d_loss.detach()
        if (self.step + 1) % self.cfg.loss.n_critic == 0:
            # D's weight gradients from the generator's loss are never used (zeroed before the next critic
            # step): freezing D skips computing them. Not under DDP, whose reducer expects every gradient.
            freeze = self.cfg.train.fast and not self.world.distributed
            with self.precision.autocast():
                fake = G(self._noise())
            if freeze:
                self.D.requires_grad_(False)
            try:
                g_loss = loss.generator_loss(D, fake, self.ctx)
                self.opt_G.zero_grad(set_to_none=True)
                self.scaler_G.scale(g_loss).backward()
            finally:
                if freeze:
                    self.D.requires_grad_(True)
            self.scaler_G.step(self.opt_G)
            self.scaler_G.update()
            if self.ema:
                self.ema.update(self.G)
            stats["g_loss"] = g_loss.detach()
        return stats

    def sampler(self) -> nn.Module:
        """The generator used for pictures and generation: the EMA copy when there is one."""
        if self.ema is None:
            return self.G
        m = self.cfg.model
        return self.ema.calibrated(m.z_dim, m.classes, self.cfg.train.batch_size, self.device)

    def run(self) -> Path:
        """Train to ``total_steps`` (resuming wherever the run stopped); returns ``generator.pt``."""
        from tqdm.auto import tqdm

        t = self.cfg.train
        main = self.world.is_main  # under torchrun only rank 0 locks, logs and writes
        with StopRequests(enabled=not self.world.distributed) as stop:
            if main:
                named = {"preset": self.preset} if self.preset else {}
                write_json(self.run_dir / "config.json", {"version": __version__, **named, **self.cfg.to_dict()})
            log = RunLog(self.run_dir / "log.csv", self.step) if main else None
            if self.step >= self.total_steps:
                print(f"train: {self.run_dir} already trained to step {self.step}")
                return self._finish(log)
            bar = tqdm(total=self.total_steps, initial=self.step, unit="step", desc=f"train {self.run_dir.name}",
                       disable=not (self.progress and main))
            sums: Dict[str, torch.Tensor] = {}
            counts: Dict[str, Union[int, torch.Tensor]] = {}  # a tensor under fp16 (finite values only)
            window_start, window_step = time.perf_counter(), self.step
            last_ckpt = time.monotonic()
            order, order_epoch = None, -1
            self.G.train()
            self.D.train()
            try:  # the bar ends its line even when the loop stops on an error, so the error gets its own
                while self.step < self.total_steps:
                    epoch, position = divmod(self.step, self.steps_per_epoch)
                    if epoch != order_epoch:
                        order, order_epoch = epoch_order(t.seed, epoch, len(self.data)).to(self.data.device), epoch
                    stats = self.train_step(self._batch(order, position))
                    for k, v in stats.items():
                        if self.scaled:
                            # Under fp16 the gradient scaler skips the steps whose gradients overflowed (and lowers
                            # its scale); their losses are inf/NaN by design and are left out of the log's means.
                            # A window with no finite value left is divergence all the same (caught below).
                            kept = torch.isfinite(v)
                            v = torch.where(kept, v, torch.zeros_like(v))
                            counts[k] = counts[k] + kept if k in counts else kept.to(torch.int64)
                        else:  # every value counts: a NaN reaches the mean and stops the run
                            counts[k] = counts.get(k, 0) + 1
                        sums[k] = sums[k] + v if k in sums else v.clone()
                    if not (t.fast or self.scaled):  # the sample code's habit: read every loss back at once
                        _check_finite({k: v.item() for k, v in stats.items()}, self.step)
                    self.step += 1
                    bar.update(1)
                    end_of_epoch = self.step % self.steps_per_epoch == 0
                    if self.step % t.log_every == 0 or end_of_epoch or self.step == self.total_steps:
                        means = {k: v.item() for k, v in distributed.mean_over_ranks(
                            {k: sums[k] / counts[k] for k in sums}, self.world).items()}
                        _check_finite(means, self.step)
                        now = time.perf_counter()
                        self.elapsed += now - window_start
                        rate = (self.step - window_step) * t.batch_size / max(now - window_start, 1e-9)
                        if log:
                            log.write(self.step, self.step / self.steps_per_epoch, self.step * t.batch_size / 1000,
                                      self.elapsed, rate, means)
                        bar.set_postfix({k: f"{v:.3f}" for k, v in means.items()} | {"img/s": f"{rate:.0f}"})
                        sums, counts = {}, {}
                        window_start, window_step = time.perf_counter(), self.step
                    if (t.sample_every and self.step % t.sample_every == 0) or end_of_epoch:
                        self.sample_grid()
                    if end_of_epoch:
                        self.save(epoch_copy=self.step // self.steps_per_epoch if t.keep_epochs else None)
                        if main:
                            plot_losses(self.run_dir / "log.csv", self.run_dir / "loss.png")
                        last_ckpt = time.monotonic()
                    elif time.monotonic() - last_ckpt > t.ckpt_minutes * 60 or self.step == self.total_steps:
                        self.save()
                        last_ckpt = time.monotonic()
                    if stop.signal is not None and self.step < self.total_steps:
                        if log:
                            log.close()
                        self.elapsed += time.perf_counter() - window_start
                        self.save()
                        raise Interrupted(f"train: stopped by {stop.name} at step {self.step}/{self.total_steps}; "
                                          f"checkpoint saved in {self.ckpt_dir / 'last.pt'}. "
                                          "Run the same command again to resume", stop.signal)
            finally:
                bar.close()
            return self._finish(log)

    def _finish(self, log: Optional["RunLog"]) -> Path:
        out = self.run_dir / "generator.pt"
        if self.world.is_main:
            log.close()
            self.sample_grid(name="final")
            plot_losses(self.run_dir / "log.csv", self.run_dir / "loss.png")
            save_generator(self.sampler().state_dict(), self.cfg.to_dict(), self.step, out)
            print(f"train: finished {self.step} steps; generator at {out}")
        distributed.barrier(self.world)  # the other ranks return once generator.pt exists
        return out

    @torch.no_grad()
    def sample_grid(self, name: Optional[str] = None) -> Path:
        """The source's picture of the EMA generator's output from the same fixed inputs at every call,
        so pictures compare over time (image grids; for the toy, points and critic contours)."""
        path = self.run_dir / "samples" / f"{name or f'step_{self.step:07d}'}.png"
        if not self.world.is_main:
            return path
        G = self.sampler()
        was_training, critic_training = G.training, self.D.training
        G.eval()
        self.D.eval()
        z, labels = self.data.fixed_inputs(self.cfg.model.z_dim, self.cfg.train.seed + 1)
        fake = bind(G, None if labels is None else labels.to(self.device))(z.to(self.device))
        self.data.picture(fake, self.D, path)
        G.train(was_training)
        self.D.train(critic_training)
        return path


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


def _check_finite(values: Dict[str, float], step: int) -> None:
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


class RunLog:
    """``log.csv``, truncated to the resumed step so a resumed run's curve has no duplicates."""

    def __init__(self, path: Path, step: int):
        self.path = path
        rows = []
        if path.is_file():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if _step_of_row(r) <= step]
        self.fields = list(LOG_FIELDS)
        for r in rows:
            self.fields += [k for k in r if k not in self.fields]
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, self.fields)
                w.writeheader()
                w.writerows(rows)
        self.fh = open(path, "a", newline="")

    def write(self, step, epoch, kimg, seconds, rate, means: Dict[str, float]) -> None:
        row = {"step": step, "epoch": round(epoch, 4), "kimg": round(kimg, 3), "seconds": round(seconds, 2),
               "img_per_s": round(rate, 1), **{k: f"{v:.6g}" for k, v in means.items()}}
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
    extras = [c for c in df.columns if c not in LOG_FIELDS]
    fig, axes = plt.subplots(1, 2 if extras else 1, figsize=(11 if extras else 6, 4), squeeze=False)
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
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out_png


def train(cfg: Config, data: Union[str, Path, Source], run_dir: Path, device: str = "auto", resume: bool = True,
          progress: bool = True, preset: str = "") -> Path:
    """Train (or resume) the run in ``run_dir`` on prepared data (or a source); returns the path of ``generator.pt``.

    The run folder is locked first, so a second ``train`` of the same run is refused before it reads
    anything. ``preset`` names the recipe in ``config.json`` (the leaderboard shows it). Under
    ``torchrun`` each process joins the group, trains its share of every batch, and only rank 0 writes.
    """
    with distributed.process_group(device):
        with RunLock(run_dir) if distributed.current().is_main else contextlib.nullcontext():
            return Trainer(cfg, data, run_dir, device, resume, progress, preset).run()
