"""Image files -> arrays: any decodable image becomes (size, size, 3) uint8 RGB, centre-cropped.

Shared by ``prepare`` (the training data), ``score`` and ``neighbours`` (folders
of generated or query images), so every image is read the same way.
"""
from __future__ import annotations

import io as _io
import re
import warnings
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from ..core.io import UserError

MAX_PIXELS = 40_000_000  # declared width * height above this is a decompression bomb
MIN_SIDE = 8  # pixels; smaller images (icons, tracking pixels) are no faces, and a crop of them is mush


def natural_key(name: str) -> Tuple:
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


def decode_image(data: bytes, size: int, resample: str = "bilinear", fit: str = "crop") -> np.ndarray:
    """Bytes of any image file -> (size, size, 3) uint8: centre-cropped to a square (``fit="crop"``), or
    resized whole to a square (``"squash"``, as the i-CLEVR lab does with its 320x240 frames).

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
    if w != h and fit == "crop":
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if img.size != (size, size):
        img = img.resize((size, size), getattr(Image.Resampling, resample.upper()))
    arr = np.asarray(img, dtype=np.uint8)
    if arr.shape != (size, size, 3):
        raise ValueError(f"unexpected decoded shape {arr.shape}")
    return arr


def iter_image_files(folder: Path) -> List[Path]:
    """Image-like files of a folder (not recursive), in natural order."""
    folder = Path(folder)
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
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
