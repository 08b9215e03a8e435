"""notebooks/kaggle.ipynb, executed top to bottom on CPU against a made-up /kaggle layout."""
import os
import shutil
import stat
import tarfile

import nbformat
import pytest
from conftest import CASCADE, REPO, make_faces

NOTEBOOK = REPO / "notebooks" / "kaggle.ipynb"
COUNT = 16


def test_the_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def read_only(folder):
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.mark.slow
def test_the_notebook_runs_on_a_kaggle_like_layout(tmp_path):
    from nbclient import NotebookClient

    kaggle = tmp_path / "kaggle"
    make_faces(kaggle / "input" / "anime-faces" / "faces", n=40)  # Kaggle unzips an uploaded faces.zip
    if CASCADE.is_file():
        (kaggle / "input" / "detectors").mkdir()
        shutil.copy(CASCADE, kaggle / "input" / "detectors")
    read_only(kaggle / "input")
    (kaggle / "working").mkdir()
    # the tiny configuration; Inception on CPU (score, neighbours) dominates the time, hence few images
    env = {"KAGGLE_ROOT": str(kaggle), "KAGGLE_GAN_PRESET": "smoke", "KAGGLE_GAN_COUNT": str(COUNT),
           "KAGGLE_GAN_SET": "train.max_steps=8 train.batch_size=16 model.resolution=32"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment of this process
    nb = nbformat.read(NOTEBOOK, as_version=4)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(kaggle / "working")}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
        for p in [kaggle / "input", *(kaggle / "input").rglob("*")]:  # so pytest can clean up
            p.chmod(p.stat().st_mode | stat.S_IWUSR)

    run = kaggle / "working" / "work" / "runs" / "smoke"
    for f in ("generator.pt", "samples/final.png", "loss.png", f"images/{COUNT}.jpg", "neighbours/neighbours.png",
              "interpolation/seeds-1-2-3.gif", "interpolation/seeds-1-2-3-strip.png"):
        assert (run / f).is_file(), f
    with tarfile.open(kaggle / "working" / "submission" / "smoke" / "images.tgz") as tar:
        assert sorted(tar.getnames()) == sorted(f"{i}.jpg" for i in range(1, COUNT + 1))
    if CASCADE.is_file():
        assert (run / "scores.json").is_file()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pictures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pictures) >= 3  # sample grid, loss curve, neighbour sheet, shown inline
    if CASCADE.is_file():
        assert any("text/html" in o.get("data", {}) for o in outputs)  # the score table
    else:  # offline without the detector the notebook says why it skips scoring, and packs all the same
        assert any("score skipped" in o.get("text", "") for o in outputs)
