"""Schedules over the run's planned length: the learning rates, Adam's beta2, R3GAN's gamma, the EMA's half-life.

Each runs from its start value at the first step to its end value at the
last planned step, by a cosine (the R3GAN recipe decays its learning rate
and gamma this way, and raises beta2). The planned length is whatever ends
the run: ``train.epochs``, ``train.max_steps`` or the steps ``train.minutes``
allows at the measured speed (:class:`kaggle_gan.training.loop.Trainer`), so
a shortened run still ends with its schedules annealed instead of stopping
half-way through them. A preset without schedules is left untouched.
"""
from __future__ import annotations

import math
from typing import Dict

from ..config import Config

EMA_RAMP = 0.1  # the EMA's half-life grows from 0 to its full length over this share of the run


def cosine(start: float, end: float, progress: float) -> float:
    """``start`` at progress 0, ``end`` at 1 (and beyond), half-way between at 0.5, flat at both ends."""
    p = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))


class Schedules:
    """The values a step uses at a point of the run, and their application to a :class:`GANStep`."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        o, loss, t = cfg.optim, cfg.loss, cfg.train
        self.lr = o.lr_final != 1.0
        self.beta2 = o.beta2_final > 0 and o.name == "adam"
        self.gamma = loss.gamma_final > 0 and loss.name == "rpgan"
        self.ema = t.ema_halflife_kimg > 0 and t.ema_decay > 0
        self.active = self.lr or self.beta2 or self.gamma or self.ema

    def values(self, progress: float) -> Dict[str, float]:
        """Every scheduled value at ``progress`` (0 = the first step, 1 = the last planned one)."""
        o, loss, t = self.cfg.optim, self.cfg.loss, self.cfg.train
        out = {"lr_g": cosine(o.lr_g, o.lr_g * o.lr_final, progress),
               "lr_d": cosine(o.lr_d, o.lr_d * o.lr_final, progress),
               "beta2": cosine(o.beta2, o.beta2_final, progress) if self.beta2 else o.beta2,
               "gamma": cosine(loss.gamma, loss.gamma_final, progress) if self.gamma else loss.gamma}
        if self.ema:
            # images per generator step over the half-life: the decay that halves an image's weight in it
            halflife = t.ema_halflife_kimg * 1000 * min(1.0, max(progress, 0.0) / EMA_RAMP)
            per_step = t.batch_size * self.cfg.loss.n_critic
            out["ema_decay"] = 0.5 ** (per_step / halflife) if halflife > 0 else 0.0
        return out

    def apply(self, gan, progress: float) -> None:
        """Set ``gan``'s optimisers, loss and EMA to their values at ``progress`` (nothing when unscheduled)."""
        if not self.active:
            return
        v = self.values(progress)
        for opt, lr in ((gan.opt_G, v["lr_g"]), (gan.opt_D, v["lr_d"])):
            for group in opt.param_groups:
                group["lr"] = lr
                if self.beta2:
                    group["betas"] = (group["betas"][0], v["beta2"])
        if self.gamma:
            innermost(gan.loss).gamma = v["gamma"]
        if self.ema and gan.ema is not None:
            gan.ema.decay = v["ema_decay"]


def innermost(loss):
    """The objective inside composed losses (R1, an auxiliary classifier wrap another loss as ``inner``)."""
    while hasattr(loss, "inner"):
        loss = loss.inner
    return loss


class Plan:
    """How many steps the run will take: its cap (``train.epochs`` or ``train.max_steps``), or under
    ``train.minutes`` the steps its time allows at the speed measured so far, re-planned at every log row
    and never beyond the cap. Progress through the schedules is ``step / steps``."""

    def __init__(self, cap: int, minutes: float, planned: int = 0):
        self.cap, self.seconds = cap, minutes * 60
        self.steps = min(planned, cap) if planned else cap
        self._timed_steps, self._timed_seconds = 0, 0.0

    def progress(self, step: int) -> float:
        """0 at the first step (index 0), 1 at the last planned one (index ``steps - 1``)."""
        return step / max(self.steps - 1, 1)

    def measured(self, step: int, steps: int, seconds: float, elapsed: float) -> None:
        """A log row's window: ``steps`` took ``seconds``; ``elapsed`` seconds of training are spent in all."""
        if not self.seconds or steps <= 0 or seconds <= 0:
            return
        self._timed_steps += steps
        self._timed_seconds += seconds
        rate = self._timed_steps / self._timed_seconds  # over this session: a resumed machine may differ
        self.steps = int(min(self.cap, max(step, step + round((self.seconds - elapsed) * rate))))

    def out_of_time(self, elapsed: float) -> bool:
        return self.seconds > 0 and elapsed >= self.seconds
