import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from kaggle_gan.core.io import MARKER, UserError
from kaggle_gan.sampling.generate import generate
from kaggle_gan.sampling.submit import pack, validate


def test_generation_is_seeded_and_deterministic(run, tmp_path):
    a = generate(run, tmp_path / "a", n=30, seed=7, device="cpu", batch_size=8)
    b = generate(run, tmp_path / "b", n=30, seed=7, device="cpu", batch_size=8)
    c = generate(run, tmp_path / "c", n=30, seed=8, device="cpu")
    names = sorted(p.name for p in a.iterdir() if p.name != MARKER)
    assert names == sorted(f"{i}.jpg" for i in range(1, 31))
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    assert (a / "1.jpg").read_bytes() != (c / "1.jpg").read_bytes()
    with Image.open(a / "30.jpg") as img:
        assert img.size == (64, 64) and img.mode == "RGB"  # upsampled from the 32 px model
    assert (tmp_path / "a.json").is_file()


def test_regenerating_replaces_the_folder_whole(run, tmp_path):
    out = generate(run, tmp_path / "imgs", n=10, device="cpu")
    generate(run, out, n=5, device="cpu")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, *(f"{i}.jpg" for i in range(1, 6))]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_leftovers_of_a_killed_generate_are_cleared(run, tmp_path):
    (tmp_path / ".tmp-imgs.abc").mkdir()  # a half-written folder from a killed run
    (tmp_path / ".tmp-imgs.abc" / "1.jpg").write_bytes(b"half")
    (tmp_path / ".old-imgs.123").mkdir()
    generate(run, tmp_path / "imgs", n=3, device="cpu")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == [MARKER, "1.jpg", "2.jpg", "3.jpg"]


def write_images(folder, n=1000, size=64):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=60)
    return folder


def test_pack_writes_a_flat_archive_and_never_overwrites(tmp_path):
    imgs = write_images(tmp_path / "imgs")
    out = pack(imgs, tmp_path / "sub" / "images.tgz")
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert sorted(names, key=lambda n: int(n[:-4])) == [f"{i}.jpg" for i in range(1, 1001)]
    with pytest.raises(UserError, match="already exists"):
        pack(imgs, out)
    pack(imgs, out, force=True)
    z = pack(imgs, tmp_path / "sub" / "images.zip", fmt="zip")
    assert len(zipfile.ZipFile(z).namelist()) == 1000 and "/" not in "".join(zipfile.ZipFile(z).namelist())


def test_update_replaces_only_an_archive_pack_wrote_and_a_count_other_than_1000_is_flagged(tmp_path, capsys):
    imgs = write_images(tmp_path / "imgs", n=12)
    out = pack(imgs, tmp_path / "sub" / "images.tgz", count=12)
    assert "HW6 takes exactly 1000" in capsys.readouterr().out
    pack(imgs, out, count=12, update=True)  # its own, unchanged: replaced
    out.write_bytes(out.read_bytes() + b"edited")  # changed since: refused
    with pytest.raises(UserError, match="was not packed by kaggle_gan"):
        pack(imgs, out, count=12, update=True)
    mine = tmp_path / "sub" / "images.zip"
    mine.write_bytes(b"the user's own archive")
    with pytest.raises(UserError, match="already exists"):
        pack(imgs, mine, fmt="zip", count=12, update=True)
    assert mine.read_bytes() == b"the user's own archive"


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "1000.jpg").unlink(), "1 missing"),
    (lambda f: (f / "extra.png").write_bytes(b"x"), "unexpected files"),
    (lambda f: (f / "5.jpg").write_bytes(b"garbage"), "5.jpg: unreadable"),
    (lambda f: Image.new("RGB", (96, 96)).save(f / "6.jpg"), "6.jpg: 96x96, not 64x64"),
    (lambda f: Image.new("RGB", (64, 64)).save(f / "7.jpg", format="PNG"), "7.jpg: PNG, not JPEG"),
    (lambda f: Image.new("L", (64, 64)).save(f / "8.jpg"), "8.jpg: mode L"),
])
def test_submission_validation_refuses_bad_folders(tmp_path, damage, message):
    imgs = write_images(tmp_path / "imgs")
    damage(imgs)
    with pytest.raises(UserError, match=message):
        pack(imgs, tmp_path / "images.tgz")
    assert not (tmp_path / "images.tgz").exists()


def test_validate_counts_a_short_folder(tmp_path):
    imgs = write_images(tmp_path / "imgs", n=999)
    with pytest.raises(UserError, match="1 missing .e.g. 1000.jpg"):
        validate(imgs)
    assert len(validate(imgs, count=999)) == 999


def test_png_images_for_kaggle_are_generated_validated_and_zipped(run, tmp_path):
    """Generative Dog Images' format: N 64x64 PNGs named 1.png..N.png, flat in images.zip."""
    out = generate(run, tmp_path / "png", n=12, seed=3, size=64, device="cpu", image_format="png")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(f"{i}.png" for i in range(1, 13))
    jpg = generate(run, tmp_path / "jpg", n=12, seed=3, size=64, device="cpu")
    with Image.open(out / "5.png") as img:
        assert img.format == "PNG" and img.size == (64, 64) and img.mode == "RGB"
        lossless = np.asarray(img)
    assert np.abs(lossless.astype(int) - np.asarray(Image.open(jpg / "5.jpg")).astype(int)).mean() < 8  # same image
    archive = pack(out, tmp_path / "images.zip", fmt="zip", count=12)
    with zipfile.ZipFile(archive) as zf:
        assert zf.namelist() == [f"{i}.png" for i in range(1, 13)]
        assert np.array_equal(np.asarray(Image.open(zf.open("5.png"))), lossless)
    (out / "7.png").unlink()
    Image.fromarray(lossless).save(out / "7.png.jpg")
    with pytest.raises(UserError, match="1 missing .*7.png.*12 64x64 PNGs named 1.png..12.png"):
        validate(out, count=12)
    with pytest.raises(UserError, match="jpg or png"):
        generate(run, tmp_path / "gif", n=2, device="cpu", image_format="gif")
