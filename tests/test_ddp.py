"""Two processes with gloo on CPU train `strong` as two GPUs would under `make strong GPUS=2`."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import REPO, make_faces

from kaggle_gan.config import resolve
from kaggle_gan.data.prepare import prepare
from kaggle_gan.training.loop import Trainer, epoch_order, train

STEPS = 6
SETTINGS = {"model.g_width": 8, "model.d_width": 8, "model.resolution": 32, "train.batch_size": 16,
            "train.log_every": 1, "train.ckpt_minutes": 100.0, "train.max_steps": STEPS}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

# Each rank records its parameters after training and its share of the first batch.
WORKER = """
import json, sys
from pathlib import Path
import torch
from kaggle_gan.training import distributed
from kaggle_gan.config import resolve
from kaggle_gan.training.loop import Trainer, epoch_order

data, run, out, overrides = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
with distributed.process_group("cpu") as world:
    t = Trainer(resolve("strong", overrides), Path(data), run, device="cpu", progress=False)
    rng = t.gen.get_state()
    first = t._batch(epoch_order(t.cfg.train.seed, 0, len(t.data)), 0).x
    t.gen.set_state(rng)  # the run itself starts from the untouched state
    t.run()
    params = {f"G.{k}": v.detach() for k, v in t.gan.G.named_parameters()}
    params.update({f"D.{k}": v.detach() for k, v in t.gan.D.named_parameters()})
    torch.save({"params": params, "first_batch": first}, out / f"rank{world.rank}.pt")
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Prepared made-up faces and a one-process run of the same configuration and global batch."""
    root = tmp_path_factory.mktemp("ddp")
    make_faces(root / "faces")
    prepare(str(root / "faces"), root / "data", size=64, workers=1)
    train(resolve("strong", SETTINGS), root / "data", root / "single", device="cpu", progress=False)
    return root


def two_ranks(setup, tmp_path, overrides):
    """WORKER under torchrun with 2 processes; each rank's parameters, after checking that they are identical."""
    (tmp_path / "worker.py").write_text(WORKER)
    done = subprocess.run([*TORCHRUN, str(tmp_path / "worker.py"), str(setup / "data"), str(tmp_path / "run"),
                           str(tmp_path), json.dumps(overrides)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in r0["params"]:  # DDP averaged the gradients: the two copies are bit-identical
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    return r0, r1


def files(run):
    """The run's files; TensorBoard's event files are named by time and pid, so they count as one name each."""
    skip = (".lock", ".make-run")  # the lock and the Makefile's record of the run are not training outputs
    names = [str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.name not in skip]
    return sorted("events.out.tfevents" if n.startswith("events.out.tfevents.") else n for n in names)


@pytest.mark.slow
def test_two_ranks_stay_identical_split_the_batch_and_match_one_process(setup, tmp_path):
    r0, r1 = two_ranks(setup, tmp_path, SETTINGS)  # after 6 steps the two copies are bit-identical

    # each rank drew its own half of the batch a single process draws (same images, same flips)
    one = Trainer(resolve("strong", SETTINGS), setup / "data", tmp_path / "fresh", device="cpu", progress=False)
    whole = one._batch(epoch_order(one.cfg.train.seed, 0, len(one.data)), 0).x
    assert r0["first_batch"].shape[0] == r1["first_batch"].shape[0] == 8
    assert torch.equal(torch.cat([r0["first_batch"], r1["first_batch"]]), whole)

    # the logged loss is the mean over both ranks and follows the one-process run. Not bit-equal: the DCGAN
    # generator's batch norm normalises each rank's 8 images on their own instead of all 16 (the critic has
    # instance norm, the noise and gradient-penalty mixes are the same draws), which moves it by a few percent
    ddp, single = pd.read_csv(tmp_path / "run" / "log.csv"), pd.read_csv(setup / "single" / "log.csv")
    assert list(ddp.step) == list(single.step) == list(range(1, STEPS + 1))
    assert ddp.d_loss[0] == pytest.approx(single.d_loss[0], rel=0.1)
    assert ddp.d_loss.mean() == pytest.approx(single.d_loss.mean(), rel=0.1)
    assert ddp.gp.mean() == pytest.approx(single.gp.mean(), rel=0.1)


@pytest.mark.slow
def test_two_ranks_spend_a_time_budget_together_and_stop_at_the_same_step(setup, tmp_path):
    """train.minutes under torchrun: the ranks decide together at log rows, so neither waits for the other in
    a collective it never reaches; both stop at one step with the same weights."""
    two_ranks(setup, tmp_path, {**SETTINGS, "train.minutes": 0.03, "train.max_steps": 100_000})
    steps = torch.load(tmp_path / "run" / "generator.pt", weights_only=True)["step"]
    assert 0 < steps < 100_000 and list(pd.read_csv(tmp_path / "run" / "log.csv").step)[-1] == steps


@pytest.mark.slow
def test_make_train_gpus_2_runs_torchrun_and_only_rank_0_writes(setup, tmp_path):
    """`make train GPUS=2` on CPU: the run folder holds what a one-process run leaves, each file written once."""
    stamp = tmp_path / "installed"
    stamp.touch()
    sets = " ".join(f"{k}={v}" for k, v in SETTINGS.items())
    cmd = ["make", "-C", str(REPO), "train", "PRESET=strong", "RUN=two", "GPUS=2", "DEVICE=cpu",
           f"DATA={setup / 'faces'}", f"WORK={tmp_path}", f"INSTALLED={stamp}", f"SET={sets}",
           f"KG={sys.executable} -m kaggle_gan.cli", f"TORCHRUN={' '.join(TORCHRUN[:3])}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "--nproc_per_node=2" in done.stdout
    run = tmp_path / "runs" / "two"
    assert files(run) == files(setup / "single")
    # a second writer would have turned the first last.pt into previous.pt and appended every log row twice
    assert not (run / "checkpoints" / "previous.pt").exists()
    assert list(pd.read_csv(run / "log.csv").step) == list(range(1, STEPS + 1))
    assert done.stdout.count("train: finished") == 1
    assert torch.load(run / "generator.pt", weights_only=True)["step"] == STEPS
