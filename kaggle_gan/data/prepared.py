"""The prepared data folder: written once by prepare, read by training, scoring and the neighbour search."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..core.io import UserError, atomic_path, ensure_free_space, read_json, sha256_file, write_json
from ..core.version import __version__


@dataclass(frozen=True)
class Prepared:
    """A prepared data folder: ``images`` is (N, H, W, 3) uint8, memory-mapped; ``labels`` (N,) int64
    class indices into ``classes`` (the class names), (N, K) 0/1 sets of them (i-CLEVR's objects),
    or None for unlabelled data."""

    folder: Path
    images: np.ndarray
    meta: dict
    labels: Optional[np.ndarray] = None

    @property
    def classes(self) -> List[str]:
        return list(self.meta.get("classes", []))

    @property
    def files(self) -> List[str]:
        import pandas as pd

        manifest = pd.read_csv(self.folder / "manifest.csv")
        kept = manifest[manifest.status == "ok"].sort_values("index")
        return kept.file.tolist()


def load_prepared(folder: Path) -> Prepared:
    """Open a folder written by :func:`prepare`; a clear error if it is missing or unfinished."""
    folder = Path(folder)
    if not (folder / "prepare.json").is_file() or not (folder / "images.npy").is_file():
        raise UserError(f"{folder} holds no prepared data; run `make prepare` (kaggle-gan prepare) first")
    meta = read_json(folder / "prepare.json")
    labels = np.load(folder / "labels.npy") if meta.get("labels_sha256") else None
    return Prepared(folder, np.load(folder / "images.npy", mmap_mode="r"), meta, labels)


def write_prepared(out: Path, images: np.ndarray, manifest, meta: dict, labels: Optional[np.ndarray] = None,
                   classes: Optional[List[str]] = None) -> Prepared:
    """Write a prepared folder: ``images.npy`` (N, H, W, 3) uint8, ``labels.npy`` when labelled ((N,) int64
    indices into ``classes``, or (N, K) 0/1 int64 sets of them), ``manifest.csv``, and ``prepare.json`` last (it marks the folder finished)."""
    import contextlib

    out.mkdir(parents=True, exist_ok=True)
    ensure_free_space(out, images.nbytes + (0 if labels is None else np.asarray(labels).nbytes))
    done = out / "prepare.json"
    # Every file is written under a temporary name first, so a full disk or a kill while writing leaves the
    # earlier prepared folder whole. Only then is prepare.json removed (the folder is unfinished until it is
    # back), and the files move into place as the block closes.
    with contextlib.ExitStack() as stack:
        tmp_images = stack.enter_context(atomic_path(out / "images.npy", suffix=".npy"))
        np.save(tmp_images, images)
        tmp_manifest = stack.enter_context(atomic_path(out / "manifest.csv"))
        manifest.to_csv(tmp_manifest, index=False)
        meta = dict(meta, kept=len(images), skipped=int((manifest.status != "ok").sum()), shape=list(images.shape),
                    images_sha256=sha256_file(tmp_images), version=__version__)
        if labels is not None:
            tmp_labels = stack.enter_context(atomic_path(out / "labels.npy", suffix=".npy"))
            np.save(tmp_labels, np.asarray(labels, dtype=np.int64))
            meta.update(classes=list(classes), labels_sha256=sha256_file(tmp_labels))
        done.unlink(missing_ok=True)
    if labels is None:
        (out / "labels.npy").unlink(missing_ok=True)
    write_json(done, meta)
    return load_prepared(out)
