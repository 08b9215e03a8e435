"""Nearest training images: exact chunked search, self-retrieval, robustness to mirroring and colour, outputs, errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile

import numpy as np
import pandas as pd
import pytest
from conftest import DEV_ZIP, cli, make_faces, needs_dev_faces

from kaggle_gan.core.io import UserError
from kaggle_gan.core.weights import WeightsMissing
from kaggle_gan.scoring import backbones as bb
from kaggle_gan.scoring import neighbours as nb
from kaggle_gan.scoring import sheet as sheet_mod

# Small untrained networks keep these tests at CPU speed; 32 px is enough to tell 64 px faces apart.
FAST = dict(backbone="resnet18", weights="random:0", input_size=32)


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- search ---------------------------------------------------------------------

@pytest.mark.parametrize("chunk,k", [(64, 5), (7, 10), (5000, 3)])
def test_chunked_search_equals_brute_force(chunk, k):
    rng = np.random.default_rng(0)
    index, queries = _unit(rng, 1000, 16).astype(np.float16), _unit(rng, 37, 16)
    sims, idx = nb.topk_cosine(queries, index, k=k, chunk=chunk)
    full = queries @ index.astype(np.float32).T
    want = np.argsort(-full, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(sims, np.take_along_axis(full, want, 1), rtol=1e-5, atol=1e-6)
    assert (np.diff(sims, axis=1) <= 0).all()


def test_k_larger_than_the_index_returns_every_image():
    rng = np.random.default_rng(1)
    sims, idx = nb.topk_cosine(_unit(rng, 3, 8), _unit(rng, 4, 8).astype(np.float16), k=10, chunk=2)
    assert idx.shape == (3, 4) and sorted(idx[0].tolist()) == [0, 1, 2, 3]


# --- the stage on made-up data -------------------------------------------------------

@pytest.fixture
def small(tmp_path):
    """16 made-up training images prepared into WORK/data, and a query folder of three of them."""
    from kaggle_gan.data.prepare import prepare

    faces = make_faces(tmp_path / "faces", n=16, seed=3)
    work = tmp_path / "work"
    prepare(str(faces), work / "data", size=64, workers=1)
    queries = work / "runs" / "r" / "images"
    queries.mkdir(parents=True)
    for name in ("4.png", "5.jpg", "9.jpg"):
        shutil.copy(faces / name, queries / name)
    return work


@pytest.mark.parametrize("backbone,input_size", [("resnet18", 32), ("vit_tiny_patch16_224", None), ("inception", None)])
def test_training_image_finds_itself_at_rank_one(small, backbone, input_size):
    s = nb.neighbours(small / "runs" / "r" / "images", small / "data", small, backbone=backbone, weights="random:0",
                      k=3, input_size=input_size, quiet=True)
    table = pd.read_csv(small / "runs" / "r" / "neighbours" / "neighbours.csv")
    top = table[table["rank"] == 1].set_index("query")
    for name in ("4.png", "5.jpg", "9.jpg"):
        assert top.loc[name, "train_file"] == name
        assert top.loc[name, "similarity"] == pytest.approx(1.0, abs=2e-3)
    assert s["proxy"] and "random:0" in s["label"]
    # A copy of a training image is as close as it gets: it is listed as a possible copy.
    assert {p["query"] for p in s["pairs_above"]} == {"4.png", "5.jpg", "9.jpg"}


def test_index_is_stored_float16_keyed_and_reused(small):
    from kaggle_gan.data.prepared import load_prepared

    p = load_prepared(small / "data")
    cache = small / "cache" / "neighbours"
    net = bb.load_backbone("resnet18", "random:0", "cpu", 32)
    first = nb.build_index(p.images, p.meta["images_sha256"], net, cache)
    again = nb.build_index(p.images, p.meta["images_sha256"], net, cache)
    assert not first.cache_hit and again.cache_hit and again.path == first.path
    with np.load(first.path) as z:
        assert z["features"].dtype == np.float16 and z["features"].shape == (16, 512)
    np.testing.assert_array_equal(again.features, first.features)
    other = nb.build_index(p.images, p.meta["images_sha256"], bb.load_backbone("resnet18", "random:1", "cpu", 32), cache)
    assert other.path != first.path and not other.cache_hit


def test_weights_file_gives_the_same_features_as_the_network_saved(small, tmp_path):
    import timm
    import torch

    from kaggle_gan.data.prepared import load_prepared

    images = np.asarray(load_prepared(small / "data").images[:4])
    seeded = bb.load_backbone("resnet18", "random:5", "cpu", 32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    from_file = bb.load_backbone("resnet18", tmp_path / "r18.pth", "cpu", 32)
    assert not from_file.weights.is_random and "proxy" not in from_file.label
    np.testing.assert_allclose(bb.embed(images, from_file), bb.embed(images, seeded), atol=1e-5)


def test_clip_uses_clips_own_preprocessing():
    net = bb.load_backbone("clip", "random:0", "cpu")
    pre = net.preprocessing
    assert net.name == bb.CLIP_MODEL and pre["input_size"] == 224 and pre["interpolation"] == "bicubic"
    assert pre["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])


# --- robustness: mirrored and colour-jittered copies ----------------------------------

def _mirrored_and_jittered(images: np.ndarray, n: int, seed: int = 0):
    """``n`` source indices and their copies: the first half mirrored, the second slightly colour-jittered."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), n, replace=False)
    src = images[pick].astype(np.float32)
    half = n // 2
    src[:half] = src[:half, :, ::-1]
    # slight jitter: per-channel gain within 5% and offset within 5 grey levels
    src[half:] = src[half:] * rng.uniform(0.95, 1.05, (n - half, 1, 1, 3)) + rng.uniform(-5, 5, (n - half, 1, 1, 3))
    return pick, np.clip(np.rint(src), 0, 255).astype(np.uint8)


