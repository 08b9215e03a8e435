"""Data preparation and serving.

``prepare`` turns ``faces.zip``, a folder of images or a URL into one uint8
array ``images.npy`` of shape (N, H, W, 3), a ``manifest.csv`` (one row per
input file: kept or skipped, and why) and ``prepare.json``, written last, which
marks the folder finished. Training never decodes a JPEG again.
"""
from __future__ import annotations

import io as _io
import os
import re
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from . import __version__
from .io import RunLock, UserError, atomic_path, cache_dir, download, read_json, sha256_file, write_json

HW6_FACES_URL = "https://huggingface.co/datasets/LeoFeng/MLHW_6/resolve/main/faces.zip"
FILTERS = ("bilinear", "bicubic", "lanczos", "box")
MAX_PIXELS = 40_000_000  # declared width * height above this is a decompression bomb
MAX_MEMBER_BYTES = 64 << 20  # no face crop is this large
MAX_RATIO = 200  # uncompressed / compressed; JPEGs barely compress, bombs compress ~1000x
MIN_SIDE = 8  # pixels; smaller images (icons, tracking pixels) are no faces, and a crop of them is mush
_SKIP_NAMES = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$|Thumbs\.db$)")


@dataclass(frozen=True)
class Prepared:
    """A prepared data folder: ``images`` is (N, H, W, 3) uint8, memory-mapped; ``labels`` (N,) int64
    class indices into ``classes`` (the class names), or None for unlabelled data."""

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


