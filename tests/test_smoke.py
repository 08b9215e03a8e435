"""`make smoke`, the whole pipeline through the Makefile, as a user runs it."""
import subprocess
import sys
import tarfile

import pytest
from conftest import DEV_ZIP, REPO, make_faces, needs_dev_faces


def run_make(tmp_path, data, *extra):
    stamp = tmp_path / "installed"  # the test's interpreter is already set up: skip `make setup`
    stamp.touch()
    cmd = ["make", "-C", str(REPO), "smoke", f"DATA={data}", f"WORK={tmp_path / 'work'}", f"INSTALLED={stamp}",
           f"KG={sys.executable} -m kaggle_gan.cli", f"SUBMISSION={tmp_path / 'submission'}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def check_archive(path):
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert sorted(names) == sorted(f"{i}.jpg" for i in range(1, 1001))
    assert path.stat().st_size < 2 * 1024 * 1024


@pytest.mark.slow
def test_make_smoke_on_made_up_faces(tmp_path):
    data = make_faces(tmp_path / "faces", n=120)
    done = run_make(tmp_path, data)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_archive(tmp_path / "submission" / "smoke" / "images.tgz")
    again = run_make(tmp_path, data)  # everything is up to date: no training, no packing
    assert again.returncode == 0 and "train" not in again.stdout.replace("up to date", "")


@pytest.mark.slow
@needs_dev_faces
def test_make_smoke_on_the_real_dev_faces(tmp_path):
    done = run_make(tmp_path, DEV_ZIP)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_archive(tmp_path / "submission" / "smoke" / "images.tgz")
    images = tmp_path / "work" / "runs" / "smoke" / "images"
    assert len(list(images.glob("*.jpg"))) == 1000
