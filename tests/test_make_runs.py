"""Make remembers a run: later targets use how it was trained, changed inputs re-run what they change.

Each test drives the real Makefile with the test's interpreter as ``KG`` (the
set-up is already done), a temporary WORK and SUBMISSION, and checks what
the user would see: which stages ran, what was written, and what was left alone.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import CASCADE, REPO, make_faces

TINY = "train.max_steps=4 model.g_width=8 model.d_width=8 model.resolution=32 train.batch_size=16"


def make(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    stamp = tmp_path / "installed"  # the test's interpreter is already set up: skip `make setup`
    stamp.touch()
    cmd = ["make", "--no-print-directory", "-C", str(REPO), f"WORK={tmp_path / 'work'}", f"INSTALLED={stamp}",
           f"KG={sys.executable} -m kaggle_gan.cli", f"SUBMISSION={tmp_path / 'submission'}", "DEVICE=cpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def trained(out: str) -> bool:
    return " train --preset" in out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("makeruns")
    faces = make_faces(root / "faces", n=48, size=40)
    ok(make(root, "train", "PRESET=smoke", "RUN=r", f"DATA={faces}", f"SET={TINY}"))
    return root, faces


@pytest.mark.slow
def test_later_targets_use_the_runs_preset_set_and_data(trained_run):
    root, faces = trained_run
    record = (root / "work" / "runs" / "r" / ".make-run").read_text()
    assert record == f"PRESET=smoke\nSET={TINY}\nDATA={faces}\n"
    out = ok(make(root, "generate", "RUN=r", "COUNT=5"))  # no PRESET, SET or DATA
    assert not trained(out) and "huggingface" not in out  # neither retrained nor downloading the default data
    assert len(list((root / "work" / "runs" / "r" / "images").glob("*.jpg"))) == 5
    out = ok(make(root, "generate", "RUN=r", "COUNT=5"))
    assert " generate " not in out  # up to date
    out = ok(make(root, "generate", "RUN=r", "COUNT=7"))  # COUNT changes the result: generate again
    assert not trained(out) and len(list((root / "work" / "runs" / "r" / "images").glob("*.jpg"))) == 7
    out = ok(make(root, "submit", "RUN=r", "COUNT=7"))
    assert "HW6 takes exactly 1000" in out
    with tarfile.open(root / "submission" / "r" / "images.tgz") as tar:
        assert len(tar.getnames()) == 7
    out = ok(make(root, "submit", "RUN=r", "COUNT=6"))  # new images replace the archive submit itself wrote
    with tarfile.open(root / "submission" / "r" / "images.tgz") as tar:
        assert len(tar.getnames()) == 6


@pytest.mark.slow
def test_a_refused_change_leaves_the_record_and_never_advises_deleting(trained_run):
    root, _ = trained_run
    record = root / "work" / "runs" / "r" / ".make-run"
    before = record.read_text()
    done = make(root, "train", "RUN=r", "PRESET=strong")  # on purpose: another architecture
    assert done.returncode != 0
    assert "error: " in done.stderr and "model." in done.stderr and "delete" not in done.stderr.lower()
    assert record.read_text() == before
    out = ok(make(root, "train", "RUN=r"))  # the recorded settings again: nothing to do
    assert not trained(out)


@pytest.mark.slow
def test_a_changed_set_on_the_command_line_trains_on_and_is_recorded(tmp_path):
    faces = make_faces(tmp_path / "faces", n=48, size=40)
    ok(make(tmp_path, "train", "PRESET=smoke", "RUN=s", f"DATA={faces}", f"SET={TINY}"))
    longer = TINY.replace("max_steps=4", "max_steps=6")
    out = ok(make(tmp_path, "train", "RUN=s", f"SET={longer}"))
    assert "resumed from" in out and "finished 6 steps" in out
    assert f"SET={longer}\n" in (tmp_path / "work" / "runs" / "s" / ".make-run").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not CASCADE.is_file(), reason=f"anime-face cascade not present ({CASCADE}); only on the project's machines")
def test_a_changed_scoring_input_scores_again(trained_run):
    root, _ = trained_run
    args = ("score", "RUN=r", "COUNT=5", f"DETECTOR={CASCADE}", "INCEPTION=random:0", "REF_COUNT=20")
    ok(make(root, *args))
    scores = root / "work" / "runs" / "r" / "scores.json"
    assert json.loads(scores.read_text())["fid"]["label"] == "proxy FID (random:0)"
    out = ok(make(root, *args))
    assert " score " not in out  # up to date
    ok(make(root, *args[:-2], "INCEPTION=random:1", "REF_COUNT=20"))
    report = json.loads(scores.read_text())
    assert report["fid"]["label"] == "proxy FID (random:1)" and report["fid"]["reference"]["requested"] == 20


@pytest.mark.parametrize("name", ["my run", "../x", "a/b", ".."])
def test_make_refuses_an_unsafe_run_name_in_one_line(name, tmp_path):
    done = make(tmp_path, "train", f"RUN={name}", "DATA=/nonexistent")
    assert done.returncode == 2
    assert "error: RUN=" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "work").exists() and not (REPO / "run").exists() and not (tmp_path / "x").exists()