def _natural_key(name: str) -> Tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _to_rgb(img):
    """Any PIL mode -> RGB; alpha is composited on white, 16-bit is scaled, CMYK converted."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1 else 1), 0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def decode_image(data: bytes, size: int, resample: str = "bilinear") -> np.ndarray:
    """Bytes of any image file -> (size, size, 3) uint8, centre-cropped to a square.

    Raises ``ValueError`` with a short reason for anything that is not a usable image.
    """
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    if not data:
        raise ValueError("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(_io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ValueError("decompression bomb") from err
        except Image.UnidentifiedImageError as err:
            raise ValueError("not an image") from err
        except Exception as err:
            raise ValueError(f"corrupt or truncated ({type(err).__name__}: {err})") from err
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise ValueError(f"declared size {w}x{h} too large (decompression bomb?)")
        if w < MIN_SIDE or h < MIN_SIDE:
            raise ValueError(f"too small ({w}x{h}; under {MIN_SIDE} px on a side)")
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ValueError("decompression bomb") from err
        except Exception as err:
            raise ValueError(f"corrupt or truncated ({type(err).__name__}: {err})") from err
    img = _to_rgb(img)
    side = min(w, h)
    if w != h:
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), getattr(Image.Resampling, resample.upper()))
    arr = np.asarray(img, dtype=np.uint8)
    if arr.shape != (size, size, 3):
        raise ValueError(f"unexpected decoded shape {arr.shape}")
    return arr


# --- listing the input -------------------------------------------------------

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


# --- parallel decoding -------------------------------------------------------

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
    source, names, size, resample = args
    out = []
    for name in names:
        try:
            out.append((decode_image(_read(source, name), size, resample), ""))
        except ValueError as err:
            out.append((None, str(err)))
        except Exception as err:  # zip CRC errors, permission errors, ...
            out.append((None, f"unreadable ({type(err).__name__}: {err})"))
    return out


def _decode_all(source: Path, is_zip: bool, names: Sequence[str], size: int, resample: str, workers: int):
    from tqdm.auto import tqdm

    chunk = 256
    tasks = [(str(source), names[i : i + chunk], size, resample) for i in range(0, len(names), chunk)]
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


# --- the stage ---------------------------------------------------------------

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
    ``filename,label`` rows (file names relative to ``data``). A no-op when
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


def _assign_labels(spec: dict, names: List[str], source: Path) -> Tuple[List[str], List[Optional[str]]]:
    """The label of every listed file (None: skipped, reported in the manifest), for a label spec."""
    posix = [n.replace(os.sep, "/") for n in names]
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
    names.sort(key=_natural_key)
    names_labels: List[Optional[str]] = [None] * len(names)
    if spec:
        names, names_labels = _assign_labels(spec, names, source)
        refused += [(n, "no label in the CSV") for n, lab in zip(names, names_labels) if lab is None]
        keep = [i for i, lab in enumerate(names_labels) if lab is not None]
        names, names_labels = [names[i] for i in keep], [names_labels[i] for i in keep]
    workers = workers or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    results = _decode_all(source, is_zip, names, size, resample, workers)

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

    classes = sorted(set(kept_labels), key=_natural_key) if spec else None
    index = {c: i for i, c in enumerate(classes or [])}
    prepared = write_prepared(out, np.stack(arrays), manifest, dict(want, source=str(data)),
                              np.array([index[c] for c in kept_labels]) if spec else None, classes)
    print(f"prepare: kept {len(arrays)} images, skipped {skipped} (see {out / 'manifest.csv'})"
          + (f"; {len(classes)} classes" if classes else ""))
    if skipped:
        print(manifest[manifest.status != "ok"].reason.value_counts().head(10).to_string())
    return prepared


def write_prepared(out: Path, images: np.ndarray, manifest, meta: dict, labels: Optional[np.ndarray] = None,
                   classes: Optional[List[str]] = None) -> Prepared:
    """Write a prepared folder: ``images.npy`` (N, H, W, 3) uint8, ``labels.npy`` (N,) int64 indices into
    ``classes`` when labelled, ``manifest.csv``, and ``prepare.json`` last (it marks the folder finished)."""
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


def load_prepared(folder: Path) -> Prepared:
    """Open a folder written by :func:`prepare`; a clear error if it is missing or unfinished."""
    folder = Path(folder)
    if not (folder / "prepare.json").is_file() or not (folder / "images.npy").is_file():
        raise UserError(f"{folder} holds no prepared data; run `make prepare` (kaggle-gan prepare) first")
    meta = read_json(folder / "prepare.json")
    labels = np.load(folder / "labels.npy") if meta.get("labels_sha256") else None
    return Prepared(folder, np.load(folder / "images.npy", mmap_mode="r"), meta, labels)


def iter_image_files(folder: Path) -> List[Path]:
    """Image-like files of a folder (not recursive), in natural order."""
    folder = Path(folder)
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
        key=lambda p: _natural_key(p.name),
    )


def decode_files(files: Sequence[Path], size: int, resample: str = "bilinear", where: str = "the folder"):
    """Image files -> (names, (N, size, size, 3) uint8 prepared like the training data, original (w, h) each).

    A file that is not a usable image is a :class:`UserError` naming the first
    few culprits: scoring or searching half a folder would mislead.
    """
    from PIL import Image

    names, arrays, dims, bad = [], [], [], []
    for path in map(Path, files):
        try:
            data = path.read_bytes()
            with Image.open(_io.BytesIO(data)) as img:
                original = img.size
            arrays.append(decode_image(data, size, resample))
        except Exception as err:  # PIL raises many kinds for a bad file
            bad.append(f"{path.name} ({str(err) or type(err).__name__})")
            continue
        names.append(path.name)
        dims.append(original)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UserError(f"{len(bad)} of {len(files)} files in {where} are not images: {shown}; remove them")
    return names, np.stack(arrays), dims


class Batch(NamedTuple):
    """What a data source serves the training loop: inputs ``x`` and, for labelled data, class indices ``y`` (B,)."""

    x: "torch.Tensor"  # noqa: F821
    y: Optional["torch.Tensor"] = None  # noqa: F821


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8 with antialiased bilinear resampling (in chunks)."""
    import torch

    out = []
    for i in range(0, len(images), 4096):
        x = torch.from_numpy(np.array(images[i : i + 4096])).permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def fixed_noise(n: int, z_dim: int, seed: int) -> "torch.Tensor":  # noqa: F821
    """(n, z_dim) standard normal noise drawn on the CPU from ``seed``: the same on every device and call."""
    import torch

    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


