"""Faults: runs killed at random moments, corrupt and hostile checkpoints, two runs on one folder, downloads.

The kill tests run the ``kaggle-gan`` command (``kaggle_gan.cli.main``) in
child processes and end them with SIGKILL at delays drawn from a seeded RNG,
then check what a user would find: no file under its final name that looks
finished but is not, and a re-run that ends exactly where an uninterrupted
run ends. ``prepare`` and ``submit`` run as ``python -m kaggle_gan.cli`` in
their own process group (the kill reaches the decoding workers too, as when
Colab cuts a runtime off); ``train`` and ``generate`` are forked from a fork
server that has torch imported already, because importing torch afresh for
each of a dozen runs would take minutes on a busy CI machine. The counts of
kills tried and survived are printed and written to
``$KAGGLE_GAN_FAULT_REPORT`` (JSON) when that variable is set.
"""
from __future__ import annotations

import contextlib
import http.server
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest
import torch
from conftest import cli, make_faces
from PIL import Image
from test_train import TINY, tiny

from kaggle_gan.cli import main
from kaggle_gan.core.io import MARKER, RunLock, UserError, download, sha256_file
from kaggle_gan.data.prepare import prepare
from kaggle_gan.data.prepared import load_prepared
from kaggle_gan.sampling.generate import generate
from kaggle_gan.training.checkpoint import FORMAT, load_file, load_latest, save_checkpoint
from kaggle_gan.training.loop import Trainer, train

SEED = 6  # the kill delays are drawn from this; the outcome is still timing-dependent, the invariants are not
KILLS: Dict[str, Dict[str, int]] = {}


def _count(stage: str, tried: int, survived: int, **extra: int) -> None:
    KILLS[stage] = {"tried": tried, "survived": survived, **extra}
    print(f"fault summary {stage}: {KILLS[stage]}")
    report = os.environ.get("KAGGLE_GAN_FAULT_REPORT")
    if report:
        Path(report).write_text(json.dumps(KILLS, indent=2, sort_keys=True) + "\n")


_SERVER: Optional[multiprocessing.context.BaseContext] = None


def _forkserver():
    global _SERVER
    if _SERVER is None:
        _SERVER = multiprocessing.get_context("forkserver")
        _SERVER.set_forkserver_preload(["torch", "torchvision", "matplotlib", "pandas", "kaggle_gan.cli",
                                        "kaggle_gan.training.loop", "kaggle_gan.sampling.generate"])
        warm = _SERVER.Process(target=time.sleep, args=(0,))  # start the server now, not inside a timed run
        warm.start()
        warm.join()
    return _SERVER


