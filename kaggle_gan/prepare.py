"""Data preparation: ``faces.zip``, a folder of images or a URL -> one uint8 array.

``prepare`` writes ``images.npy`` of shape (N, H, W, 3), a ``manifest.csv``
(one row per input file: kept or skipped, and why) and ``prepare.json``,
written last, which marks the folder finished (:func:`kaggle_gan.data.load_prepared`
opens it). Training never decodes a JPEG again. Decoding runs in worker
processes that die with their parent; nothing is written until every image
is decoded, and then every file goes under a temporary name first.
"""
from __future__ import annotations

import os
import re
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import __version__
from .data import Prepared, load_prepared
from .imagefiles import decode_image, natural_key
from .io import RunLock, UserError, atomic_path, cache_dir, download, read_json, sha256_file, write_json
from .runtime import available_cores


HW6_FACES_URL = "https://huggingface.co/datasets/LeoFeng/MLHW_6/resolve/main/faces.zip"


FILTERS = ("bilinear", "bicubic", "lanczos", "box")


MAX_MEMBER_BYTES = 64 << 20  # no face crop is this large


MAX_RATIO = 200  # uncompressed / compressed; JPEGs barely compress, bombs compress ~1000x


_SKIP_NAMES = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$|Thumbs\.db$)")


def open_zip(path: Union[str, Path]) -> zipfile.ZipFile:
    """A ``ZipFile`` whose member names read as their writer meant.

    Info-ZIP's ``zip`` stores UTF-8 names without the UTF-8 flag (bit 11), so
    ``zipfile`` decodes them as cp437 (``faces/é.jpg`` -> ``faces/Ã©.jpg``).
    Such names are re-decoded as UTF-8 when that succeeds, as ``unzip`` does;
    ``orig_filename`` is kept, so the members still open.
    """
    zf = zipfile.ZipFile(path)
    for info in zf.infolist():
        if info.flag_bits & 0x800:
            continue
        try:
            fixed = info.filename.encode("cp437").decode("utf-8")
        except UnicodeError:
            continue
        if fixed != info.filename:
            zf.NameToInfo.pop(info.filename, None)
            info.filename = fixed
            zf.NameToInfo[fixed] = info
    return zf


def _list_zip(path: Path) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Members worth decoding, and (member, reason) for those refused unread."""
    keep, refused = [], []
    try:
        zf = open_zip(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{path} is not a readable zip ({err}); pass DATA= a zip, a folder or a URL") from None
    with zf:
        for info in zf.infolist():
            name = info.filename
            if info.is_dir():
                continue
            if _SKIP_NAMES.search(name):
                refused.append((name, "system file (OS metadata)"))
                continue
            parts = name.replace("\\", "/").split("/")
            if name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
                refused.append((name, "unsafe member path"))
            elif info.file_size > MAX_MEMBER_BYTES:
                refused.append((name, f"member too large ({info.file_size} bytes)"))
            elif info.compress_size and info.file_size / info.compress_size > MAX_RATIO and info.file_size > (1 << 20):
                refused.append((name, f"compression ratio {info.file_size // info.compress_size}:1 (zip bomb?)"))
            else:
                keep.append(name)
    return keep, refused


def _list_folder(path: Path) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Regular files worth decoding, and (file, reason) for those refused unread.

    FIFOs, devices and sockets are refused: opening a FIFO blocks forever and
    reading a device never ends. Symbolic links to regular files are followed.
    """
    import stat

    keep, refused = [], []
    for root, _dirs, files in os.walk(path):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), path)
            if _SKIP_NAMES.search(rel.replace(os.sep, "/")) or f.startswith("."):
                refused.append((rel, "system file (hidden or OS metadata)"))
                continue
            try:
                mode = os.stat(os.path.join(root, f)).st_mode
            except OSError as err:
                refused.append((rel, f"unreadable ({type(err).__name__})"))
                continue
            if stat.S_ISREG(mode):
                keep.append(rel)
            else:
                refused.append((rel, "not a regular file"))
    return keep, refused


def _printable(name: str) -> str:
    """A file name as it can be written to a UTF-8 manifest (undecodable bytes as \\xNN)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_WORKER_ZIP: Optional[zipfile.ZipFile] = None


def _die_with(parent: int) -> None:
    """Make this decoding worker die with the process that started it, even after a ``kill -9`` of that
    process (Linux: ``PR_SET_PDEATHSIG``), so no orphan lingers, holding memory and open files."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown is all there is
        return
    if os.getppid() != parent:  # the parent died before the request above was in place
        os._exit(1)


def _worker_init(zip_path: Optional[str], parent: Optional[int] = None) -> None:
    global _WORKER_ZIP
    if parent is not None:
        _die_with(parent)
    _WORKER_ZIP = open_zip(zip_path) if zip_path else None


