"""Nothing a user owns is lost, and every interruption resumes.

Each test reproduces one way a user lost work (a generate that emptied their
folder, orphans that kept a run locked after a ``kill -9``, Ctrl-C that saved
nothing, damaged checkpoints, a full or read-only disk) and checks what they
find afterwards. Kills and signals are sent on events the test observes (a
worker started, a log row written), never after guessed delays.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from conftest import DEV_ZIP, cli, make_faces, needs_dev_faces
from test_train import TINY, tiny

from kaggle_gan.cli import main
from kaggle_gan.core.chunks import chunked_rows
from kaggle_gan.core.io import MARKER, RunLock, UserError, current_umask
from kaggle_gan.data.prepare import prepare
from kaggle_gan.data.prepared import load_prepared
from kaggle_gan.sampling.generate import generate
from kaggle_gan.training.checkpoint import load_latest
from kaggle_gan.training.loop import train


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("userdata")
    # 160 images in batches of 16: 10 steps an epoch
    return prepare(str(make_faces(root / "faces", n=160, size=40)), root / "data", size=32, workers=1).folder


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("userrun") / "runs" / "r"
    train(tiny("baseline", train__max_steps=4, train__ckpt_minutes=0.0), data, folder, device="cpu", progress=False)
    return folder


def cli_error(capsys, argv: List[str]) -> str:
    """Run the command line; it must fail with exit status 2 and say why in one ``error:`` line, last
    (progress bars may come before it), with no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), lines
    assert sum("error" in line.lower() for line in lines) == 1 and not any("Traceback" in x for x in lines), lines
    return lines[-1]


# --- 1. generate never empties a folder it did not write --------------------------------------


def test_generate_refuses_a_folder_holding_the_users_files(run, tmp_path, capsys):
    folder = tmp_path / "u"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.txt").write_text("thesis")
    argv = ["generate", "--checkpoint", str(run / "generator.pt"), "--out", str(folder), "--count", "5"]
    assert "did not write" in cli_error(capsys, argv)
    assert sorted(p.name for p in folder.iterdir()) == ["sub", "thesis.txt"]
    assert (folder / "thesis.txt").read_text() == "thesis"
    assert not (tmp_path / "u.json").exists()


def test_generate_replaces_only_its_own_folder_and_keeps_normal_permissions(run, tmp_path, capsys):
    out = tmp_path / "imgs"
    generate(run, out, n=5, device="cpu")
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~current_umask())  # not mkdtemp's 0700
    assert json.loads((out / MARKER).read_text())["files"] == [f"{i}.jpg" for i in range(1, 6)]
    generate(run, out, n=3, device="cpu")  # its own folder: replaced whole
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["1.jpg", "2.jpg", "3.jpg"]
    (out / "notes.txt").write_text("mine")  # the user adds a file to it: now it is not ours alone
    argv = ["generate", "--checkpoint", str(run / "generator.pt"), "--out", str(out), "--count", "2"]
    assert "notes.txt" in cli_error(capsys, argv)
    assert (out / "notes.txt").read_text() == "mine" and (out / "3.jpg").is_file()


def test_generate_leaves_a_users_file_named_like_its_sidecar_alone(run, tmp_path):
    (tmp_path / "imgs.json").write_text("my own notes")
    generate(run, tmp_path / "imgs", n=2, device="cpu")
    assert (tmp_path / "imgs.json").read_text() == "my own notes"


# --- 2. a kill -9 leaves no orphan and no stale lock --------------------------------------------


