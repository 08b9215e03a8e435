"""Anime-face detection rate (AFD): the share of images in which a detector finds a face.

The judge's detector is not public. The default here is nagadomi's
``lbpcascade_animeface`` through OpenCV 4, with its preprocessing and
parameters fixed in :class:`CascadeParams` and recorded in every report.

A stronger detector (e.g. YOLO anime-face weights) plugs in without touching
the rest::

    from kaggle_gan.scoring.afd import Detection, Detector, register

    @register("yolo")
    def _yolo(arg: str) -> Detector:      # arg: what follows "yolo:" on the command line
        return MyYoloDetector(weights=arg)  # implements Detector.detect / describe

    # then: kaggle-gan score --detector yolo:/path/to/best.pt
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..core.io import UserError, cache_dir, download, option_hint, sha256_file

CASCADE_URL = "https://raw.githubusercontent.com/nagadomi/lbpcascade_animeface/master/lbpcascade_animeface.xml"
CASCADE_SHA256 = "9376d30ac38db6bda2a68b88b3b76bbd7e6aa33af47f7f5c76bc88ca75f1ce30"
CASCADE_BYTES = 246_945
CASCADE_FILENAME = "lbpcascade_animeface.xml"


def _detector_hint() -> str:
    return option_hint("--detector", "DETECTOR", f"path/to/{CASCADE_FILENAME}")


@dataclass(frozen=True)
class Detection:
    """One face box in pixels of the image given to the detector; ``score`` is detector-specific."""

    x: int
    y: int
    w: int
    h: int
    score: float


class Detector(ABC):
    """Finds anime faces in one image. Subclass it and :func:`register` a factory to plug one in."""

    name: str = "detector"

    @abstractmethod
    def detect(self, image: np.ndarray) -> List[Detection]:
        """(H, W, 3) uint8 RGB image -> detected faces (empty list when none)."""

    def describe(self) -> dict:
        """Everything that changes the rate (file, checksum, parameters), for the report."""
        return {"name": self.name}

    def confidence(self, image: np.ndarray) -> Tuple[bool, float]:
        """(counted as a face, how sure): what ``generate --select detector`` ranks by. By default the best
        detection's score; a detector with a finer measure overrides it."""
        found = self.detect(image)
        return bool(found), max((d.score for d in found), default=-np.inf)


@dataclass(frozen=True)
class CascadeParams:
    """The one place the cascade's preprocessing and parameters are decided.

    Calibrated on ``anime-faces-dev.zip`` at 64x64 (see README): minNeighbors 5
    keeps about 0.92 of real faces and no noise image; 3 would keep more real
    faces but also accept more GAN blobs.
    """

    size: int = 64  # the submission size; other sizes are resized first so rates stay comparable
    grey: bool = True
    equalize_hist: bool = True  # lifts the low-contrast faces GANs produce early on
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size: int = 24


class CascadeDetector(Detector):
    """``lbpcascade_animeface`` (or any OpenCV cascade file) with :class:`CascadeParams`."""

    name = "lbpcascade_animeface"

    def __init__(self, path: Path, params: CascadeParams = CascadeParams()):
        import cv2

        if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 dropped the cascade detectors
            raise UserError(f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 removed it); "
                            "install 'opencv-python-headless>=4.5,<5' (pip install 'opencv-python-headless<5')")
        self.path = Path(path)
        self.params = params
        self.sha256 = sha256_file(self.path)
        try:
            self._cascade = cv2.CascadeClassifier(str(self.path))
        except (cv2.error, SystemError):  # malformed XML raises instead of returning an empty classifier
            self._cascade = None
        if self._cascade is None or self._cascade.empty():
            raise UserError(f"{self.path} is not an OpenCV cascade file; pass {_detector_hint()}")

    def _input(self, image: np.ndarray) -> np.ndarray:
        """The detector's view of an RGB image: resized to ``params.size``, grey, equalised."""
        import cv2

        p = self.params
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        if image.shape[:2] != (p.size, p.size):
            image = cv2.resize(image, (p.size, p.size), interpolation=cv2.INTER_AREA)
        x = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if p.grey else image
        return cv2.equalizeHist(x) if p.equalize_hist else x

    def detect(self, image: np.ndarray) -> List[Detection]:
        return self._grouped(self._input(image))

    def _grouped(self, x: np.ndarray) -> List[Detection]:
        """Detections in an image already through :meth:`_input`, grouped as the rate counts them."""
        p = self.params
        boxes, neighbours = self._cascade.detectMultiScale2(
            x, scaleFactor=p.scale_factor, minNeighbors=p.min_neighbors, minSize=(p.min_size, p.min_size)
        )
        return [
            Detection(int(b[0]), int(b[1]), int(b[2]), int(b[3]), float(s))
            for b, s in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(neighbours).reshape(-1))
        ]

    def confidence(self, image: np.ndarray) -> Tuple[bool, float]:
        """(counted as a face, the largest weight the cascade's last stage gives any window of the image).

        The windows come ungrouped (minNeighbors 0), so an image the rate does
        not count still gets a confidence from its best near-miss.
        """
        p, x = self.params, self._input(image)
        _boxes, _levels, weights = self._cascade.detectMultiScale3(
            x, scaleFactor=p.scale_factor, minNeighbors=0, minSize=(p.min_size, p.min_size), outputRejectLevels=True,
        )
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        return bool(self._grouped(x)), float(weights.max()) if weights.size else -np.inf

    def describe(self) -> dict:
        return {"name": self.name, "file": str(self.path), "sha256": self.sha256, "params": asdict(self.params)}


