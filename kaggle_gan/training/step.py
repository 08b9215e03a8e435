"""What one training step computes: the GAN pair, what wraps it, its optimisers, and the two phases.

:class:`GANStep` owns G and D, the wrappers the losses receive, both
optimisers and gradient scalers, the loss object and the EMA copy. It has
two phases, :meth:`GANStep.critic_step` and :meth:`GANStep.generator_step`,
and a ``state_dict``. It knows nothing of epochs, files or logs: the loop in
:mod:`kaggle_gan.training.loop` decides when each phase runs.

What a loss receives as ``D`` is built in this order (the constructor applies
1-3; 4 is applied per batch):

1. DistributedDataParallel, under ``torchrun``;
2. DiffAugment (``train.augment``): the loss sees ``D(augment(x))`` for real,
   fake and penalty points alike;
3. ``torch.compile`` (``train.compile``), the critic only where it can be;
4. label binding (:func:`kaggle_gan.nets.conditional.bind`) for conditional runs.

``self.G`` and ``self.D`` stay the plain modules: state dicts, the EMA copy
and pictures use them.
"""
from __future__ import annotations

import copy
import os
from typing import Dict, Optional

import torch
from torch import nn

from ..config import Config
from ..core.runtime import random_state, set_random_state
from ..data.sources import Batch
from ..nets.conditional import bind
from ..nets.models import build_models, legacy_bias_keys
from . import distributed
from .augment import AugmentedCritic
from .ema import EMA
from .losses import StepContext, build_loss
from .precision import choose_precision, drop_parameters, make_optimizer