def _children(pid: int) -> List[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie is dead, waiting for init to reap it


def _wait_dead(pids: List[int], guard: float = 60.0) -> List[int]:
    """Wait until every pid has died; the guard only ends a test that is failing anyway."""
    end = time.monotonic() + guard
    while any(map(_alive, pids)) and time.monotonic() < end:
        time.sleep(0.02)
    return [p for p in pids if _alive(p)]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc to see the workers")
def test_kill_9_of_prepare_takes_its_workers_along_and_frees_the_folder(tmp_path):
    src = make_faces(tmp_path / "faces", n=600, size=96)
    out = tmp_path / "data"
    argv = cli("prepare", "--data", str(src), "--out", str(out), "--workers", "2")
    with open(tmp_path / "log", "w") as log:
        p = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        workers: List[int] = []
        while len(workers) < 2:  # the event: both decoding workers are running
            assert p.poll() is None, (tmp_path / "log").read_text()[-2000:]
            workers = _children(p.pid)
            time.sleep(0.005)
        os.kill(p.pid, signal.SIGKILL)  # the parent alone, as the OOM killer does
        p.wait()
    assert _wait_dead(workers) == [], "decoding workers outlived their parent"
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_prepared(out).meta["kept"] == 600


def test_the_lock_is_free_once_its_holder_dies_even_if_a_forked_child_lives_on(tmp_path):
    """An orphan that inherited the lock's file (a worker, a compile process) does not keep the run locked."""
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "from kaggle_gan.core.io import RunLock\n"
        f"RunLock({str(folder)!r}).acquire()\n"
        "if os.fork() == 0:\n"
        "    time.sleep(600)\n"  # the orphan-to-be keeps every inherited descriptor open
        "    os._exit(0)\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by pid {holder.pid}"):
            RunLock(folder).acquire()
        orphans = _children(holder.pid)
        holder.kill()
        holder.wait()
        assert orphans and all(map(_alive, orphans))  # the child lives on ...
        with RunLock(folder):  # ... and the lock is free all the same
            pass
    finally:
        os.killpg(holder.pid, signal.SIGKILL)


def test_a_locked_run_is_refused_before_it_resumes_anything(run, data, capsys):
    argv = ["train", "--preset", "baseline", "--run", "r", "--work", str(run.parent.parent), "--data", str(data),
            "--device", "cpu", "--set", " ".join(f"{k}={v}" for k, v in TINY.items())]
    with RunLock(run):
        capsys.readouterr()
        assert main(argv) == 2
    out = capsys.readouterr()
    assert "in use by" in out.err and "resumed" not in out.out


# --- 3. Ctrl-C and SIGTERM save the current step; long caches continue --------------------------


def _train_argv(work: Path, data: Path, run: str, steps: int) -> List[str]:
    sets = {**TINY, "train.max_steps": steps, "train.keep_epochs": False}
    return ["train", "--preset", "strong", "--run", run, "--work", str(work), "--data", str(data), "--device", "cpu",
            "--set", " ".join(f"{k}={v}" for k, v in sets.items())]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_training_saves_the_current_step_and_the_rerun_ends_bit_identical(sig, data, tmp_path):
    log_csv = tmp_path / "runs" / "stopped" / "log.csv"
    p = subprocess.Popen(cli(*_train_argv(tmp_path, data, "stopped", 100_000)), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    while not (log_csv.is_file() and len(log_csv.read_text().splitlines()) >= 3):  # the event: 2 log rows
        assert p.poll() is None, p.stderr.read()[-2000:]
        time.sleep(0.01)
    p.send_signal(sig)
    _out, err = p.communicate()
    assert p.returncode == 128 + sig, err[-2000:]
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"train: stopped by {signal.Signals(sig).name} at step") and "saved" in message
    stopped_at = int(message.split("at step ")[1].split("/")[0])
    state = load_latest(tmp_path / "runs" / "stopped" / "checkpoints")
    assert state["step"] == stopped_at >= 4  # not the last periodic checkpoint: this very step
    if sig != signal.SIGINT:
        return
    end = stopped_at + 3  # go on a little, and compare with a run never interrupted
    assert main(_train_argv(tmp_path, data, "stopped", end)) == 0
    assert main(_train_argv(tmp_path, data, "whole", end)) == 0
    a, b = (torch.load(tmp_path / "runs" / r / "generator.pt", weights_only=True) for r in ("whole", "stopped"))
    assert a["step"] == b["step"] == end
    for k in a["G"]:
        assert torch.equal(a["G"][k], b["G"][k]), k


def test_chunked_rows_continue_after_an_interruption_and_give_the_same_array(tmp_path):
    rows = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
    calls = []

    def compute(a, b):
        calls.append(a)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third chunk
        return rows[a:b]

    with pytest.raises(KeyboardInterrupt):
        chunked_rows(23, compute, tmp_path / "parts", 5)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["rows-00000000-00000005.npy",
                                                                      "rows-00000005-00000010.npy"]
    calls.clear()
    again = chunked_rows(23, lambda a, b: calls.append(a) or rows[a:b], tmp_path / "parts", 5)
    assert calls == [10, 15, 20]  # the two saved chunks were not computed again
    assert np.array_equal(again, rows)
    (tmp_path / "parts" / "rows-00000015-00000020.npy").write_bytes(b"damaged")
    calls.clear()
    assert np.array_equal(chunked_rows(23, lambda a, b: calls.append(a) or rows[a:b], tmp_path / "parts", 5), rows)
    assert calls == [15]  # a damaged chunk is computed again, nothing else