def _read(source: str, name: str) -> bytes:
    if _WORKER_ZIP is not None:
        with _WORKER_ZIP.open(name) as fh:
            data = fh.read(MAX_MEMBER_BYTES + 1)  # never trust the declared size
    else:
        with open(os.path.join(source, name), "rb") as fh:
            data = fh.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise ValueError("file too large")
    return data


def _decode_chunk(args) -> List[Tuple[Optional[np.ndarray], str]]:
    source, names, size, resample, fit = args
    out = []
    for name in names:
        try:
            out.append((decode_image(_read(source, name), size, resample, fit), ""))
        except ValueError as err:
            out.append((None, str(err)))
        except Exception as err:  # zip CRC errors, permission errors, ...
            out.append((None, f"unreadable ({type(err).__name__}: {err})"))
    return out


def _decode_all(source: Path, is_zip: bool, names: Sequence[str], size: int, resample: str, workers: int,
                fit: str = "crop"):
    from tqdm.auto import tqdm

    chunk = 256
    tasks = [(str(source), names[i : i + chunk], size, resample, fit) for i in range(0, len(names), chunk)]
    bar = tqdm(total=len(names), unit="img", desc="prepare")
    results: List[Tuple[Optional[np.ndarray], str]] = []
    if workers <= 1 or len(tasks) == 1:
        _worker_init(str(source) if is_zip else None)
        try:
            for t in tasks:
                results.extend(_decode_chunk(t))
                bar.update(len(t[1]))
        finally:
            _worker_init(None)
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
        initargs = (str(source) if is_zip else None, os.getpid())
        with ProcessPoolExecutor(workers, ctx, initializer=_worker_init, initargs=initargs) as ex:
            for t, res in zip(tasks, ex.map(_decode_chunk, tasks)):
                results.extend(res)
                bar.update(len(t[1]))
    bar.close()
    return results


def resolve_source(data: str) -> Path:
    """``DATA`` as given by the user -> a local zip or folder (downloading a URL)."""
    if re.match(r"^https?://", data):
        name = data.rstrip("/").split("/")[-1].split("?")[0] or "data.zip"
        return download(
            data,
            cache_dir() / "downloads" / name,
            what=name,
            offline_hint="Offline: download it elsewhere and pass DATA=path/to/faces.zip (or --data).",
        )
    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(f"data not found: {path}; pass DATA= a zip, a folder of images or a URL")
    return path