class GANStep:
    """G, D and everything a step changes; ``gen`` draws every random number of the step."""

    def __init__(self, cfg: Config, device: torch.device, world: distributed.World, gen: torch.Generator,
                 channels_last: bool = False):
        t = cfg.train
        self.cfg, self.device, self.world, self.gen = cfg, device, world, gen
        torch.manual_seed(t.seed)
        self.G, self.D = build_models(cfg.model, aux_classifier=cfg.loss.aux_weight > 0)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.G.to(device, memory_format=memory_format)
        self.D.to(device, memory_format=memory_format)
        self.ema = EMA(self.G, t.ema_decay) if t.ema_decay > 0 else None
        self.sets: Optional[torch.Tensor] = None  # multi-label data's (N, K) sets: what the EMA calibrates with
        self.loss = build_loss(cfg.loss)
        self.opt_G = make_optimizer(self.G.parameters(), cfg, cfg.optim.lr_g, device)
        self.opt_D = make_optimizer(self.D.parameters(), cfg, cfg.optim.lr_d, device)
        self.precision = choose_precision(t.amp, device)
        self.scaled = self.precision.dtype == torch.float16
        self.scaler_G = torch.amp.GradScaler(device.type, enabled=self.scaled)
        self.scaler_D = torch.amp.GradScaler(device.type, enabled=self.scaled)
        # one critic pass over real and fake where nothing couples the examples of a batch (no batch norm); a
        # conditional critic repeats the batch's conditions for it (the fakes take the real batch's)
        joint = t.joint_critic and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.D.modules())
        self.ctx = StepContext(gen, self.precision.autocast, self.scaled, world.rank, world.size, joint)
        self.G_step = distributed.wrap(self.G, device, world)  # 1.
        self.D_step = distributed.wrap(self.D, device, world)
        if t.augment:  # 2.
            self.D_step = AugmentedCritic(self.D_step, t.augment, gen)
        self._eager: Optional[tuple] = None  # the eager pair while the first compiled step is pending
        if t.compile:  # 3.
            self._compile()

    # --- the two phases --------------------------------------------------------------

    def noise(self) -> torch.Tensor:
        """(B', z_dim) standard normal noise: this rank's slice of a global batch drawn from ``gen``."""
        B = self.cfg.train.batch_size
        z = torch.randn(B, self.cfg.model.z_dim, device=self.device, generator=self.gen)
        return z[self.world.share(B)]

    def critic_step(self, real: torch.Tensor, labels: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """One optimiser step of D on ``real`` (B', ...) and as many fresh fakes; detached statistics."""
        G, D = bind(self.G_step, labels), bind(self.D_step, labels)  # 4.: fakes get the real batch's classes
        with torch.no_grad(), self.precision.autocast():
            fake = G(self.noise())
        d_loss, stats = self.loss.critic_loss(D, real, fake, self.ctx)
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler_D.scale(d_loss).backward()
        self.scaler_D.step(self.opt_D)
        self.scaler_D.update()
        self.loss.after_critic_step(self.D)
        stats["d_loss"] = d_loss.detach()
        return stats

    def generator_step(self, real: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """One optimiser step of G (and an EMA update); the detached generator loss. ``real`` is the step's
        real batch, which a relativistic loss compares the fakes with."""
        G, D = bind(self.G_step, labels), bind(self.D_step, labels)
        # D's weight gradients from the generator's loss are never used (zeroed before the next critic
        # step): freezing D skips computing them. Not under DDP, whose reducer expects every gradient.
        freeze = self.cfg.train.fast and not self.world.distributed
        with self.precision.autocast():
            fake = G(self.noise())
        if freeze:
            self.D.requires_grad_(False)
        try:
            g_loss = self.loss.generator_loss(D, fake, self.ctx, real)
            self.opt_G.zero_grad(set_to_none=True)
            self.scaler_G.scale(g_loss).backward()
        finally:
            if freeze:
                self.D.requires_grad_(True)
        self.scaler_G.step(self.opt_G)
        self.scaler_G.update()
        if self.ema:
            self.ema.update(self.G)
        return g_loss.detach()

    def __call__(self, batch: Batch, generator_turn: bool) -> Dict[str, torch.Tensor]:
        """A critic step on ``batch``, then a generator step if it is the generator's turn."""
        if self._eager is not None:
            return self._first_compiled_step(batch, generator_turn)
        return self._both(batch, generator_turn)

    def _both(self, batch: Batch, generator_turn: bool) -> Dict[str, torch.Tensor]:
        stats = self.critic_step(batch.x, batch.y)
        if generator_turn:
            stats["g_loss"] = self.generator_step(batch.x, batch.y)
        return stats

    def sampler(self) -> nn.Module:
        """The generator used for pictures and generation: the EMA copy when there is one."""
        if self.ema is None:
            return self.G
        m = self.cfg.model
        return self.ema.calibrated(m.z_dim, m.classes, self.cfg.train.batch_size, self.device, self.sets)

    # --- state -------------------------------------------------------------------------

    def state_dict(self) -> Dict:
        """Weights, EMA, optimisers and scalers (the EMA copy with statistics measured for its weights)."""
        if self.ema:
            self.sampler()
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.ema.model.state_dict() if self.ema else None,
            "ema_updates": self.ema.updates if self.ema else 0,
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "scaler_G": self.scaler_G.state_dict(),
            "scaler_D": self.scaler_D.state_dict(),
        }

    def load_state_dict(self, state: Dict) -> None:
        dropped = legacy_bias_keys(self.G, state["G"])
        if dropped:  # a ResNet generator's checkpoint from before its first convolutions lost their bias
            params = {n for n, _ in self.G.named_parameters()}
            names = [k for k in state["G"] if k in params or k in dropped]
            state = {**state, "opt_G": drop_parameters(state["opt_G"], names, dropped)}
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.ema:
            self.ema.load(state["G_ema"], state["ema_updates"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.scaler_G.load_state_dict(state["scaler_G"])
        self.scaler_D.load_state_dict(state["scaler_D"])

    # --- torch.compile ---------------------------------------------------------------

    def _compile(self) -> None:
        """Wrap G, and D where it can be, in ``torch.compile``.

        D stays eager in two cases. A gradient penalty (WGAN-GP, R1)
        differentiates through D's gradient, which compiled graphs do not
        support. Spectral norm updates its power-iteration vectors in place at
        every forward pass, and the critic's loss runs D twice (real, fake)
        before one backward: inductor's backward then fails ("modified by an
        inplace operation"; torch 2.11 on an H100 and 2.14 on CPU). Keeping
        that D eager and compiling G gave boss 856 img/s against 797 fully
        eager on an H100 (README). With real and fake in one critic pass
        (``ctx.joint``) the spectral-norm critic did compile under inductor on
        CPU without falling back, but compiling it took about 100 s more on 2
        cores and its speed on a GPU is not measured: it stays eager for now.

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

    def _first_compiled_step(self, batch: Batch, generator_turn: bool) -> Dict[str, torch.Tensor]:
        """The first compiled step; if compiling or running it fails, undo what it did and go eager.

        The step may fail half-way (after the critic's update, in the
        generator's first compiled backward), so weights, optimisers, scalers,
        EMA and random states are restored from a copy taken before it, and the
        eager step then draws the same noise: the run is the one eager mode gives.
        """
        eager, self._eager = self._eager, None
        before = copy.deepcopy(self.state_dict())
        rng = random_state(self.gen, self.device)
        try:
            return self._both(batch, generator_turn)
        except Exception as err:
            print(f"train: torch.compile failed at the first step ({type(err).__name__}: "
                  f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); running eagerly")
            self.load_state_dict(before)
            set_random_state(rng, self.gen, self.device)
            self.opt_G.zero_grad(set_to_none=True)
            self.opt_D.zero_grad(set_to_none=True)
            self.G_step, self.D_step = eager
            return self._both(batch, generator_turn)
