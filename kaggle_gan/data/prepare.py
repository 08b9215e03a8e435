"""Data preparation: ``faces.zip``, a folder of images or a URL -> one uint8 array.

``prepare`` writes ``images.npy`` of shape (N, H, W, 3), a ``manifest.csv``
(one row per input file: kept or skipped, and why) and ``prepare.json``,
written last, which marks the folder finished (:func:`kaggle_gan.data.prepared.load_prepared`
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
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..core.io import RunLock, UserError, cache_dir, download, read_json, sha256_file
from ..core.runtime import available_cores
from .imagefiles import decode_image, natural_key
from .labels import assign_labels, iclevr_spec, label_array, label_spec
from .prepared import Prepared, load_prepared, write_prepared

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


def _prepare_locked(data: str, source: Path, out: Path, size: int, resample: str, workers: Optional[int],
                    force: bool, labels: Optional[str] = None) -> Prepared:
    fp = fingerprint(source)
    spec = label_spec(labels)
    if spec and spec["kind"] == "iclevr":
        spec = iclevr_spec(source)
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
        names, names_labels = assign_labels(spec, names, source)
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

    classes, labels_array = label_array(spec, kept_labels)
    prepared = write_prepared(out, np.stack(arrays), manifest, dict(want, source=str(data)), labels_array, classes)
    print(f"prepare: kept {len(arrays)} images, skipped {skipped} (see {out / 'manifest.csv'})"
          + (f"; {len(classes)} {'objects' if spec['kind'] == 'iclevr' else 'classes'}" if classes else ""))
    if skipped:
        print(manifest[manifest.status != "ok"].reason.value_counts().head(10).to_string())
    return prepared