def save_grid(images: "torch.Tensor", path: Path, nrow: int, padding: int = 2) -> Path:  # noqa: F821
    """Images (B, 3, H, W) in [-1, 1] as a PNG grid ``nrow`` wide, written atomically."""
    from torchvision.utils import save_image

    with atomic_path(path, suffix=".png") as tmp:
        save_image(images.float(), tmp, nrow=nrow, normalize=True, value_range=(-1, 1), padding=padding)
    return path


class Source(Protocol):
    """What the training loop needs from its data (see :class:`DeviceImages`, :class:`kaggle_gan.toy.Points`)."""

    device: "torch.device"  # noqa: F821
    classes: int  # 0 = unlabelled
    sha256: str  # identity of the data: a resumed run must see the same

    def __len__(self) -> int: ...

    def batch(self, index: "torch.Tensor", generator: "torch.Generator", keep: slice = slice(None)) -> Batch:  # noqa: F821
        """Examples ``index`` of the epoch's order (randomness for all of them from ``generator``), rows ``keep``."""

    def fixed_inputs(self, z_dim: int, seed: int) -> Batch:
        """The noise (B, z_dim) and labels the run's pictures are drawn from, the same at every call."""

    def picture(self, fake: "torch.Tensor", critic: "torch.nn.Module", path: Path) -> None:  # noqa: F821
        """Draw the generator's output for ``fixed_inputs`` (and the critic, where it can be drawn) to ``path``."""


class DeviceImages:
    """The prepared uint8 images (and their labels) held on the training device, served as float batches.

    The training loop's image source. A source offers ``len()``, ``device``,
    ``classes`` (0 = unlabelled), ``sha256`` (what a resumed run must match),
    ``batch(index, generator, keep)``, ``fixed_inputs(z_dim, seed)`` and
    ``picture(fake, critic, path)``; :class:`kaggle_gan.toy.Points` is the other one.
    Sampling, flipping and normalising happen on the device; the host only
    hands over an index tensor.
    """

    def __init__(self, images: np.ndarray, device, channels_last: bool = False, labels: Optional[np.ndarray] = None,
                 classes: int = 0, flip: bool = True, sha256: str = ""):
        import torch

        self.device = torch.device(device)
        data = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8, a writable copy
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.data = data.contiguous(memory_format=memory_format).to(self.device)
        self.labels = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.channels_last, self.classes, self.flip, self.sha256 = channels_last, classes, flip, sha256

    def __len__(self) -> int:
        return self.data.shape[0]

    def batch(self, index, generator, keep: slice = slice(None)) -> Batch:
        """``index`` (B,) long -> (B', 3, H, W) float32 in [-1, 1] (and labels), B' = the ``keep`` slice of B.

        Flips are drawn from ``generator`` for the whole batch before slicing, so every
        rank under DDP draws the same and a resumed run draws what the unbroken one did.
        """
        import torch

        if self.flip:
            flip = (torch.rand(len(index), device=generator.device, generator=generator) < 0.5)[keep]
        index = index[keep].to(self.device, non_blocking=True)
        x = self.data.index_select(0, index)
        if self.flip:
            x = torch.where(flip.to(self.device).view(-1, 1, 1, 1), x.flip(3), x)
        x = x.float().mul_(2.0 / 255.0).sub_(1.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, None if self.labels is None else self.labels.index_select(0, index))

    def fixed_inputs(self, z_dim: int, seed: int) -> Batch:
        """The noise (and labels) of the run's sample grids: 64 images, or 8 a class with one row per class."""
        import torch

        if not self.classes:
            return Batch(fixed_noise(64, z_dim, seed))
        z = fixed_noise(8, z_dim, seed).repeat(self.classes, 1)  # the same 8 noises in every row
        return Batch(z, torch.arange(self.classes).repeat_interleave(8))

    def picture(self, fake, critic, path: Path) -> None:
        """Save ``fake`` (B, 3, H, W) in [-1, 1] as a grid 8 wide (a row per class for labelled data)."""
        save_grid(fake, path, nrow=8)