# --- registry ----------------------------------------------------------------

_REGISTRY: Dict[str, Callable[[str], Detector]] = {}


def register(name: str) -> Callable[[Callable[[str], Detector]], Callable[[str], Detector]]:
    """Decorator: make ``--detector NAME:ARG`` build a detector with ``factory(ARG)``."""

    def deco(factory: Callable[[str], Detector]) -> Callable[[str], Detector]:
        _REGISTRY[name] = factory
        return factory

    return deco


def registered() -> List[str]:
    return sorted(_REGISTRY)


def cascade_file(path: Union[str, Path, None] = None) -> Path:
    """The cascade XML: ``path`` when given, else the cached copy, fetched once (sha256 checked)."""
    if path:
        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"detector file not found: {path}; pass {_detector_hint()}")
        return path
    return download(
        CASCADE_URL,
        cache_dir() / "detectors" / CASCADE_FILENAME,
        sha256=CASCADE_SHA256,
        size=CASCADE_BYTES,
        what=CASCADE_FILENAME,
        offline_hint=f"Offline: get {CASCADE_FILENAME} elsewhere and pass {_detector_hint()}",
    )


@register("cascade")
def _cascade_factory(arg: str) -> Detector:
    return CascadeDetector(cascade_file(arg or None))


def make_detector(spec: Union[None, str, Path, Detector] = None) -> Detector:
    """``None`` -> the default cascade; ``NAME:ARG`` -> a registered factory; a path -> a cascade file."""
    if isinstance(spec, Detector):
        return spec
    if spec is None or str(spec) == "":
        return _REGISTRY["cascade"]("")
    text = str(spec)
    name, sep, arg = text.partition(":")
    if sep and name in _REGISTRY:
        return _REGISTRY[name](arg)
    if sep and not Path(text).exists() and len(name) > 1:  # "yolo:..." with nothing registered as yolo
        raise UserError(f"unknown detector {name!r}; registered: {', '.join(registered())}, or pass a cascade path")
    return CascadeDetector(cascade_file(text))


# --- the rate ------------------------------------------------------------------

@dataclass
class AFDResult:
    """``rate`` in [0, 1]; ``table`` has one row per image: file, faces, detected, best box and score."""

    rate: float
    count: int
    detector: dict
    table: "pd.DataFrame" = field(repr=False)  # noqa: F821


def detection_rate(
    images: np.ndarray, detector: Detector, names: Optional[Sequence[str]] = None, progress: bool = True
) -> AFDResult:
    """Run ``detector`` on (N, H, W, 3) uint8 RGB images; the rate is the share with >= 1 face."""
    import pandas as pd
    from tqdm.auto import tqdm

    if len(images) == 0:
        raise ValueError("no images to detect faces in")
    names = list(names) if names is not None else [str(i) for i in range(len(images))]
    rows = []
    for name, img in zip(names, tqdm(images, desc="afd", unit="img", leave=False, disable=not progress)):
        found = detector.detect(np.asarray(img))
        best = max(found, key=lambda d: (d.score, d.w * d.h)) if found else None
        rows.append(
            {
                "file": name,
                "faces": len(found),
                "detected": bool(found),
                "x": best.x if best else -1,
                "y": best.y if best else -1,
                "w": best.w if best else 0,
                "h": best.h if best else 0,
                "score": best.score if best else 0.0,
            }
        )
    table = pd.DataFrame(rows)
    return AFDResult(float(table.detected.mean()), len(table), detector.describe(), table)


def real_rate(images: np.ndarray, images_sha256: str, holdout: np.ndarray, detector: Detector, cache: Path,
              progress: bool = True) -> float:
    """The detector's own ceiling: its rate on the held-out real ``images[holdout]``, cached per detector.

    These are the images of the FID's real-data floor. On tight Kaggle-style
    crops the cascade finds a face in only about 30% of real images, so a
    generated rate is read against this one.
    """
    import hashlib
    import json

    from ..core.io import read_json, write_json

    fields = {"images_sha256": images_sha256, "holdout": hashlib.sha256(holdout.tobytes()).hexdigest(),
              "detector": detector.describe()}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = Path(cache) / f"afd-real-{key}.json"
    try:
        stored = read_json(path)
        if stored["fields"] == json.loads(json.dumps(fields, default=str)):
            return float(stored["rate"])
    except Exception:  # missing, damaged or foreign: measure again
        pass
    rate = detection_rate(images[holdout], detector, progress=progress).rate
    write_json(path, {"fields": fields, "rate": rate})
    return rate