def _cli_main(argv: List[str], log: str) -> None:
    """The command line in a forked child, its output in ``log``."""
    with open(log, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        code = main(argv)
    sys.exit(code)


def _save_forever(folder: str, _log: str) -> None:
    """A writer that does nothing but save 16 MB checkpoints whose content is their step number."""
    w = torch.zeros(16 << 18)
    state = load_latest(Path(folder))  # carry on from the last whole checkpoint, as training does
    step = state["step"] if state else 0
    while True:
        step += 1
        w.fill_(step)
        save_checkpoint({"step": step, "w": w}, Path(folder))


class Child:
    """``kaggle-gan ARGV`` started as a subprocess (``fork=False``) or forked from the fork server."""

    def __init__(self, argv: List[str], fork: bool, log: Path, target: Callable = _cli_main):
        self.fork, self.log = fork, log
        if fork:
            self.p = _forkserver().Process(target=target, args=(argv, str(log)))
            self.p.start()
        else:
            with open(log, "a") as fh:
                self.p = subprocess.Popen(cli(*argv), stdout=fh, stderr=fh, start_new_session=True)

    def wait(self, timeout: float) -> Optional[int]:
        """The exit status, or None if still running after ``timeout`` seconds."""
        if self.fork:
            self.p.join(timeout)
            return self.p.exitcode
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def running(self) -> bool:
        return self.wait(0) is None

    def freeze(self) -> bool:
        """SIGSTOP it (its whole group when started as a subprocess); True if it was still running.

        A frozen process cannot finish, so a kill sent after this always lands on a live one.
        """
        try:
            if self.fork:
                os.kill(self.p.pid, signal.SIGSTOP)
            else:
                os.killpg(self.p.pid, signal.SIGSTOP)
        except ProcessLookupError:
            return False
        return self.running()

    def kill(self) -> None:
        if self.fork:
            os.kill(self.p.pid, signal.SIGKILL)
            self.p.join()
        else:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()


def _mtime(path: Path) -> Optional[int]:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _step_of(path: Path) -> int:
    """The step of a checkpoint, -1 while there is none (read-only peek; the writer replaces it atomically)."""
    try:
        return int(torch.load(path, weights_only=True, mmap=True)["step"])
    except Exception:  # absent, or not a checkpoint yet: keep polling
        return -1


def kill_at(argv, delay: float, log: Path, fork: bool = False, ready: Callable[[], bool] = lambda: True,
            target: Callable = _cli_main) -> bool:
    """Start ``argv``, wait for the event ``ready()``, then ``delay`` seconds more, freeze it and SIGKILL it.

    True if the kill landed on a live process; False if it finished first (it must then have succeeded).
    No time limit: the wait ends at the event or when the process ends.
    """
    child = Child(argv, fork, log, target)
    while not ready() and child.running():
        time.sleep(0.002)
    code = child.wait(delay) if delay else child.wait(0)
    if code is None and child.freeze():
        child.kill()
        return True
    child.wait(600)
    code = child.wait(0)
    assert code == 0, log.read_text()[-2000:]
    return False


def finish(argv, log: Path, fork: bool = False) -> str:
    """Run ``argv`` to the end; its output."""
    start = log.stat().st_size if log.exists() else 0
    code = Child(argv, fork, log).wait(600)
    assert code == 0, log.read_text()[-2000:]
    return log.read_bytes()[start:].decode()


# --- kills -------------------------------------------------------------------------------


def _decoded(log: Path, start: int, n: int) -> int:
    """Images ``prepare`` reported decoded since byte ``start`` of its log (its progress bar: 'k/n')."""
    found = re.findall(rf"(\d+)/{n}\b", log.read_bytes()[start:].decode(errors="replace"))
    return max(map(int, found), default=-1)


@pytest.mark.slow
def test_prepare_killed_at_every_stage_never_leaves_a_finished_looking_folder(tmp_path, monkeypatch):
    n = 1200  # 5 decoding chunks of 256
    src = make_faces(tmp_path / "faces", n=n, size=72)
    log = tmp_path / "prepare.log"
    argv = ["prepare", "--data", str(src), "--out", str(tmp_path / "data"), "--workers", "2", "--force"]
    finish(["prepare", "--data", str(src), "--out", str(tmp_path / "ref"), "--workers", "1"], log)
    reference = (tmp_path / "ref" / "images.npy").read_bytes()
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # the child's bar reports every chunk: the events below
    events = {
        "decoding started": lambda at: _decoded(log, at, n) >= 0,
        "a fifth decoded": lambda at: _decoded(log, at, n) >= 256,
        "three fifths decoded": lambda at: _decoded(log, at, n) >= 768,
        "writing": lambda at: bool(list((tmp_path / "data").glob(".tmp-*"))),  # may pass unseen on a fast disk
    }
    tried = survived = 0
    for name, event in events.items():
        at = log.stat().st_size
        landed = kill_at(argv, 0, log, ready=lambda: event(at))
        assert landed or name == "writing", f"prepare finished before the event {name!r} could be acted on"
        tried += landed
        done = tmp_path / "data" / "prepare.json"
        if done.exists():  # only a finished prepare may leave its marker, and then everything matches it
            meta = json.loads(done.read_text())
            assert sha256_file(tmp_path / "data" / "images.npy") == meta["images_sha256"]
            assert len(load_prepared(tmp_path / "data").files) == meta["kept"]
        survived += landed
    finish(argv, log)
    assert (tmp_path / "data" / "images.npy").read_bytes() == reference
    assert not list((tmp_path / "data").glob(".tmp-*"))  # the re-run cleaned up after the killed ones
    _count("prepare", tried, survived)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    # 160 images in batches of 16: 10 steps an epoch, so the per-epoch grids and plots stay rare
    prepare(str(make_faces(root / "faces", n=160, size=40)), root / "data", size=32, workers=1)
    return root / "data"


def _train_argv(work: Path, data: Path, run: str, steps: int) -> List[str]:
    sets = {**TINY, "train.max_steps": steps, "train.ckpt_minutes": 0.0}  # a checkpoint every step
    return ["train", "--preset", "strong", "--run", run, "--work", str(work), "--data", str(data),
            "--device", "cpu", "--set", " ".join(f"{k}={v}" for k, v in sets.items())]


@pytest.mark.slow
def test_training_killed_repeatedly_ends_bit_identical_to_an_uninterrupted_run(small_data, tmp_path):
    steps, log = 30, tmp_path / "train.log"
    argv = _train_argv(tmp_path, small_data, "killed", steps)
    ckpts = tmp_path / "runs" / "killed" / "checkpoints"
    rng = random.Random(SEED)
    tried = survived = during_write = 0
    last_step = 0
    # kill once the run has reached a random step (whatever the machine's speed), a random moment into it;
    # at least 10 steps, each with a checkpoint written, are left after each, so every kill lands
    for target in sorted(rng.sample(range(2, steps - 10), 3)):
        reached = lambda: _step_of(ckpts / "last.pt") >= target  # noqa: E731
        assert kill_at(argv, rng.uniform(0.0, 0.05), log, fork=True, ready=reached), "the run ended first"
        tried += 1
        during_write += bool(list(ckpts.glob(".tmp-*")))
        state = load_latest(ckpts)  # a kill mid-write must leave a usable checkpoint behind
        assert state is not None and state["step"] >= last_step
        assert not (tmp_path / "runs" / "killed" / "generator.pt").exists()
        last_step = state["step"]
        survived += 1
    assert "resumed from" in finish(argv, log, fork=True)
    finish(_train_argv(tmp_path, small_data, "whole", steps), log, fork=True)  # the same, never interrupted
    a = torch.load(tmp_path / "runs" / "whole" / "generator.pt", weights_only=True)
    b = torch.load(tmp_path / "runs" / "killed" / "generator.pt", weights_only=True)
    assert a["step"] == b["step"] == steps
    assert a["G"].keys() == b["G"].keys()
    for k in a["G"]:
        assert torch.equal(a["G"][k], b["G"][k]), k
    la, lb = load_latest(tmp_path / "runs" / "whole" / "checkpoints"), load_latest(ckpts)
    for net in ("G", "D"):
        for k in la[net]:
            assert torch.equal(la[net][k], lb[net][k]), (net, k)
    _count("train", tried, survived, during_checkpoint_write=during_write)


@pytest.fixture(scope="module")
def trained_run(small_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gen") / "run"
    train(tiny("baseline", train__max_steps=4), small_data, run, device="cpu", progress=False)
    return run


def _complete_images(folder: Path, n: int) -> None:
    names = sorted(p.name for p in folder.iterdir() if p.name != MARKER)
    assert names == sorted(f"{i}.jpg" for i in range(1, n + 1)), f"{folder} holds {len(names)} files, not {n}"
    for name in names:
        with Image.open(folder / name) as img:
            img.load()


@pytest.mark.slow
def test_generate_and_submit_killed_at_random_leave_nothing_half_done(trained_run, tmp_path):
    n, log = 300, tmp_path / "generate.log"
    out, ref = tmp_path / "images", tmp_path / "ref"
    argv = ["generate", "--checkpoint", str(trained_run / "generator.pt"), "--out", str(out), "--count", str(n),
            "--device", "cpu"]
    finish(["generate", "--checkpoint", str(trained_run / "generator.pt"), "--out", str(ref), "--count", str(n),
            "--device", "cpu"], log, fork=True)
    rng = random.Random(SEED)
    tried = survived = 0
    # kill once a random number of images is written (0 = at start-up), frozen the moment it is seen
    for target in sorted(rng.sample(range(0, n - 100), 4)):
        old = set(tmp_path.glob(".tmp-images.*"))
        written = lambda: sum(len(os.listdir(d)) for d in set(tmp_path.glob(".tmp-images.*")) - old  # noqa: E731
                              if d.is_dir())
        assert kill_at(argv, 0, log, fork=True, ready=lambda: written() >= target), "generate ended first"
        tried += 1
        if out.exists():  # the folder appears whole or not at all
            _complete_images(out, n)
        survived += 1
    finish(argv, log, fork=True)
    _complete_images(out, n)
    assert all((out / f"{i}.jpg").read_bytes() == (ref / f"{i}.jpg").read_bytes() for i in range(1, n + 1))
    _count("generate", tried, survived)

    archive = tmp_path / "sub" / "images.tgz"
    argv = ["submit", "--images", str(ref), "--out", str(archive), "--count", str(n), "--force"]
    finish(argv, log)
    whole = archive.stat().st_size
    archive.unlink()
    tried = survived = 0
    partial = lambda: max((p.stat().st_size for p in archive.parent.glob(".tmp-images.tgz.*")), default=-1)  # noqa
    # while validating (no archive yet), and with a tenth and a half of the archive written
    for event in (lambda: True, lambda: partial() >= whole // 10, lambda: partial() >= whole // 2):
        landed = kill_at(argv, 0, log, ready=event)
        tried += landed
        if archive.exists():  # an archive under its final name is a whole one
            with tarfile.open(archive) as tar:
                assert len(tar.getnames()) == n
            archive.unlink()  # start the next attempt from nothing again
        survived += landed
    finish(argv, log)
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == sorted(f"{i}.jpg" for i in range(1, n + 1))
    _count("submit", tried, survived)
    assert tried >= 1  # the first kill, during validation, always lands; the archive's writing may pass unseen


@pytest.mark.slow
def test_a_kill_during_checkpoint_writes_leaves_the_previous_checkpoint_usable(tmp_path):
    """A writer that does nothing but save 16 MB checkpoints, killed at random: a whole one always remains."""
    folder = tmp_path / "ck"
    rng = random.Random(SEED)
    tried = survived = during_write = 0
    seen = 0
    for _ in range(8):
        before = _mtime(folder / "last.pt")
        kill_at(str(folder), rng.uniform(0.0, 0.5), tmp_path / "writer.log", fork=True, target=_save_forever,
                ready=lambda: _mtime(folder / "last.pt") != before)  # once this writer has saved at least once
        tried += 1
        during_write += bool(list(folder.glob(".tmp-*")))
        state = load_latest(folder)
        assert state is not None and state["step"] >= seen
        assert torch.all(state["w"] == state["step"])  # content and step from the same save
        seen = state["step"]
        survived += 1
    _count("checkpoint_write", tried, survived, during_checkpoint_write=during_write)


# --- corrupt, hostile and incompatible checkpoints --------------------------------------


def _two_checkpoints(folder: Path) -> None:
    for step in (1, 2):
        save_checkpoint({"step": step, "w": torch.full((4096,), float(step))}, folder)


def test_a_truncated_checkpoint_is_reported_and_the_previous_one_used(tmp_path, capsys):
    _two_checkpoints(tmp_path)
    last = tmp_path / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    state = load_latest(tmp_path)
    assert state["step"] == 1 and state["path"].endswith("previous.pt")
    assert "last.pt is corrupt or truncated" in capsys.readouterr().out


def test_a_flipped_byte_inside_tensor_data_is_detected(tmp_path, capsys):
    """torch.load alone would return the damaged tensor; the stored sha256 catches it."""
    _two_checkpoints(tmp_path)
    last = tmp_path / "last.pt"
    data = bytearray(last.read_bytes())
    at = bytes(data).find(torch.full((16,), 2.0).numpy().tobytes())
    assert at > 0
    data[at + 1000] ^= 0x01
    last.write_bytes(bytes(data))
    assert torch.load(last, weights_only=True)["step"] == 2  # still loads: the damage is silent
    state = load_latest(tmp_path)
    assert state["step"] == 1
    assert "does not match the sha256" in capsys.readouterr().out
    with pytest.raises(ValueError, match="corrupt"):
        load_file(last)


def test_training_resumes_from_the_previous_checkpoint_when_the_last_is_corrupt(small_data, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny("baseline", train__max_steps=3, train__ckpt_minutes=0.0), small_data, run, device="cpu", progress=False)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:-300])
    t = Trainer(tiny("baseline", train__max_steps=6, train__ckpt_minutes=0.0), small_data, run, device="cpu",
                progress=False)
    assert t.step == 2 and "previous.pt" in capsys.readouterr().out


class _Payload:
    """Pickles as a call to ``exec``: what a malicious "checkpoint" shared by a classmate would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_a_checkpoint_carrying_a_pickled_payload_is_refused_unexecuted(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "checkpoints" / "last.pt"
    evil.parent.mkdir()
    torch.save({"format": FORMAT, "step": 1, "G": _Payload(marker)}, evil)
    with pytest.raises(UserError, match="refusing .*pickled Python objects"):
        load_file(evil)
    with pytest.raises(UserError, match="refusing"):  # not skipped silently: someone tampered with the run
        load_latest(evil.parent)
    assert main(["generate", "--checkpoint", str(evil), "--out", str(tmp_path / "img"), "--count", "2"]) == 2
    err = capsys.readouterr().err
    assert "refusing" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "img").exists()


def test_a_corrupt_generator_falls_back_to_the_runs_checkpoint(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    g = run / "generator.pt"
    g.write_bytes(g.read_bytes()[:100])
    out = generate(run, tmp_path / "img", n=3, device="cpu")
    assert len(list(out.glob("*.jpg"))) == 3
    assert "using the run's latest good checkpoint" in capsys.readouterr().out


def test_resuming_with_another_architecture_fails_before_any_work(small_data, tmp_path, capsys):
    train(tiny("strong", train__max_steps=2), small_data, tmp_path / "runs" / "r", device="cpu", progress=False)
    last = tmp_path / "runs" / "r" / "checkpoints" / "last.pt"
    stamp = last.stat().st_mtime_ns
    argv = _train_argv(tmp_path, small_data, "r", 4)
    argv[-1] += " model.g_width=16"
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model.g_width" in err and len(err.strip().splitlines()) == 1
    assert last.stat().st_mtime_ns == stamp


# --- two writers -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_training_on_the_same_run_folder_is_refused(small_data, tmp_path, capsys):
    log = tmp_path / "busy.log"
    first = Child(_train_argv(tmp_path, small_data, "busy", 100_000), True, log)
    lock = tmp_path / "runs" / "busy" / ".lock"
    try:
        while not (lock.exists() and lock.read_text().startswith("pid")):  # the event: the first run holds it
            assert first.running(), log.read_text()[-2000:]
            time.sleep(0.02)
        assert main(_train_argv(tmp_path, small_data, "busy", 100_000)) == 2
        err = capsys.readouterr().err
        assert f"in use by pid {first.p.pid}" in err and len(err.strip().splitlines()) == 1
        assert first.running()  # the first run carries on
    finally:
        first.kill()
    # the kernel dropped the lock with the killed process: the run can be resumed at once
    with RunLock(tmp_path / "runs" / "busy"):
        pass


def test_a_second_prepare_into_the_same_folder_is_refused(tmp_path):
    src = make_faces(tmp_path / "faces", n=4)
    with RunLock(tmp_path / "data"):
        with pytest.raises(UserError, match="in use by .*another folder"):
            prepare(str(src), tmp_path / "data", workers=1)
    assert not (tmp_path / "data" / "prepare.json").exists()


# --- downloads ---------------------------------------------------------------------------


class _Server:
    """A local HTTP server for one payload, honouring Range requests; ``cut`` drops the connection early."""

    def __init__(self, payload: bytes):
        self.payload, self.cut, self.ranges = payload, None, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body, status = server.payload, 200
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.end_headers()
                        return
                    body, status = body[start:], 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: server.cut] if server.cut else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/faces.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server(np.random.default_rng(0).bytes(300_000))
    yield s
    s.close()


def test_a_download_appears_only_when_size_and_sha256_match(server, tmp_path):
    import hashlib

    good = hashlib.sha256(server.payload).hexdigest()
    dest = tmp_path / "faces.zip"
    with pytest.raises(UserError, match="sha256"):
        download(server.url, dest, sha256="0" * 64)
    assert not dest.exists() and not dest.with_name("faces.zip.part").exists()
    with pytest.raises(UserError, match="expected 1234"):
        download(server.url, dest, size=1234)
    assert not dest.exists()
    assert download(server.url, dest, sha256=good, size=len(server.payload)).read_bytes() == server.payload


def test_an_interrupted_download_resumes_from_its_part_file(server, tmp_path):
    import hashlib

    dest = tmp_path / "faces.zip"
    server.cut = 100_000  # the connection drops a third of the way
    with pytest.raises(UserError, match="run again to resume"):
        download(server.url, dest)
    part = dest.with_name("faces.zip.part")
    assert not dest.exists() and part.stat().st_size == 100_000
    server.cut = None
    download(server.url, dest, sha256=hashlib.sha256(server.payload).hexdigest())
    assert server.ranges[-1] == "bytes=100000-"  # only the missing bytes were fetched
    assert dest.read_bytes() == server.payload and not part.exists()


def test_a_prepare_from_a_url_downloads_once_into_the_cache(tmp_path, monkeypatch):
    import io
    import zipfile

    buf = io.BytesIO()
    src = make_faces(tmp_path / "faces", n=6)
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(src.iterdir()):
            zf.write(p, f"faces/{p.name}")
    s = _Server(buf.getvalue())
    try:
        monkeypatch.setenv("KAGGLE_GAN_CACHE", str(tmp_path / "cache"))
        p = prepare(s.url, tmp_path / "data", size=32, workers=1)
        assert p.meta["kept"] == 6
        assert (tmp_path / "cache" / "downloads" / "faces.zip").read_bytes() == buf.getvalue()
        assert not list((tmp_path / "cache" / "downloads").glob("*.part"))
    finally:
        s.close()
