"""Labels for conditional data: class folders, a CSV of filename,label rows, the i-CLEVR lab's object sets."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.io import UserError, read_json, sha256_file
from .imagefiles import natural_key


def label_spec(labels: Optional[str]) -> Optional[dict]:
    if labels is None:
        return None
    if labels == "folders":
        return {"kind": "folders"}
    if labels == "iclevr":
        return {"kind": "iclevr"}  # completed by iclevr_spec once the source is known
    path = Path(labels).expanduser()
    if not path.is_file():
        raise UserError(f"labels file not found: {path}; pass --labels folders or a CSV of filename,label rows")
    return {"kind": "csv", "file": str(path), "sha256": sha256_file(path)}


def read_label_csv(path: Path) -> Dict[str, str]:
    """``filename,label`` rows (an optional header ``filename,label``) -> {filename: label}; bad rows are errors."""
    import csv

    out: Dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.reader(fh), 1):
            if not row or (line == 1 and [c.strip().lower() for c in row] == ["filename", "label"]):
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise UserError(f"{path}:{line}: expected 'filename,label', got {','.join(row)!r}")
            name = row[0].strip().replace("\\", "/")
            if name in out:
                raise UserError(f"{path}:{line}: {name} is labelled twice")
            out[name] = row[1].strip()
    if not out:
        raise UserError(f"{path} holds no filename,label rows")
    return out


ICLEVR_IMAGE_DIRS = ("images", "iclevr", ".")  # where the lab's layout keeps the files train.json names


def iclevr_spec(source: Path) -> dict:
    """``--labels iclevr``: the lab's ``objects.json`` (name -> index) and ``train.json`` (file -> object
    names) in ``source``, the images in its ``images/`` or ``iclevr/`` folder or beside the JSON files."""
    if source.is_file():
        raise UserError(f"--labels iclevr needs a folder holding objects.json and train.json, not {source}")
    missing = [f for f in ("objects.json", "train.json") if not (source / f).is_file()]
    if missing:
        raise UserError(f"{source} has no {' or '.join(missing)}; --labels iclevr needs the lab's layout "
                        "(objects.json, train.json, images/)")
    objects = read_json(source / "objects.json")
    if not isinstance(objects, dict) or sorted(objects.values()) != list(range(len(objects))):
        raise UserError(f"{source / 'objects.json'} must map each object name to an index 0..K-1")
    return {"kind": "iclevr", "file": str(source / "train.json"), "sha256": sha256_file(source / "train.json"),
            "objects": [name for name, _i in sorted(objects.items(), key=lambda kv: kv[1])]}


def iclevr_labels(spec: dict, posix: List[str], source: Path) -> List[Optional[Tuple[str, ...]]]:
    """Each listed file's object set from train.json (None when it names the file not)."""
    table = read_json(Path(spec["file"]))
    if not isinstance(table, dict) or not table:
        raise UserError(f"{spec['file']} must map file names to lists of object names")
    first = next(iter(table))
    folder = next((d for d in ICLEVR_IMAGE_DIRS if (source / d / first).is_file()), None)
    if folder is None:
        raise UserError(f"{first} (named first in train.json) is in none of {', '.join(ICLEVR_IMAGE_DIRS)} "
                        f"under {source}; put the images in {source / 'images'}")
    known = set(spec["objects"])
    sets = {}
    for name, objects in table.items():
        bad = [o for o in objects if o not in known] if isinstance(objects, list) else [objects]
        if bad:
            raise UserError(f"{spec['file']}: {name} names {bad[0]!r}, which objects.json does not list")
        sets[name if folder == "." else f"{folder}/{name}"] = tuple(objects)
    unknown = sorted(set(sets) - set(posix))
    if unknown:
        raise UserError(f"{spec['file']} names {len(unknown)} file(s) not in {source}, e.g. {unknown[0]}")
    return [sets.get(n) for n in posix]


def multi_hot(sets: Sequence[Sequence[str]], index: Dict[str, int]) -> np.ndarray:
    """(len(sets), len(index)) float32, 1 where an object is asked for (an object named twice counts once)."""
    out = np.zeros((len(sets), len(index)), np.float32)
    for row, names in enumerate(sets):
        for name in names:
            if name not in index:
                raise ValueError(f"unknown object {name!r}; objects.json lists {len(index)}, e.g. {next(iter(index))!r}")
            out[row, index[name]] = 1
    return out


def assign_labels(spec: dict, names: List[str], source: Path) -> Tuple[List[str], list]:
    """The label of every listed file (None: skipped, reported in the manifest), for a label spec:
    a class name, or for ``iclevr`` a tuple of object names."""
    posix = [n.replace(os.sep, "/") for n in names]
    if spec["kind"] == "iclevr":
        return names, iclevr_labels(spec, posix, source)
    if spec["kind"] == "folders":
        loose = [n for n in posix if "/" not in n]
        if loose:
            raise UserError(f"{loose[0]} (and {len(loose) - 1} more) not inside a class folder; "
                            "--labels folders needs DATA/class_name/*.jpg")
        return names, [n.split("/")[-2] for n in posix]
    table = read_label_csv(Path(spec["file"]))
    unknown = sorted(set(table) - set(posix))
    if unknown:
        raise UserError(f"{spec['file']} names {len(unknown)} file(s) not in {source}, e.g. {unknown[0]}; "
                        "file names must be relative to DATA")
    return names, [table.get(n) for n in posix]


def label_array(spec: Optional[dict], labels: list) -> Tuple[Optional[List[str]], Optional[np.ndarray]]:
    """(class names, labels.npy's array): (N,) class indices, or for ``iclevr`` (N, K) multi-hot."""
    if not spec:
        return None, None
    if spec["kind"] == "iclevr":
        classes = list(spec["objects"])
        return classes, multi_hot(labels, {c: i for i, c in enumerate(classes)})
    classes = sorted(set(labels), key=natural_key)
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([index[c] for c in labels])
