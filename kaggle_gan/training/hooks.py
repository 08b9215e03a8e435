"""The periodic work of the training loop: after every step, each hook that is due runs, in order."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from . import distributed
from .evaluate import Evaluator
from .events import Events
from .losses import DIAGNOSTICS
from .runlog import LossWindow, RunLog, check_finite, plot_losses


@dataclass
class Hook:
    """Periodic work after a step: ``run(end_of_epoch)`` whenever ``due(end_of_epoch)`` says so."""

    name: str
    due: Callable[[bool], bool]
    run: Callable[[bool], None]


def periodic_hooks(trainer: "Trainer", log: Optional[RunLog], window: LossWindow, bar) -> List[Hook]:  # noqa: F821
    """The periodic work after a step, in order: log row, sample grid, evaluation, checkpoint (every epoch,
    every ``train.ckpt_minutes`` and at the end; the loss plot with the epoch's); each also written as
    TensorBoard events when tensorboard is installed (:mod:`kaggle_gan.training.events`)."""
    t = trainer.cfg.train
    last_checkpoint = [time.monotonic()]
    events = Events(trainer.run_dir, trainer.step, t.tensorboard and trainer.world.is_main)

    def log_row(_end: bool) -> None:
        means, seconds, steps = window.take(trainer.step)
        # the window's seconds averaged too: every rank plans its schedules from the same clock
        means["_seconds"] = torch.tensor(seconds, device=trainer.device)
        means = {k: v.item() for k, v in distributed.mean_over_ranks(means, trainer.world).items()}
        seconds = means.pop("_seconds")
        check_finite(means, trainer.step)
        trainer.elapsed += seconds
        trainer.plan.measured(trainer.step, steps, seconds, trainer.elapsed)
        if t.minutes:
            bar.total = trainer.plan.steps
        rate = steps * t.batch_size / max(seconds, 1e-9)
        if log:
            log.write(trainer.step, trainer.step / trainer.steps_per_epoch, trainer.step * t.batch_size / 1000,
                      trainer.elapsed, rate, means)
        bar.set_postfix({k: f"{v:.3f}" for k, v in means.items() if k not in DIAGNOSTICS} | {"img/s": f"{rate:.0f}"})
        events.log_row(trainer.step, means, rate)

    def evaluate(_end: bool) -> None:
        window.exclude(evaluator.run(trainer.step, trainer.gan, bar, final=final(), seconds=trained()))
        events.evaluation(trainer.step, evaluator.last_row)

    trained = lambda: trainer.elapsed + window.running()  # noqa: E731  seconds of training so far

    evaluator = Evaluator.for_run(trainer)  # may compute reference statistics: not training time
    window.restart(trainer.step)

    def checkpoint(end: bool) -> None:
        trainer.save(epoch_copy=trainer.step // trainer.steps_per_epoch if end and t.keep_epochs else None)
        if end and log:
            plot_losses(trainer.run_dir / "log.csv", trainer.run_dir / "loss.png")
        last_checkpoint[0] = time.monotonic()

    final = lambda: trainer.step >= trainer.stop_step  # noqa: E731  the last step of this call (or of the run)
    return [
        Hook("log", lambda end: trainer.step % t.log_every == 0 or end or final(), log_row),
        Hook("samples", lambda end: bool(t.sample_every and trainer.step % t.sample_every == 0) or end,
             lambda end: events.picture(trainer.step, trainer.sample_grid())),
        Hook("evaluate", lambda end: evaluator is not None and (evaluator.due(trainer.step, trained()) or final()),
             evaluate),
        Hook("checkpoint", lambda end: end or final() or time.monotonic() - last_checkpoint[0] > t.ckpt_minutes * 60,
             checkpoint),
        Hook("events", lambda end: final(), lambda end: events.close()),
    ]
