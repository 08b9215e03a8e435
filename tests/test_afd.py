"""AFD: calibration of the default cascade on real faces and on noise, the plug-in interface, offline errors."""
from __future__ import annotations

import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kaggle_gan.core.io import UserError
from kaggle_gan.scoring import afd

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CASCADE = SHARED / "assets" / "lbpcascade_animeface.xml"
DEV_ZIP = SHARED / "data" / "anime-faces-dev.zip"
needs_cascade = pytest.mark.skipif(not CASCADE.exists(), reason="../shared not present: no lbpcascade_animeface.xml")


@pytest.fixture(scope="module")
def cascade():
    return afd.make_detector(str(CASCADE))


@needs_cascade
@pytest.mark.skipif(not DEV_ZIP.exists(), reason="../shared not present: no anime-faces-dev.zip real faces")
def test_real_faces_are_detected(cascade):
    from kaggle_gan.data.imagefiles import decode_image

    # Every 5th face (about 2,000) keeps the test fast; the README figure uses all 10,127.
    with zipfile.ZipFile(DEV_ZIP) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))[::5]
        images = np.stack([decode_image(zf.read(n), 64) for n in names])
    result = afd.detection_rate(images, cascade, names, progress=False)
    assert result.rate >= 0.85, result.rate


@needs_cascade
def test_noise_and_flat_grey_are_not_faces(cascade):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (400, 64, 64, 3), dtype=np.uint8)
    grey = np.broadcast_to(np.linspace(0, 255, 400).astype(np.uint8)[:, None, None, None], (400, 64, 64, 3))
    assert afd.detection_rate(noise, cascade, progress=False).rate <= 0.02
    assert afd.detection_rate(np.ascontiguousarray(grey), cascade, progress=False).rate <= 0.02


@needs_cascade
def test_per_image_table_and_recorded_parameters(cascade):
    images = np.zeros((3, 96, 96, 3), np.uint8)  # another size is resized to the fixed 64 first
    result = afd.detection_rate(images, cascade, ["a.jpg", "b.jpg", "c.jpg"], progress=False)
    assert list(result.table.columns) == ["file", "faces", "detected", "x", "y", "w", "h", "score"]
    assert result.table.file.tolist() == ["a.jpg", "b.jpg", "c.jpg"] and result.rate == 0.0
    assert result.detector["params"] == {
        "size": 64, "grey": True, "equalize_hist": True, "scale_factor": 1.1, "min_neighbors": 5, "min_size": 24,
    }
    assert result.detector["sha256"] == afd.CASCADE_SHA256


class Bright(afd.Detector):
    """Toy detector: a 'face' wherever the image is brighter than a threshold."""

    name = "bright"

    def __init__(self, threshold: float):
        self.threshold = threshold

    def detect(self, image):
        return [afd.Detection(0, 0, 8, 8, 1.0)] if image.mean() > self.threshold else []


def test_a_registered_detector_plugs_in():
    afd.register("bright")(lambda arg: Bright(float(arg)))
    det = afd.make_detector("bright:100")
    images = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (0, 50, 150, 200)])
    assert afd.detection_rate(images, det, progress=False).rate == 0.5
    assert afd.make_detector(det) is det
    with pytest.raises(UserError, match="unknown detector 'yolo'"):
        afd.make_detector("yolo:/nowhere/best.pt")


def _offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no internet in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_offline_without_detector_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("KAGGLE_GAN_CACHE", str(tmp_path))
    _offline(monkeypatch)
    with pytest.raises(UserError, match="--detector path/to/lbpcascade_animeface.xml") as info:
        afd.make_detector(None)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="not found"):
        afd.make_detector(str(tmp_path / "missing.xml"))
    bad = tmp_path / "bad.xml"
    bad.write_text("<opencv_storage></opencv_storage>")
    with pytest.raises(UserError, match="not an OpenCV cascade"):
        afd.make_detector(str(bad))


def test_under_make_the_hint_names_the_make_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("MAKELEVEL", "1")
    with pytest.raises(UserError, match="pass DETECTOR=path/to/lbpcascade_animeface.xml$"):
        afd.make_detector(str(tmp_path / "missing.xml"))


@needs_cascade
def test_cached_cascade_is_used_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("KAGGLE_GAN_CACHE", str(tmp_path))
    _offline(monkeypatch)
    (tmp_path / "detectors").mkdir()
    shutil.copy(CASCADE, tmp_path / "detectors" / afd.CASCADE_FILENAME)
    det = afd.make_detector(None)
    assert det.describe()["file"] == str(tmp_path / "detectors" / afd.CASCADE_FILENAME)


def test_opencv_5_without_cascade_detectors_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    """OpenCV 5 removed CascadeClassifier: a clear error, not an AttributeError deep in a run."""
    import cv2

    monkeypatch.delattr(cv2, "CascadeClassifier")
    xml = tmp_path / "cascade.xml"
    xml.write_text("<opencv_storage></opencv_storage>")
    with pytest.raises(UserError, match=r"has no CascadeClassifier .*opencv-python-headless<5") as err:
        afd.make_detector(str(xml))
    assert "\n" not in str(err.value)
