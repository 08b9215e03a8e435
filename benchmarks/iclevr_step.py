"""The i-CLEVR training step with the conditional critic run once per image against the way it ran before.

Now: real and fake in one critic pass (the conditions repeated), and the
auxiliary head's logits read from that same pass. Before (the reference,
rebuilt here): real and fake in two passes, and the head run again on the
real images in the critic step and on the fakes in the generator step: five
critic forwards per iteration instead of two, each re-augmenting and
re-running spectral norm's power iteration. Both train the ``iclevr`` preset
on the same prepared data; timed windows alternate between them after a
warm-up, and the medians and their ratio are printed.

    .venv/bin/python benchmarks/iclevr_step.py --data work/iclevr/data --windows 7 --steps 10

A script, not a test: it measures this machine, and asserts nothing about it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def reference_loss(loss):
    """The loss as it ran before: the head's cross-entropy from a forward of its own (``Bound.class_loss``)."""
    from kaggle_gan.training.losses import WithClassifier

    class TwoPassHead(WithClassifier):
        def critic_loss(self, D, real, fake, ctx):
            total, stats = self.inner.critic_loss(D, real, fake, ctx)
            with ctx.autocast():
                ce = D.class_loss(real)
            stats["aux_real"] = ce.detach()
            return total + self.weight * ce, stats

        def generator_loss(self, D, fake, ctx, real=None):
            total = self.inner.generator_loss(D, fake, ctx, real)
            with ctx.autocast():
                return total + self.weight * D.class_loss(fake)

    return TwoPassHead(loss.inner, loss.weight)


def trainer(data: Path, out: Path, before: bool):
    from kaggle_gan.experiments.iclevr import iclevr_config
    from kaggle_gan.training.loop import Trainer

    over = {"train.minutes": "0", "train.max_steps": "100000", "train.sample_every": "0",
            "train.joint_critic": "false" if before else "true"}
    t = Trainer(iclevr_config(over), data, out, device="cpu", progress=False)
    if before:
        t.gan.loss = reference_loss(t.gan.loss)
    return t


def window(t, steps: int) -> float:
    """Images per second over ``steps`` training steps."""
    start = time.perf_counter()
    for _ in range(steps):
        t.train_step(t._next_batch())
        t.step += 1
    return steps * t.cfg.train.batch_size / (time.perf_counter() - start)


def main() -> None:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="an i-CLEVR prepared folder (kaggle-gan prepare ... --labels iclevr)")
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--windows", type=int, default=7)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"before (two passes + head)": trainer(Path(a.data), Path(tmp) / "before", True),
                "now (one pass)": trainer(Path(a.data), Path(tmp) / "now", False)}
        for t in runs.values():
            window(t, 5)  # warm-up
        rates = {name: [] for name in runs}
        for _ in range(a.windows):
            for name, t in runs.items():
                rates[name].append(window(t, a.steps))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, m in medians.items():
        print(f"{name:28} median {m:7.1f} img/s  ({', '.join(f'{x:.0f}' for x in rates[name])})")
    print(f"now / before: {medians['now (one pass)'] / medians['before (two passes + head)']:.2f}")


if __name__ == "__main__":
    main()