def _recall_at_5(images: np.ndarray) -> float:
    net = bb.load_backbone(FAST["backbone"], FAST["weights"], "cpu", FAST["input_size"])
    index = bb.embed(images, net).astype(np.float16)
    pick, copies = _mirrored_and_jittered(images, 200)
    _, idx = nb.topk_cosine(bb.embed(copies, net), index, k=5)
    return float((idx == pick[:, None]).any(axis=1).mean())


@needs_dev_faces
def test_copies_of_real_faces_find_their_source():
    from kaggle_gan.data.imagefiles import decode_image

    with zipfile.ZipFile(DEV_ZIP) as zf:
        names = [n for n in zf.namelist() if n.lower().endswith((".jpg", ".png"))][:400]
        images = np.stack([decode_image(zf.read(n), 64) for n in names])
    assert _recall_at_5(images) >= 0.95


def test_copies_of_made_up_faces_find_their_source(tmp_path):
    from kaggle_gan.data.prepare import prepare

    p = prepare(str(make_faces(tmp_path / "faces", n=200, seed=7)), tmp_path / "data", size=64, workers=1)
    assert _recall_at_5(np.asarray(p.images)) >= 0.95


# --- the command line: one image, the sheet, errors ------------------------------------

def test_one_image_from_the_command_line(small):
    one = small / "runs" / "r" / "images" / "5.jpg"
    out = small / "one"
    r = subprocess.run(cli("neighbours", "--work", str(small), "--images", str(one), "--backbone", "resnet18",
                           "--weights", "random:0", "--input-size", "32", "--k", "4", "--out", str(out)),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "untrained" in r.stdout and "proxy" in r.stdout
    table = pd.read_csv(out / "neighbours.csv")
    assert len(table) == 4 and table.loc[0, "train_file"] == "5.jpg" and list(table["rank"]) == [1, 2, 3, 4]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["proxy"] is True and summary["queries"] == 1

    from PIL import Image

    # one row: the query and 4 neighbours, 64 px shown at 2x, 4 px gaps, a 20 px title, 24 px of text under each
    with Image.open(out / "neighbours.png") as sheet:
        assert sheet.size == (4 + 5 * (128 + 4), 20 + (128 + 24 + 4) + 4)


def test_sheet_shows_at_most_rows_queries_most_similar_first(small, tmp_path):
    from PIL import Image

    queries = small / "runs" / "r" / "images"
    make_faces(tmp_path / "unrelated", n=2, seed=99)
    for f in (tmp_path / "unrelated").iterdir():
        shutil.copy(f, queries / f"new-{f.name}")
    s = nb.neighbours(queries, small / "data", small, k=2, rows=2, threshold=0.999, quiet=True, **FAST)
    with Image.open(small / "runs" / "r" / "neighbours" / "neighbours.png") as sheet:
        assert sheet.size == sheet_mod.sheet_size(2, 2, 64) == (4 + 3 * 132, 20 + 2 * 156 + 4)
    assert s["queries"] == 5 and s["threshold"] == 0.999
    assert {p["query"] for p in s["pairs_above"]} == {"4.png", "5.jpg", "9.jpg"}


def test_missing_clip_weights_name_both_ways_to_supply_them(prepared, faces_dir, tmp_path):
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), KAGGLE_GAN_CACHE=str(tmp_path / "kg"),
               HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"), HF_HUB_OFFLINE="1")
    r = subprocess.run(cli("neighbours", "--work", str(tmp_path), "--data", str(prepared), "--images", str(faces_dir),
                           "--backbone", "clip"), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "not found" in line and "Hugging Face cache" in line and str(tmp_path / "torch") in line
    assert "--weights PATH" in line and "random:SEED" in line

    # No CLIP and no Inception weights: the default backbone (Inception, shared with FID) says the same.
    r = subprocess.run(cli("neighbours", "--work", str(tmp_path), "--data", str(prepared), "--images", str(faces_dir)),
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "Inception" in r.stderr and "--weights PATH" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_choices_are_one_line_errors(small, tmp_path):
    images = small / "runs" / "r" / "images"
    with pytest.raises(UserError, match="unknown backbone"):
        bb.load_backbone("no_such_net", "random:0")
    with pytest.raises(WeightsMissing, match="no such file"):
        bb.load_backbone("resnet18", tmp_path / "absent.pth")
    with pytest.raises(UserError, match="threshold"):
        nb.neighbours(images, small / "data", small, threshold=1.5, **FAST)
    with pytest.raises(UserError, match="images not found"):
        nb.neighbours(tmp_path / "nothing", small / "data", small, **FAST)