def fingerprint(path: Path) -> dict:
    """Cheap identity of the input: content hash for a file, names/sizes/mtimes for a folder."""
    import hashlib

    if path.is_file():
        return {"kind": "file", "sha256": sha256_file(path), "bytes": path.stat().st_size}
    h = hashlib.sha256()
    names, _refused = _list_folder(path)
    names.sort()
    for rel in names:
        try:
            st = (path / rel).stat()
        except OSError:  # vanished since listing: still part of the identity, by name
            h.update(f"{_printable(rel)}\0gone\n".encode())
            continue
        h.update(f"{_printable(rel)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"kind": "folder", "listing_sha256": h.hexdigest(), "files": len(names)}


def prepare(
    data: str,
    out: Path,
    size: int = 64,
    resample: str = "bilinear",
    workers: Optional[int] = None,
    force: bool = False,
    labels: Optional[str] = None,
) -> Prepared:
    """Decode, convert to RGB and resize every image of ``data`` into ``out``.

    ``labels`` makes a labelled data set (``labels.npy`` beside ``images.npy``,
    class names in ``prepare.json``): ``"folders"`` takes each image's class
    from its folder (``class_name/*.jpg``), any other value is a CSV file of
    ``filename,label`` rows (file names relative to ``data``), and ``"iclevr"``
    reads the i-CLEVR lab's layout (``objects.json``, ``train.json``,
    ``images/``) into (N, K) multi-hot object sets. A no-op when
    ``out`` already holds the same input at the same size, filter and labels.
    """
    if size < 8 or size > 1024:
        raise UserError(f"size must be between 8 and 1024, got {size}")
    if resample not in FILTERS:
        raise UserError(f"unknown resize filter {resample!r}; choose one of {', '.join(FILTERS)}")
    out = Path(out)
    source = resolve_source(data)
    # two prepares into one folder would interleave their files; the lock refuses the second
    with RunLock(out, hint="wait for it to finish or prepare into another folder (--out)"):
        for stale in out.glob(".tmp-*"):  # left by a prepare killed mid-write
            if stale.is_file():
                stale.unlink()
        return _prepare_locked(data, source, out, size, resample, workers, force, labels)


def _label_spec(labels: Optional[str]) -> Optional[dict]:
    if labels is None:
        return None
    if labels == "folders":
        return {"kind": "folders"}
    if labels == "iclevr":
        return {"kind": "iclevr"}  # completed by _iclevr_spec once the source is known
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


def _iclevr_spec(source: Path) -> dict:
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


def _iclevr_labels(spec: dict, posix: List[str], source: Path) -> List[Optional[Tuple[str, ...]]]:
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


def _assign_labels(spec: dict, names: List[str], source: Path) -> Tuple[List[str], list]:
    """The label of every listed file (None: skipped, reported in the manifest), for a label spec:
    a class name, or for ``iclevr`` a tuple of object names."""
    posix = [n.replace(os.sep, "/") for n in names]
    if spec["kind"] == "iclevr":
        return names, _iclevr_labels(spec, posix, source)
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


def _prepare_locked(data: str, source: Path, out: Path, size: int, resample: str, workers: Optional[int],
                    force: bool, labels: Optional[str] = None) -> Prepared:
    fp = fingerprint(source)
    spec = _label_spec(labels)
    if spec and spec["kind"] == "iclevr":
        spec = _iclevr_spec(source)
    want = {"fingerprint": fp, "size": size, "resample": resample, "labels": spec}
    done = out / "prepare.json"
    if not force and done.is_file() and (out / "images.npy").is_file():
        meta = read_json(done)
        if {k: meta.get(k) for k in want} == want:
            print(f"prepare: {out} is up to date ({meta['kept']} images), nothing to do")
            return load_prepared(out)

    is_zip = source.is_file()
    if is_zip:
        names, refused = _list_zip(source)
    else:
        names, refused = _list_folder(source)
    names.sort(key=natural_key)
    names_labels: List[Optional[str]] = [None] * len(names)
    if spec:
        if spec["kind"] == "iclevr":  # the layout's own JSON files are not images
            names = [n for n in names if not n.lower().endswith(".json")]
        names, names_labels = _assign_labels(spec, names, source)
        unlabelled = "not in train.json" if spec["kind"] == "iclevr" else "no label in the CSV"
        refused += [(n, unlabelled) for n, lab in zip(names, names_labels) if lab is None]
        keep = [i for i, lab in enumerate(names_labels) if lab is not None]
        names, names_labels = [names[i] for i in keep], [names_labels[i] for i in keep]
    workers = workers or available_cores()
    fit = "squash" if spec and spec["kind"] == "iclevr" else "crop"  # the lab resizes its 320x240 frames whole
    results = _decode_all(source, is_zip, names, size, resample, workers, fit)

    import pandas as pd

    rows, arrays, kept_labels = [], [], []
    for name, label, (arr, reason) in zip(names, names_labels, results):
        if arr is None:
            rows.append({"index": -1, "file": _printable(name), "status": "skipped", "reason": reason})
        else:
            rows.append({"index": len(arrays), "file": _printable(name), "status": "ok", "reason": ""})
            arrays.append(arr)
            kept_labels.append(label)
    rows += [{"index": -1, "file": _printable(n), "status": "skipped", "reason": r} for n, r in refused]
    manifest = pd.DataFrame(rows, columns=["index", "file", "status", "reason"])
    skipped = int((manifest.status != "ok").sum())
    if not arrays:
        reasons = manifest.reason.value_counts().head(3).to_dict()
        raise UserError(f"no usable image in {source} ({len(rows)} files; reasons: {reasons}); check DATA=")

    classes, label_array = _label_array(spec, kept_labels)
    prepared = write_prepared(out, np.stack(arrays), manifest, dict(want, source=str(data)), label_array, classes)
    print(f"prepare: kept {len(arrays)} images, skipped {skipped} (see {out / 'manifest.csv'})"
          + (f"; {len(classes)} {'objects' if spec['kind'] == 'iclevr' else 'classes'}" if classes else ""))
    if skipped:
        print(manifest[manifest.status != "ok"].reason.value_counts().head(10).to_string())
    return prepared


def _label_array(spec: Optional[dict], labels: list) -> Tuple[Optional[List[str]], Optional[np.ndarray]]:
    """(class names, labels.npy's array): (N,) class indices, or for ``iclevr`` (N, K) multi-hot."""
    if not spec:
        return None, None
    if spec["kind"] == "iclevr":
        classes = list(spec["objects"])
        return classes, multi_hot(labels, {c: i for i, c in enumerate(classes)})
    classes = sorted(set(labels), key=natural_key)
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([index[c] for c in labels])


def write_prepared(out: Path, images: np.ndarray, manifest, meta: dict, labels: Optional[np.ndarray] = None,
                   classes: Optional[List[str]] = None) -> Prepared:
    """Write a prepared folder: ``images.npy`` (N, H, W, 3) uint8, ``labels.npy`` when labelled ((N,) int64
    indices into ``classes``, or (N, K) 0/1 int64 sets of them), ``manifest.csv``, and ``prepare.json`` last (it marks the folder finished)."""
    import contextlib

    out.mkdir(parents=True, exist_ok=True)
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