def test_reference_statistics_interrupted_midway_continue_to_the_same_numbers(tmp_path):
    from kaggle_gan.scoring import fid, inception

    model = inception.load_inception("random:0", "cpu")
    images = np.random.default_rng(0).integers(0, 255, (24, 32, 32, 3), dtype=np.uint8)
    calls = []

    def flaky(x):
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        fid.reference_stats(images, "d", model, tmp_path / "a", ref_count=16, holdout=8, view=("v", flaky), chunk=4)
    parts = list((tmp_path / "a").rglob("rows-*.npy"))
    assert len(parts) == 1  # the first chunk survived the interruption
    resumed = fid.reference_stats(images, "d", model, tmp_path / "a", ref_count=16, holdout=8,
                                  view=("v", lambda x: x), chunk=4)
    fresh = fid.reference_stats(images, "d", model, tmp_path / "b", ref_count=16, holdout=8,
                                view=("v", lambda x: x), chunk=4)
    assert np.array_equal(resumed.mu, fresh.mu) and np.array_equal(resumed.sigma, fresh.sigma)
    assert resumed.floor == fresh.floor
    assert not list((tmp_path / "a").rglob("*.parts"))  # the chunks go once the statistics are stored


# --- 4. damaged checkpoints are damage, not attacks ---------------------------------------------

