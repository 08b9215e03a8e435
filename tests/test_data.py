import zipfile

import numpy as np
import pandas as pd
import pytest
from conftest import make_faces
from PIL import Image

from kaggle_gan.core.io import UserError
from kaggle_gan.data.prepare import prepare
from kaggle_gan.data.prepared import load_prepared


def odd_folder(folder):
    """Good images in every awkward mode, plus files that must be skipped."""
    make_faces(folder, n=4)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)  # not square: centre-cropped
    Image.fromarray(rgb).convert("L").save(folder / "grey.png")
    Image.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.gif")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (40, 40))).astype(np.uint16)).save(folder / "deep16.png")
    Image.fromarray(rgb).save(folder / "wrong_extension.txt", format="PNG")
    (folder / "nested").mkdir()
    Image.fromarray(rgb).save(folder / "nested" / "inner.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "noise.jpg").write_bytes(rng.bytes(3000))
    full = (folder / "1.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (folder / "notes.csv").write_text("a,b\n1,2\n")
    return folder


def test_prepare_keeps_every_usable_image_and_explains_every_skip(tmp_path):
    src = odd_folder(tmp_path / "in")
    p = prepare(str(src), tmp_path / "out", size=32, workers=2)
    m = pd.read_csv(tmp_path / "out" / "manifest.csv")
    kept = set(m[m.status == "ok"].file)
    assert {"grey.png", "rgba.png", "palette.gif", "cmyk.jpg", "deep16.png", "wrong_extension.txt",
            "nested/inner.jpg", "0.png", "1.jpg", "2.jpg", "3.jpg"} == kept
    skipped = m[m.status == "skipped"].set_index("file").reason.to_dict()
    assert set(skipped) == {"empty.jpg", "noise.jpg", "truncated.jpg", "notes.csv"}
    assert skipped["empty.jpg"] == "empty file" and "truncated" in skipped["truncated.jpg"]
    assert p.images.shape == (11, 32, 32, 3) and p.images.dtype == np.uint8
    assert p.meta["kept"] == 11 and p.meta["skipped"] == 4
    # RGBA is composited on white, grey becomes three equal channels
    grey = p.images[list(m[m.status == "ok"].sort_values("index").file).index("grey.png")]
    assert (grey[..., 0] == grey[..., 1]).all()


def test_prepare_is_idempotent_and_notices_a_changed_input(tmp_path, capsys):
    src = make_faces(tmp_path / "in", n=8)
    prepare(str(src), tmp_path / "out", workers=1)
    stamp = (tmp_path / "out" / "images.npy").stat().st_mtime_ns
    prepare(str(src), tmp_path / "out", workers=1)
    assert "up to date" in capsys.readouterr().out
    assert (tmp_path / "out" / "images.npy").stat().st_mtime_ns == stamp
    prepare(str(src), tmp_path / "out", size=32, workers=1)  # a new size re-prepares
    assert load_prepared(tmp_path / "out").images.shape[1] == 32
    Image.new("RGB", (64, 64), "red").save(src / "8.jpg")  # a new file re-prepares
    assert prepare(str(src), tmp_path / "out", size=32, workers=1).meta["kept"] == 9


def test_prepare_reads_a_zip_in_natural_order_and_refuses_unsafe_members(tmp_path):
    src = make_faces(tmp_path / "in", n=12)
    z = tmp_path / "faces.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i in range(12):
            name = f"{i}.jpg" if (src / f"{i}.jpg").exists() else f"{i}.png"
            zf.write(src / name, f"faces/{i}.jpg")
        zf.writestr("../evil.jpg", (src / "1.jpg").read_bytes())
        zf.writestr("/abs.jpg", (src / "1.jpg").read_bytes())
        zf.writestr("faces/bomb.bin", b"\0" * (5 << 20), compress_type=zipfile.ZIP_DEFLATED)
    p = prepare(str(z), tmp_path / "out", workers=2)
    assert p.files == [f"faces/{i}.jpg" for i in range(12)]
    m = pd.read_csv(tmp_path / "out" / "manifest.csv").set_index("file")
    assert m.loc["../evil.jpg", "reason"] == "unsafe member path"
    assert m.loc["/abs.jpg", "reason"] == "unsafe member path"
    assert "zip bomb" in m.loc["faces/bomb.bin", "reason"]
    assert not (tmp_path / "evil.jpg").exists()


def test_utf8_member_names_without_the_utf8_flag_read_as_written(tmp_path):
    """Info-ZIP's zip stores UTF-8 names without flag bit 11; they must not turn into cp437 mojibake."""
    src = make_faces(tmp_path / "in", n=2)
    z = tmp_path / "faces.zip"
    real = ["faces/é.jpg", "faces/顔.jpg"]
    stand_ins = ["faces/ab.jpg", "faces/xyz.jpg"]  # ASCII names of the same byte lengths, patched below
    assert [len(a.encode()) for a in real] == [len(b) for b in stand_ins]
    with zipfile.ZipFile(z, "w") as zf:
        for stand_in in stand_ins:
            zf.write(src / "1.jpg", stand_in)
    raw = z.read_bytes()
    for name, stand_in in zip(real, stand_ins):
        raw = raw.replace(stand_in.encode(), name.encode())  # local header and central directory alike
    z.write_bytes(raw)
    assert not any(i.flag_bits & 0x800 for i in zipfile.ZipFile(z).infolist())
    p = prepare(str(z), tmp_path / "out", size=32, workers=1)
    assert p.meta["kept"] == 2
    assert sorted(pd.read_csv(tmp_path / "out" / "manifest.csv", encoding="utf-8").file) == sorted(real)


def test_images_under_8_pixels_a_side_are_skipped_with_a_reason(tmp_path):
    src = make_faces(tmp_path / "in", n=3)
    Image.new("RGB", (7, 64), "red").save(src / "thin.png")
    Image.new("RGB", (8, 8), "red").save(src / "tiny.png")  # 8 px is still kept
    prepare(str(src), tmp_path / "out", size=32, workers=1)
    m = pd.read_csv(tmp_path / "out" / "manifest.csv").set_index("file")
    assert m.loc["thin.png", "status"] == "skipped" and m.loc["thin.png", "reason"] == "too small (7x64; under 8 px on a side)"
    assert m.loc["tiny.png", "status"] == "ok"


def test_no_usable_image_is_a_clear_error(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="no usable image"):
        prepare(str(tmp_path / "in"), tmp_path / "out", workers=1)
    assert not (tmp_path / "out" / "prepare.json").exists()
    with pytest.raises(UserError, match="data not found"):
        prepare(str(tmp_path / "missing.zip"), tmp_path / "out")
    with pytest.raises(UserError, match="not prepared|no prepared data"):
        load_prepared(tmp_path / "out")


def test_offline_url_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_GAN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="DATA="):
        prepare("http://127.0.0.1:9/faces.zip", tmp_path / "out")
