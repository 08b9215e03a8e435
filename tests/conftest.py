"""Shared fixtures: small image folders the tests make themselves, and the optional ../shared assets."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEV_ZIP = SHARED / "data" / "anime-faces-dev.zip"
CASCADE = SHARED / "assets" / "lbpcascade_animeface.xml"

needs_dev_faces = pytest.mark.skipif(
    not DEV_ZIP.is_file(), reason=f"real dev faces not present ({DEV_ZIP}); only on the project's machines"
)
needs_cascade = pytest.mark.skipif(
    not CASCADE.is_file(), reason=f"anime-face cascade not present ({CASCADE}); only on the project's machines"
)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, whatever ran before it: a test that draws
    unseeded numbers is still deterministic (and so can fail only for a reason)."""
    import random

    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _outside_make(monkeypatch):
    """Hints name the command-line flag unless a test says it runs under make (``make test`` sets MAKELEVEL)."""
    monkeypatch.delenv("MAKELEVEL", raising=False)


def make_faces(folder: Path, n: int = 96, size: int = 72, seed: int = 0) -> Path:
    """``n`` smooth random RGB images (blobs on gradients) as JPEG/PNG, named 0..n-1 like faces.zip."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        base = rng.uniform(0, 255, 3)
        img = base + 80 * np.stack([np.sin(6 * xx + rng.uniform(0, 6)), np.cos(5 * yy), xx * yy], -1)
        cx, cy, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.1, 0.3)]
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
        arr = np.clip(img, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / (f"{i}.jpg" if i % 4 else f"{i}.png"))
    return folder


@pytest.fixture
def faces_dir(tmp_path) -> Path:
    return make_faces(tmp_path / "faces")


@pytest.fixture
def prepared(tmp_path, faces_dir) -> Path:
    from kaggle_gan.data.prepare import prepare

    prepare(str(faces_dir), tmp_path / "data", size=64, workers=1)
    return tmp_path / "data"


@pytest.fixture
def run(prepared, tmp_path) -> Path:
    """A 4-step baseline run at test_train's tiny scale: generator.pt, and the critic in its checkpoints."""
    from test_train import TINY

    from kaggle_gan.config import resolve
    from kaggle_gan.training.loop import train

    cfg = resolve("baseline", {**TINY, "train.max_steps": 4})
    train(cfg, prepared, tmp_path / "run", device="cpu", progress=False)
    return tmp_path / "run"


def cli(*args: str) -> list:
    """The kaggle-gan command as this interpreter runs it."""
    return [sys.executable, "-m", "kaggle_gan.cli", *args]


def assert_resumes_bit_exactly(config_of, data, tmp_path: Path, steps: int = 6) -> None:
    """A run of ``steps`` and one stopped halfway then resumed end with the same generator, bit for bit.
    ``config_of(n)`` is the run's config with ``train.max_steps=n``; the unbroken run is left in ``tmp_path/a``."""
    import torch

    from kaggle_gan.training.loop import train

    full = train(config_of(steps), data, tmp_path / "a", device="cpu", progress=False)
    train(config_of(steps // 2), data, tmp_path / "b", device="cpu", progress=False)
    (tmp_path / "b" / "generator.pt").unlink()
    resumed = train(config_of(steps), data, tmp_path / "b", device="cpu", progress=False)
    a, b = torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["step"] == b["step"] == steps
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])