DAMAGE = {
    "empty": lambda b: b"",
    "truncated": lambda b: b[: len(b) // 3],
    "random bytes": lambda b: np.random.default_rng(1).bytes(len(b)),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(damage, data, tmp_path, capsys):
    folder = tmp_path / "run"
    train(tiny("baseline", train__max_steps=3, train__ckpt_minutes=0.0), data, folder, device="cpu", progress=False)
    last = folder / "checkpoints" / "last.pt"
    last.write_bytes(DAMAGE[damage](last.read_bytes()))
    capsys.readouterr()
    out = train(tiny("baseline", train__max_steps=5, train__ckpt_minutes=0.0), data, folder, device="cpu",
                progress=False)
    printed = capsys.readouterr().out
    assert "last.pt is corrupt or truncated" in printed and "resumed from" in printed and "previous.pt at step 2" in printed
    assert torch.load(out, weights_only=True)["step"] == 5


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_generator_falls_back_to_the_runs_checkpoints(damage, run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    g = copy / "generator.pt"
    g.write_bytes(DAMAGE[damage](g.read_bytes()))
    generate(copy, tmp_path / "img", n=2, device="cpu")
    assert "using the run's latest good checkpoint" in capsys.readouterr().out
    assert len(list((tmp_path / "img").glob("*.jpg"))) == 2


def test_every_checkpoint_damaged_is_an_error_that_overwrites_nothing(run, data, tmp_path, capsys):
    import shutil

    copy = tmp_path / "runs" / "r"
    shutil.copytree(run, copy)
    for f in (copy / "checkpoints").glob("*.pt"):
        f.write_bytes(b"")
    argv = ["train", "--preset", "baseline", "--run", "r", "--work", str(tmp_path), "--data", str(data),
            "--device", "cpu", "--set", " ".join(f"{k}={v}" for k, v in {**TINY, "train.max_steps": 8}.items())]
    assert "every checkpoint" in cli_error(capsys, argv)
    assert all(f.stat().st_size == 0 for f in (copy / "checkpoints").glob("*.pt"))


# --- 5. a full or read-only disk: one line, nothing lost -----------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (root and mount rights needed: skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root and mount rights (CI and the dev machines have them)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_ends_in_one_line_and_keeps_what_was_there(small_disk, data, run, tmp_path, capsys):
    # prepare: a small data set fits, a large one does not; the small one is still whole afterwards
    small = prepare(str(make_faces(tmp_path / "few", n=8, size=40)), small_disk / "data", size=32, workers=1)
    many = make_faces(tmp_path / "many", n=500, size=72)
    argv = ["prepare", "--data", str(many), "--out", str(small_disk / "data"), "--size", "64", "--workers", "1"]
    assert "no space left" in cli_error(capsys, argv)
    assert load_prepared(small_disk / "data").meta == small.meta
    assert not list((small_disk / "data").glob(".tmp-*"))
    # generate: the earlier images stay
    generate(run, small_disk / "imgs", n=3, device="cpu")
    before = {p.name: p.read_bytes() for p in (small_disk / "imgs").iterdir()}
    argv = ["generate", "--checkpoint", str(run / "generator.pt"), "--out", str(small_disk / "imgs"), "--count",
            "5000", "--quality", "100"]
    assert "no space left" in cli_error(capsys, argv)
    assert {p.name: p.read_bytes() for p in (small_disk / "imgs").iterdir()} == before
    # train: a checkpoint that does not fit
    argv = ["train", "--preset", "strong", "--run", "t", "--work", str(small_disk), "--data", str(data), "--device",
            "cpu", "--set", "train.max_steps=2 model.resolution=32 train.batch_size=16"]
    err = cli_error(capsys, argv)
    assert "no space left" in err and "WORK=" in err


@needs_dev_faces
def test_the_dev_zip_on_a_full_disk_ends_in_one_line_before_writing(small_disk, capsys):
    """10,127 faces make a 124 MB images.npy: refused before it is written, not a traceback from numpy 2's
    ``tofile`` ("Not enough free space to write N bytes after offset M", an OSError without an errno)."""
    argv = ["prepare", "--data", str(DEV_ZIP), "--out", str(small_disk / "data"), "--workers", "2"]
    err = cli_error(capsys, argv)
    assert "no space left on the device (124.4 MB needed" in err and "WORK=" in err
    assert sorted(p.name for p in (small_disk / "data").iterdir()) == [".lock"]


def test_numpys_own_full_disk_message_is_a_write_failure():
    from kaggle_gan.core.io import write_failure

    err = OSError("Not enough free space to write 124440576 bytes after offset 128")  # numpy 2, no errno
    assert "no space left on the device" in str(write_failure(err, "/x/images.npy"))
    assert write_failure(OSError("something else entirely"), "/x") is None


def test_a_read_only_work_folder_ends_in_one_line(small_disk, data, run, tmp_path, capsys):
    generate(run, small_disk / "imgs", n=2, device="cpu")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    argv = ["train", "--preset", "baseline", "--run", "r", "--work", str(small_disk), "--data", str(data),
            "--device", "cpu", "--set", "train.max_steps=2"]
    assert "read-only file system" in cli_error(capsys, argv)
    argv = ["generate", "--checkpoint", str(run / "generator.pt"), "--out", str(small_disk / "imgs"), "--count", "2"]
    assert "read-only file system" in cli_error(capsys, argv)
    assert len(list((small_disk / "imgs").glob("*.jpg"))) == 2


# --- 8. run names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["my run", "../x", "a/b", "..", ""])
def test_unsafe_run_names_are_refused_in_one_line(name, data, tmp_path, capsys):
    argv = ["train", "--run", name, "--work", str(tmp_path), "--data", str(data)]
    assert "not allowed" in cli_error(capsys, argv)
    assert "not allowed" in cli_error(capsys, ["generate", "--run", name, "--work", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


# --- 10-12. the smaller things a user meets ---------------------------------------------------


def test_the_cli_records_the_preset_under_another_run_name(data, tmp_path):
    argv = ["train", "--preset", "baseline", "--run", "anchor", "--work", str(tmp_path), "--data", str(data),
            "--device", "cpu", "--set", " ".join(f"{k}={v}" for k, v in {**TINY, "train.max_steps": 1}.items())]
    assert main(argv) == 0
    from kaggle_gan.scoring.score import _run_preset

    assert _run_preset(tmp_path / "runs" / "anchor") == "baseline"


def test_the_notebook_never_installs_a_package_by_a_bare_name():
    import nbformat
    from conftest import REPO

    nb = nbformat.read(REPO / "notebooks" / "kaggle.ipynb", as_version=4)
    install = next(c.source for c in nb.cells if c.cell_type == "code" and "pip" in c.source)
    registry = [line for line in install.splitlines() if '"install"' in line and "--no-index" not in line]
    assert registry and all("PACKAGE_SOURCE" in line for line in registry)
    assert '"kaggle-gan"' not in install.replace('"--no-index", "--find-links", str(wheel.parent), "kaggle-gan"', "")
