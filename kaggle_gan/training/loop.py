"""The one training loop, for every preset, the 2-D toy and the class-conditional GAN.

Presets differ by configuration and by the loss object
(:mod:`kaggle_gan.training.losses`); the loop only schedules critic and generator
steps, keeps the EMA generator, logs, samples and checkpoints.

What it trains on is a *source*: the prepared images
(:class:`kaggle_gan.data.sources.DeviceImages`, with labels for a conditional run)
or the toy's 2-D points (:class:`kaggle_gan.experiments.toy.Points`). A source serves
batches ``(x, y)`` (``y`` None when unlabelled) for positions of the
epoch's order, and draws the run's pictures. For labelled data the fake
batch takes the real batch's labels, and the losses receive the critic
bound to them (:class:`kaggle_gan.nets.conditional.Bound`), so no loss knows about labels.

Run folder layout::

    RUN/config.json          resolved configuration (also inside every checkpoint)
    RUN/checkpoints/         last.pt, previous.pt, epoch_0001.pt, ...
    RUN/log.csv, RUN/loss.png
    RUN/samples/step_*.png   fixed-noise grids from the EMA generator
    RUN/generator.pt         EMA generator + config, written when training finishes
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from ..config import Config, validate
from ..core.io import RunLock, UserError, write_json
from ..core.runtime import random_state, resolve_device, set_random_state
from ..core.version import __version__
from ..data.sources import Batch, Source, open_images
from ..nets.conditional import bind
from ..nets.layers import evaluating
from . import distributed
from .checkpoint import candidates, check_compatible, load_latest, save_checkpoint, save_generator
from .hooks import periodic_hooks
from .runlog import Interrupted, LossWindow, RunLog, StopRequests, check_finite, plot_losses
from .schedule import Plan, Schedules
from .step import GANStep


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch, a function of (seed, epoch) alone: resuming re-derives it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class Trainer:
    """The loop of one run: data order, schedule, resume, logs, pictures and checkpoints.

    What a step computes is :attr:`gan` (:class:`kaggle_gan.training.step.GANStep`);
    the loop decides when each phase runs and runs its hooks
    (:func:`kaggle_gan.training.hooks.periodic_hooks`) after every step. ``data`` is a prepared data folder (images, and labels when
    ``model.classes`` > 0) or a ready source such as
    :class:`kaggle_gan.experiments.toy.Points`.
    """

    def __init__(self, cfg: Config, data: Union[str, Path, Source], run_dir: Path, device: str = "auto",
                 resume: bool = True, progress: bool = True, preset: str = "", evaluation: Optional[Dict] = None):
        validate(cfg)
        self.cfg, self.run_dir, self.progress, self.preset = cfg, Path(run_dir), progress, preset
        self.evaluation = (evaluation, Path(data)) if evaluation is not None and isinstance(data, (str, Path)) else None
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.world = distributed.current()  # several ranks under torchrun; only rank 0 writes
        self.device = distributed.local_device(resolve_device(device), self.world)
        t = cfg.train
        distributed.check_batch(t.batch_size, self.world)
        channels_last = t.fast and self.device.type == "cuda"
        self.data = (open_images(Path(data), cfg, self.device, channels_last) if isinstance(data, (str, Path))
                     else data)
        if self.data.classes != cfg.model.classes:
            raise UserError(f"the data has {self.data.classes or 'no'} classes but model.classes={cfg.model.classes}; "
                            f"set model.classes={self.data.classes}")
        if len(self.data) < t.batch_size:
            raise UserError(f"only {len(self.data)} examples for train.batch_size={t.batch_size}; lower the batch size")
        self.steps_per_epoch = len(self.data) // t.batch_size
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        self.plan = Plan(self.total_steps, t.minutes)  # the schedules' length; train.minutes re-plans it
        self.schedules = Schedules(cfg)
        self.gen = torch.Generator(self.device).manual_seed(t.seed)  # every random draw of the loop and the step
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.gan = GANStep(cfg, self.device, self.world, self.gen, channels_last)
        if self.data.multi_label:
            self.gan.sets = self.data.labels
        self.step, self.elapsed = 0, 0.0
        self.stop_step = self.total_steps  # where this call of run() stops (a race's segment stops earlier)
        self._order: Optional[torch.Tensor] = None
        self._order_epoch = -1
        if resume:
            self._resume()
        elif candidates(self.ckpt_dir):
            raise UserError(f"{self.ckpt_dir} already holds checkpoints; resume it, or use another RUN name")

    # --- state ---------------------------------------------------------------------

    def state(self) -> Dict:
        """Everything a resume needs: the step's state (weights, optimisers, EMA), the loop's, random states."""
        return {
            "config": self.cfg.to_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "elapsed": self.elapsed,
            "planned_steps": self.plan.steps,
            "data_sha256": self.data.sha256,
            **self.gan.state_dict(),
            "rng": random_state(self.gen, self.device),
        }

    def _resume(self) -> None:
        state = load_latest(self.ckpt_dir, map_location=str(self.device))
        if state is None:
            if candidates(self.ckpt_dir):  # starting afresh would write over the only copies the user has
                raise UserError(f"every checkpoint in {self.ckpt_dir} is damaged (see the warnings above); "
                                "move that folder aside to start this run afresh, or train under another RUN name")
            return
        check_compatible(state["config"], self.cfg.to_dict(), state["path"])
        if state["data_sha256"] != self.data.sha256:
            raise UserError(
                f"{state['path']} was trained on other prepared data; use another RUN name for the new data"
            )
        self.gan.load_state_dict(state)
        set_random_state(state["rng"], self.gen, self.device)
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.plan = Plan(self.total_steps, self.cfg.train.minutes, state.get("planned_steps", 0))
        if self.plan.out_of_time(self.elapsed):  # the time budget was spent: the run is finished
            self.total_steps = self.step
        print(f"train: resumed from {state['path']} at step {self.step}/{self.plan.steps}")

    def save(self, epoch_copy: Optional[int] = None) -> None:
        if self.world.is_main:
            save_checkpoint(self.state(), self.ckpt_dir, epoch_copy)

    # --- the loop ------------------------------------------------------------------

    def _batch(self, order: torch.Tensor, position: int) -> Batch:
        B = self.cfg.train.batch_size  # every rank draws for the global batch (equal RNG states), keeps its slice
        return self.data.batch(order[position * B : (position + 1) * B], self.gen, self.world.share(B))

    def _next_batch(self) -> Batch:
        epoch, position = divmod(self.step, self.steps_per_epoch)
        if epoch != self._order_epoch:
            self._order = epoch_order(self.cfg.train.seed, epoch, len(self.data)).to(self.data.device)
            self._order_epoch = epoch
        return self._batch(self._order, position)

    def train_step(self, batch: Union[Batch, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A critic step, and a generator step every ``loss.n_critic``, on a :class:`~kaggle_gan.data.sources.Batch`
        (or a bare tensor: unlabelled). Detached 0-d statistics, still on the device."""
        if isinstance(batch, torch.Tensor):
            batch = Batch(batch)
        return self.gan(batch, generator_turn=(self.step + 1) % self.cfg.loss.n_critic == 0)

    def run(self, until: Optional[int] = None) -> Path:
        """Train to ``total_steps`` (resuming wherever the run stopped), or stop at step ``until`` with the
        schedules still planned for the whole run (a race's segment); returns ``generator.pt``."""
        from tqdm.auto import tqdm

        t = self.cfg.train
        main = self.world.is_main  # under torchrun only rank 0 logs and writes
        with StopRequests(enabled=not self.world.distributed) as stop:
            if main:
                named = {"preset": self.preset} if self.preset else {}
                write_json(self.run_dir / "config.json", {"version": __version__, **named, **self.cfg.to_dict()})
            log = RunLog(self.run_dir / "log.csv", self.step) if main else None
            self.stop_step = min(self.total_steps, until or self.total_steps)
            if self.step >= self.stop_step:
                print(f"train: {self.run_dir} already trained to step {self.step}")
                return self._finish(log)
            bar = tqdm(total=self.total_steps, initial=self.step, unit="step", desc=f"train {self.run_dir.name}",
                       disable=not (self.progress and main))
            window = LossWindow(skip_overflow=self.gan.scaled, step=self.step)
            hooks = periodic_hooks(self, log, window, bar)
            self.gan.G.train()
            self.gan.D.train()
            try:  # the bar ends its line even when the loop stops on an error, so the error gets its own
                while self.step < self.stop_step:
                    self.schedules.apply(self.gan, self.plan.progress(self.step))
                    stats = self.train_step(self._next_batch())
                    window.add(stats)
                    if not (t.fast or self.gan.scaled):  # the sample code's habit: read every loss back at once
                        check_finite({k: v.item() for k, v in stats.items()}, self.step)
                    self.step += 1
                    bar.update(1)
                    if self._out_of_time(window):
                        self.total_steps = self.stop_step = self.step  # the budget is spent: this step is the last
                    end_of_epoch = self.step % self.steps_per_epoch == 0
                    for hook in hooks:
                        if hook.due(end_of_epoch):
                            hook.run(end_of_epoch)
                    if stop.signal is not None and self.step < self.stop_step:
                        if log:
                            log.close()
                        self.save()
                        raise Interrupted(f"train: stopped by {stop.name} at step {self.step}/{self.total_steps}; "
                                          f"checkpoint saved in {self.ckpt_dir / 'last.pt'}. "
                                          "Run the same command again to resume", stop.signal)
            finally:
                bar.close()
            return self._finish(log)

    def _out_of_time(self, window: LossWindow) -> bool:
        """Whether ``train.minutes`` is spent. Under torchrun the ranks decide together, at log rows (where they
        meet anyway), so that all of them stop at the same step."""
        if not self.plan.seconds or (self.world.distributed and self.step % self.cfg.train.log_every):
            return False
        spent = self.plan.out_of_time(self.elapsed + window.running())
        if not self.world.distributed:
            return spent
        vote = distributed.mean_over_ranks({"spent": torch.tensor(float(spent), device=self.device)}, self.world)
        return bool(vote["spent"].item() > 0)

    def _finish(self, log: Optional[RunLog]) -> Path:
        out = self.run_dir / "generator.pt"
        if self.world.is_main:
            log.close()
            self.sample_grid(name="final")
            plot_losses(self.run_dir / "log.csv", self.run_dir / "loss.png")
            save_generator(self.gan.sampler().state_dict(), self.cfg.to_dict(), self.step, out,
                           extra=self.condition_info())
            print(f"train: finished {self.step} steps; generator at {out}")
        distributed.barrier(self.world)  # the other ranks return once generator.pt exists
        return out

    def condition_info(self) -> Dict:
        """What a conditional run's generator files carry for ``generate --condition``: the data's class (or
        object) names, and whether a condition is one class or a set of them."""
        if not self.data.classes:
            return {}
        return {"class_names": list(getattr(self.data, "names", [])),
                "condition": "set" if self.data.multi_label else "class"}

    @torch.no_grad()
    def sample_grid(self, name: Optional[str] = None) -> Path:
        """The source's picture of the EMA generator's output from the same fixed inputs at every call,
        so pictures compare over time (image grids; for the toy, points and critic contours)."""
        path = self.run_dir / "samples" / f"{name or f'step_{self.step:07d}'}.png"
        if not self.world.is_main:
            return path
        z, labels = self.data.fixed_inputs(self.cfg.model.z_dim, self.cfg.train.seed + 1)
        with evaluating(self.gan.sampler(), self.gan.D) as (G, D):
            self.data.picture(bind(G, None if labels is None else labels.to(self.device))(z.to(self.device)), D, path)
        return path


def train(cfg: Config, data: Union[str, Path, Source], run_dir: Path, device: str = "auto", resume: bool = True,
          progress: bool = True, preset: str = "", evaluation: Optional[Dict] = None,
          until: Optional[int] = None) -> Path:
    """Train (or resume) the run in ``run_dir`` on prepared data (or a source); returns the path of ``generator.pt``.

    The run folder is locked first, so a second ``train`` of the same run is refused before it reads
    anything. ``preset`` names the recipe in ``config.json`` (the leaderboard shows it). Under
    ``torchrun`` each process joins the group, trains its share of every batch, and only rank 0 writes.
    ``evaluation`` turns on the evaluation that ``train.eval_every`` asks for, with the options of
    :class:`kaggle_gan.training.evaluate.Evaluator` (detector, inception_weights, cache; ``{}`` for the defaults);
    None (the default for callers of this function; the CLI always passes it) evaluates nothing.
    """
    with distributed.process_group(device):
        with RunLock(run_dir) if distributed.current().is_main else contextlib.nullcontext():
            return Trainer(cfg, data, run_dir, device, resume, progress, preset, evaluation).run(until)
