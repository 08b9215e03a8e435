"""Validate a folder of generated images and pack it the way the homework's judge expects.

HW6: exactly ``1.jpg ... 1000.jpg``, 64x64, packed flat (no folder) as
``images.tgz``, under 2 MB. Kaggle-style competitions take a zip instead,
sometimes of PNGs (Generative Dog Images: 10,000 64x64 PNGs in ``images.zip``):
a folder of ``1.png ...`` is packed as PNGs.
"""
from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path
from typing import List

from ..core.io import UserError, atomic_path, sha256_file
from ..scoring.homework import SUBMISSION_COUNT

SIZE_LIMIT = 2 * 1024 * 1024
FORMATS = ("tgz", "zip")


def validate(folder: Path, count: int = 1000, size: int = 64) -> List[Path]:
    """The files to pack, in order; ``UserError`` naming every problem found (first few of each kind)."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"no image folder at {folder}; run `make generate` first")
    present = {p.name: p for p in folder.iterdir() if not p.name.startswith(".")}
    ext = "png" if "1.png" in present and "1.jpg" not in present else "jpg"  # what generate --image-format wrote
    kind = {"jpg": "JPEG", "png": "PNG"}[ext]
    wanted = [f"{i}.{ext}" for i in range(1, count + 1)]
    problems = []
    missing = [n for n in wanted if n not in present]
    extra = sorted(set(present) - set(wanted))
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if extra:
        problems.append(f"{len(extra)} unexpected files (e.g. {', '.join(extra[:3])})")
    bad = []
    for name in wanted:
        if name not in present:
            continue
        try:
            with Image.open(present[name]) as img:
                fmt, dims, mode = img.format, img.size, img.mode
                img.load()
        except Exception as err:
            bad.append(f"{name}: unreadable ({type(err).__name__})")
            continue
        if fmt != kind:
            bad.append(f"{name}: {fmt}, not {kind}")
        elif dims != (size, size):
            bad.append(f"{name}: {dims[0]}x{dims[1]}, not {size}x{size}")
        elif mode != "RGB":
            bad.append(f"{name}: mode {mode}, not RGB")
    if bad:
        problems.append(f"{len(bad)} bad images ({'; '.join(bad[:3])})")
    if problems:
        raise UserError(f"{folder} is not a valid submission: " + "; ".join(problems)
                        + f". Expected exactly {count} {size}x{size} {kind}s named 1.{ext}..{count}.{ext}")
    return [present[n] for n in wanted]


def _digest_file(out: Path) -> Path:
    """Where pack records the sha256 of the archive it wrote (a hidden file beside it)."""
    return out.with_name(f".{out.name}.sha256")


def written_by_pack(out: Path) -> bool:
    """True if ``out`` is an archive this tool packed and nobody changed since (its recorded sha256 matches)."""
    digest = _digest_file(out)
    try:
        return out.is_file() and digest.read_text().strip() == sha256_file(out)
    except OSError:
        return False


def pack(folder: Path, out: Path, fmt: str = "tgz", count: int = 1000, size: int = 64, force: bool = False,
         update: bool = False) -> Path:
    """Validate ``folder`` and write the archive ``out`` atomically.

    An existing ``out`` is replaced only with ``force``, or with ``update`` when it
    is an archive pack wrote itself and nobody changed since (``make submit``
    after new images); a file from anywhere else is never overwritten.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown FORMAT={fmt!r}; use tgz (the homework) or zip (Kaggle-style)")
    out = Path(out)
    if out.exists() and not force and not (update and written_by_pack(out)):
        why = "" if not update else " and was not packed by kaggle_gan (or was changed since)"
        raise UserError(f"{out} already exists{why}; move it away, or pass --force (make submit FORCE=1) to replace it")
    files = validate(folder, count, size)
    if count != SUBMISSION_COUNT:
        print(f"warning: packing {count} images; HW6 takes exactly {SUBMISSION_COUNT} (COUNT={SUBMISSION_COUNT}). "
              "Other counts are for competitions that ask for them")
    with atomic_path(out, suffix=f".{fmt}") as tmp:
        if fmt == "tgz":
            with tarfile.open(tmp, "w:gz") as tar:
                for f in files:
                    tar.add(f, arcname=f.name, recursive=False)
        else:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:  # JPEGs and PNGs do not compress further
                for f in files:
                    zf.write(f, arcname=f.name)
    with atomic_path(_digest_file(out)) as tmp:
        tmp.write_text(sha256_file(out) + "\n")
    nbytes = out.stat().st_size
    print(f"submit: {len(files)} images packed into {out} ({nbytes / 1e6:.2f} MB)")
    if nbytes > SIZE_LIMIT:
        print(f"warning: {out} is over the homework's 2 MB limit; generate with a lower JPEG quality (--quality)")
    return out
