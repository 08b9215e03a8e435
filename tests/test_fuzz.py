"""Bad input: a few hundred hostile or broken files fed to ``prepare``, and bad configuration at the command line.

The fuzz set is drawn from a seeded RNG, so a failure reproduces. Every input
file must come out of ``prepare`` either kept or skipped with a reason in the
manifest; every good image must be kept; nothing may be written outside the
output folder; and the peak memory of the whole run (workers included) stays
far below what any bomb in the set would need.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Dict, List, Set, Tuple

import numpy as np
import pandas as pd
import pytest
from PIL import Image

SEED = 2022
MEMORY_LIMIT_MB = 600  # a single bomb in the set would need gigabytes


def png(width: int, height: int, bit_depth: int = 8, colour: int = 2, raw: bytes = b"") -> bytes:
    """A PNG with any declared header; ``raw`` is the (filter byte + row) data, possibly far too short."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def rgb48_png(rng: np.random.Generator, side: int = 40) -> bytes:
    rows = rng.integers(0, 65535, (side, side * 3), dtype=np.uint16).astype(">u2").tobytes()
    stride = side * 6
    raw = b"".join(b"\0" + rows[i * stride:(i + 1) * stride] for i in range(side))
    return png(side, side, 16, 2, raw)


def jpeg_with_size(good_jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) declares another size."""
    at = good_jpeg.find(b"\xff\xc0")
    assert at > 0
    return good_jpeg[: at + 5] + struct.pack(">HH", height, width) + good_jpeg[at + 9:]


def encode(arr: np.ndarray, fmt: str, mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt, **kw)
    return buf.getvalue()


def fuzz_set(rng: np.random.Generator) -> Tuple[Dict[str, bytes], Set[str]]:
    """{relative path: bytes} of a few hundred files, and the paths of the good images among them."""
    files: Dict[str, bytes] = {}
    good: Set[str] = set()
    yy, xx = np.mgrid[0:48, 0:48] / 48

    def picture() -> np.ndarray:
        img = rng.uniform(0, 255, 3) + 60 * np.stack([np.sin(7 * xx), np.cos(5 * yy), xx * yy], -1)
        return np.clip(img, 0, 255).astype(np.uint8)

    # good images in every awkward shape they arrive in
    for i in range(20):
        files[f"good/{i}.jpg"] = encode(picture(), "JPEG")
        files[f"good/{i}.png"] = encode(picture(), "PNG")
    files["good/cmyk.jpg"] = encode(picture(), "JPEG", "CMYK")
    files["good/grey16.png"] = encode(rng.integers(0, 65535, (40, 52)).astype(np.uint16), "PNG", "I;16")
    files["good/rgb48.png"] = rgb48_png(rng)
    files["good/palette.gif"] = encode(picture(), "GIF", "P")
    files["good/rgba.png"] = encode(picture(), "PNG", "RGBA")
    files["good/bilevel.png"] = encode(picture(), "PNG", "1")
    files["good/tiff.tif"] = encode(picture(), "TIFF")
    files["good/bitmap.bmp"] = encode(picture(), "BMP")
    files["good/webp.webp"] = encode(picture(), "WEBP")
    files["good/png_named.jpg"] = encode(picture(), "PNG")
    files["good/jpeg_named.txt"] = encode(picture(), "JPEG")
    files["good/no_extension"] = encode(picture(), "PNG")
    files["good/a/b/c/d/nested.jpg"] = encode(picture(), "JPEG")
    files["good/wide.jpg"] = encode(np.concatenate([picture(), picture()], 1), "JPEG")
    good |= set(files)

    jpeg, pngb = encode(picture(), "JPEG"), encode(picture(), "PNG")
    magics = [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\0", b"MM\0*", b"RIFF\0\0\0\0WEBP", b""]
    exts = [".jpg", ".png", ".gif", ".bmp", ".tif", ".webp", ".txt", ""]
    for i in range(150):  # random bytes, half of them behind a real format's magic number
        body = magics[i % len(magics)] + rng.bytes(int(rng.integers(1, 6000)))
        files[f"bad/random/{i}{exts[i % len(exts)]}"] = body
    for i in range(90):  # truncated real files, cut anywhere between the header and the last tenth
        full = jpeg if i % 2 else pngb
        files[f"bad/truncated/{i}{'.jpg' if i % 2 else '.png'}"] = full[: int(rng.integers(1, len(full) * 9 // 10))]
    for i in range(20):
        files[f"bad/empty/{i}.jpg"] = b""
    for i, (w, h) in enumerate([(100_000, 100_000), (65_535, 65_535), (7_000, 7_000), (1, 60_000_000),
                                (2**31 - 1, 2**31 - 1)]):  # decompression bombs: huge declared size, tiny file
        files[f"bad/bomb/png{i}.png"] = png(w, h, 8, 2, b"\0" * 64)
        if w * h > 65_535 * 65_535 or w >= 7_000:  # JPEG sizes stop at 65535 a side
            files[f"bad/bomb/jpeg{i}.jpg"] = jpeg_with_size(jpeg, min(w, 65_535), min(h, 65_535))
    files["bad/zero_size.png"] = png(0, 0, 8, 2, b"")
    files["bad/text.jpg"] = b"<html>404 not found</html>\n" * 10
    files["bad/zip_in_disguise.png"] = _zip_bytes({"0.jpg": jpeg})
    return files, good


def _zip_bytes(members: Dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tree(root: Path, skip: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if skip not in p.parents and p != skip)


def _prepare_measured(data: Path, out: Path, cwd: Path, home: Path) -> dict:
    """Run prepare (2 workers) in a fresh process; return the peak resident memory (MB) of it and of its workers."""
    code = (
        "import json, resource, sys\n"
        "from kaggle_gan.data.prepare import prepare\n"
        f"prepare({str(data)!r}, {str(out)!r}, size=32, workers=2)\n"
        # VmHWM: this process's own peak (ru_maxrss would include the pytest process it was started from)
        "own = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps({'self_mb': own / 1024, 'workers_mb': kids / 1024}))\n"
    )
    env = dict(os.environ, HOME=str(home), KAGGLE_GAN_CACHE=str(home / "cache"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_prepare_survives_a_folder_of_hostile_files(tmp_path):
    rng = np.random.default_rng(SEED)
    files, good = fuzz_set(rng)
    src = tmp_path / "in"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    # things that are not files at all: a FIFO would block a naive reader forever
    os.mkfifo(src / "bad" / "fifo.jpg")
    (src / "bad" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (src / "bad" / "folder.jpg").mkdir()
    (src / "bad" / "._resource_fork.jpg").write_bytes(b"\0\5\26\7")
    (src / os.fsdecode(b"bad/name-\xff\xfe.jpg")).write_bytes(rng.bytes(100))
    expected_skips = {"bad/fifo.jpg", "bad/dangling.jpg", "bad/._resource_fork.jpg", "bad/name-\\xff\\xfe.jpg"}
    n_bad = len(files) - len(good) + len(expected_skips)
    assert n_bad >= 250

    (tmp_path / "cwd").mkdir()
    (tmp_path / "home").mkdir()
    before = _tree(tmp_path, tmp_path / "out")
    usage = _prepare_measured(src, tmp_path / "out", tmp_path / "cwd", tmp_path / "home")
    print(f"fuzz prepare (folder): {len(good)} good + {n_bad} bad files, peak RSS {usage}")

    m = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    assert m.file.is_unique
    listed = set(m.file)
    assert set(files) | expected_skips == listed  # every input accounted for, nothing invented
    kept = set(m[m.status == "ok"].file)
    assert kept == good, f"lost good images: {sorted(good - kept)}; kept bad ones: {sorted(kept - good)}"
    skipped = m[m.status != "ok"]
    assert (skipped.reason.str.len() > 0).all()
    assert skipped.set_index("file").reason["bad/fifo.jpg"] == "not a regular file"
    bombs = skipped[skipped.file.str.startswith("bad/bomb/")]
    assert len(bombs) == 9 and bombs.reason.str.contains("bomb").all(), bombs.to_string()
    images = np.load(tmp_path / "out" / "images.npy")
    assert images.shape == (len(good), 32, 32, 3)
    assert _tree(tmp_path, tmp_path / "out") == before  # nothing written outside the output folder
    assert usage["self_mb"] < MEMORY_LIMIT_MB and usage["workers_mb"] < MEMORY_LIMIT_MB


def test_prepare_refuses_unsafe_and_bomb_members_of_a_zip(tmp_path):
    rng = np.random.default_rng(SEED)
    good = {f"faces/{i}.jpg": encode(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), "JPEG") for i in range(8)}
    face = good["faces/0.jpg"]
    hostile = {
        "../escape.jpg": face,
        "faces/../../escape2.jpg": face,
        "/etc/absolute.jpg": face,
        "C:/windows.jpg": face,
        "..\\backslash.jpg": face,
        "faces/bomb.jpg": b"\0" * (48 << 20),  # 48 MB of zeros: ~1000:1
        "faces/huge.jpg": b"\0" * (80 << 20),  # over the per-member limit even before the ratio
        "faces/inner.zip": _zip_bytes(good),
        "__MACOSX/faces/._0.jpg": b"\0\5\26\7",
    }
    z = tmp_path / "faces.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in {**good, **hostile}.items():
            info = zipfile.ZipInfo("x")
            info.filename = name  # ZipInfo would normalise the name; an attacker's zip need not
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    assert z.stat().st_size < (1 << 20)
    (tmp_path / "cwd").mkdir()
    (tmp_path / "home").mkdir()
    before = _tree(tmp_path, tmp_path / "out")
    usage = _prepare_measured(z, tmp_path / "out", tmp_path / "cwd", tmp_path / "home")
    print(f"fuzz prepare (zip): peak RSS {usage}")
    m = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False).set_index("file")
    assert set(m.index) == set(good) | set(hostile)
    assert set(m[m.status == "ok"].index) == set(good)
    for name in ("../escape.jpg", "faces/../../escape2.jpg", "/etc/absolute.jpg", "C:/windows.jpg", "..\\backslash.jpg"):
        assert m.reason[name] == "unsafe member path", name
    assert "zip bomb" in m.reason["faces/bomb.jpg"]
    assert "too large" in m.reason["faces/huge.jpg"]
    assert m.reason["faces/inner.zip"] == "not an image"
    assert _tree(tmp_path, tmp_path / "out") == before
    assert not Path("/etc/absolute.jpg").exists()
    assert usage["self_mb"] < MEMORY_LIMIT_MB and usage["workers_mb"] < MEMORY_LIMIT_MB


@pytest.mark.parametrize("args, message", [
    (["train", "--set", "train.epoch=3"], "unknown config key 'train.epoch'"),
    (["train", "--set", "train.batch_size=many"], "train.batch_size must be int"),
    (["train", "--set", "model.z_dim=-100"], "model.z_dim must be positive"),
    (["prepare", "--data", "{data}", "--size", "-64"], "size must be between"),
    (["generate", "--count", "-5"], "--count must be positive"),
])
def test_bad_configuration_fails_before_any_work_with_one_line(args, message, tmp_path, capsys, monkeypatch):
    from kaggle_gan.cli import main

    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    args = [a.format(data=tmp_path / "data") for a in args]
    assert main([*args, "--work", str(tmp_path / "work")]) == 2  # the command's exit status
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing started, nothing written
