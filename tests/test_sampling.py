"""Sampling as StyleGAN users expect: per-image seeds, truncation, interpolation, curated pools."""
import math
import zipfile

import numpy as np
import pytest
import torch
from conftest import CASCADE, DEV_ZIP, needs_cascade, needs_dev_faces
from PIL import Image

from kaggle_gan.core.io import UserError, read_json
from kaggle_gan.data.pictures import to_uint8
from kaggle_gan.sampling.curate import keep_top, load_critic
from kaggle_gan.sampling.generate import generate
from kaggle_gan.sampling.interpolate import frame_images, interpolate
from kaggle_gan.sampling.noise import (
    DRAW_BATCH,
    draw,
    noise,
    parse_seeds,
    path,
    slerp,
    truncated_sd,
    truncation_threshold,
)
from kaggle_gan.sampling.runs import generator_of, load_state
from kaggle_gan.scoring.afd import Detector


def test_seeds_parse_ranges_and_lists_in_order():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5, 17,300-302") == [5, 17, 300, 301, 302]
    for bad in ("3-1", "a", "1,,2", "-4", "1,2,1"):
        with pytest.raises(UserError):
            parse_seeds(bad)


def test_truncation_threshold_gives_the_asked_spread_in_closed_form():
    assert truncation_threshold(1.0) == math.inf
    for psi in (0.5, 0.7, 0.85):
        t = truncation_threshold(psi)
        assert truncated_sd(t) == pytest.approx(psi, abs=1e-12)
    # a known value: truncated at +-1 the variance is 1 - 2 phi(1) / (2 Phi(1) - 1), phi(1) = 0.24197072451, Phi(1) = 0.84134474607
    assert truncated_sd(1.0) ** 2 == pytest.approx(1 - 0.48394144903 / 0.68268949213, abs=1e-10)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(UserError):
            truncation_threshold(bad)


def test_truncation_narrows_the_noise_and_keeps_each_seed_s_signs():
    seeds = range(2000)
    full = noise(seeds, 64)
    assert full.std().item() == pytest.approx(1.0, abs=0.01) and full.mean().abs().item() < 0.01
    previous = full
    for psi in (0.85, 0.7, 0.5):
        z = noise(seeds, 64, psi)
        assert z.std().item() == pytest.approx(psi, abs=0.01)
        assert z.abs().max().item() <= truncation_threshold(psi) + 1e-6
        # the same uniform draw through a narrower inverse CDF: a tamer version of the same noise
        assert torch.equal(torch.sign(z), torch.sign(full))
        assert bool((z.abs() <= previous.abs() + 1e-6).all())
        previous = z
    assert torch.equal(noise([5], 64), full[5:6])  # a seed's noise is its own, whatever is drawn beside it


def test_truncation_lowers_the_spread_of_the_images(run, tmp_path):
    spreads = []
    for psi in (1.0, 0.85, 0.7, 0.5):
        folder = generate(run, tmp_path / f"psi{psi}", n=120, device="cpu", truncation=psi)
        images = np.stack([np.asarray(Image.open(folder / f"{i}.jpg"), dtype=np.float64) for i in range(1, 121)])
        spreads.append(images.std(axis=0).mean())
    assert spreads == sorted(spreads, reverse=True), spreads
    assert spreads[-1] < 0.9 * spreads[0]


def test_one_seed_drawn_alone_is_the_same_image_as_in_a_batch(run, tmp_path):
    n = DRAW_BATCH + 30  # a full batch and a padded one
    folder = generate(run, tmp_path / "all", n=n, seeds=f"100-{99 + n}", device="cpu", truncation=0.7)
    meta = read_json(tmp_path / "all.json")
    assert meta["seeds"] == list(range(100, 100 + n)) and meta["truncation"] == 0.7
    for k in (1, 137, DRAW_BATCH + 1, n):
        alone = generate(run, tmp_path / f"one{k}", n=1, seeds=[meta["seeds"][k - 1]], device="cpu", truncation=0.7)
        assert (alone / "1.jpg").read_bytes() == (folder / f"{k}.jpg").read_bytes()
    listed = generate(run, tmp_path / "listed", n=3, seeds="101,250,100", device="cpu", truncation=0.7)
    for i, k in enumerate((2, 151, 1), start=1):
        assert (listed / f"{i}.jpg").read_bytes() == (folder / f"{k}.jpg").read_bytes()
    generate(run, tmp_path / "block", n=3, seed=2, device="cpu")  # --seed S: the S-th block of n seeds
    assert read_json(tmp_path / "block.json")["seeds"] == [6, 7, 8]
    with pytest.raises(UserError, match="lists 2 seed"):
        generate(run, tmp_path / "bad", n=3, seeds="1-2", device="cpu")


def test_slerp_is_exact_at_the_ends_and_on_the_sphere_between():
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 2.0, 0.0])
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    mid = slerp(a, b, 0.5)  # 45 degrees between them, norm halfway between 1 and 2
    assert torch.allclose(mid, torch.tensor([1.5 / math.sqrt(2), 1.5 / math.sqrt(2), 0.0]), atol=1e-6)
    z = noise([1, 2, 3], 16)
    p = path(z, 7)  # seeds on frames 0, 3 and 6
    assert p.shape == (7, 16)
    assert torch.equal(p[0], z[0]) and torch.equal(p[3], z[1]) and torch.equal(p[6], z[2])
    with pytest.raises(UserError):
        path(z, 2)


def test_interpolation_starts_and_ends_on_the_seeds_images(run, tmp_path):
    G, cfg, _step = generator_of(load_state(run), torch.device("cpu"), run)
    z = noise([1, 2, 3], cfg.model.z_dim)
    frames = frame_images(G, path(z, 9), 0, 64, torch.device("cpu"))
    seeds_alone = to_uint8(draw(G, z, torch.device("cpu")), 64)
    assert np.array_equal(frames[0, 0], seeds_alone[0]) and np.array_equal(frames[-1, 0], seeds_alone[2])
    assert np.array_equal(frames[4, 0], seeds_alone[1])
    assert not np.array_equal(frames[1, 0], frames[0, 0])

    out = interpolate(run, "1,2,3", frames=9, out=tmp_path / "walk", size=64, device="cpu")
    with Image.open(out["gif"]) as gif:
        assert gif.n_frames == 9 and gif.size == (64, 64)
    with Image.open(out["strip"]) as strip:
        assert strip.size == (8 * 64, 64)
        assert np.array_equal(np.asarray(strip.convert("RGB"))[:, :64], frames[0, 0])  # PNG: lossless
    assert read_json(out["json"])["seeds"] == [1, 2, 3]
    interpolate(run, "1,2,3", frames=9, out=tmp_path / "walk", size=64, device="cpu")  # its own files: replaced
    with pytest.raises(UserError, match="two or more"):
        interpolate(run, "1", frames=5, out=tmp_path / "alone", size=64, device="cpu")
    assert not list(tmp_path.glob("alone*"))
    (tmp_path / "mine.gif").write_bytes(b"a user's file")
    with pytest.raises(UserError, match="did not write"):
        interpolate(run, "1,2", frames=4, out=tmp_path / "mine", size=64, device="cpu")
    assert (tmp_path / "mine.gif").read_bytes() == b"a user's file"


def test_a_conditional_walk_has_one_row_per_class():
    from kaggle_gan.nets.conditional import ConditionalGenerator

    G = ConditionalGenerator(8, 8, 32, 3).eval()
    z = path(noise([1, 2], 8), 5)
    frames = frame_images(G, z, 3, 32, torch.device("cpu"))
    assert frames.shape == (5, 3, 32, 32, 3)
    for c in range(3):  # row c is class c along the same noise path
        alone = to_uint8(draw(G, z, torch.device("cpu"), torch.full((5,), c)), 32)
        assert np.array_equal(frames[:, c], alone)
    assert not np.array_equal(frames[:, 0], frames[:, 1])


def test_keep_top_keeps_exactly_n_distinct_in_pool_order():
    scores = [0.5, 2.0, -1.0, 2.0, 0.7]
    assert keep_top(scores, 2).tolist() == [1, 3]
    assert keep_top(scores, 3).tolist() == [1, 3, 4]
    assert keep_top(scores, 5).tolist() == [0, 1, 2, 3, 4]  # M = N keeps them all
    assert keep_top([1.0, 1.0, 1.0], 2).tolist() == [0, 1]  # ties keep the earlier image
    assert keep_top([(False, 3.0), (True, 0.1), (True, 0.2), (False, 9.0)], 2).tolist() == [1, 2]
    with pytest.raises(ValueError):
        keep_top(scores, 6)


def test_critic_selection_keeps_the_critic_s_top_n(run, tmp_path):
    n, m = 20, 60
    folder = generate(run, tmp_path / "kept", n=n, pool=m, select="critic", device="cpu")
    kept = read_json(tmp_path / "kept.json")["seeds"]
    # the same ranking, computed here: the critic on every pool image, the n highest
    state = load_state(run)
    G, cfg, _ = generator_of(state, torch.device("cpu"), run)
    D, _ = load_critic(run, state, torch.device("cpu"))
    with torch.no_grad():
        scores = D(draw(G, noise(range(m), cfg.model.z_dim), torch.device("cpu"))).flatten().numpy()
    assert kept == sorted(np.argsort(-scores, kind="stable")[:n].tolist())
    assert len(set(kept)) == n and len(list(folder.glob("*.jpg"))) == n
    alone = generate(run, tmp_path / "alone", n=1, seeds=[kept[5]], device="cpu")
    assert (alone / "1.jpg").read_bytes() == (folder / "6.jpg").read_bytes()
    everything = generate(run, tmp_path / "all", n=n, pool=n, select="critic", device="cpu")
    assert read_json(tmp_path / "all.json")["seeds"] == list(range(n)) and everything.is_dir()


class Brightness(Detector):
    """A real, simple detector: an image 'has a face' when its mean is above 128; brighter = surer."""

    name = "brightness"

    def detect(self, image):
        return []

    def confidence(self, image):
        return bool(image.mean() > 128), float(image.mean())


def test_detector_selection_keeps_the_most_confident(run, tmp_path):
    png = dict(device="cpu", image_format="png")  # lossless: the files hold exactly what the detector saw
    folder = generate(run, tmp_path / "bright", n=10, pool=40, select="detector", detector=Brightness(), **png)
    pool = generate(run, tmp_path / "pool", n=40, **png)
    means = [np.asarray(Image.open(pool / f"{i}.png"), dtype=np.float64).mean() for i in range(1, 41)]
    kept = read_json(tmp_path / "bright.json")["seeds"]
    assert kept == sorted(np.argsort(means)[::-1][:10].tolist())
    assert all((folder / f"{k}.png").read_bytes() == (pool / f"{s + 1}.png").read_bytes()
               for k, s in enumerate(kept, start=1))


@needs_cascade
@needs_dev_faces
def test_the_cascade_ranks_what_it_counts_above_what_it_does_not():
    from kaggle_gan.data.imagefiles import decode_image
    from kaggle_gan.scoring.afd import CascadeDetector

    cascade = CascadeDetector(CASCADE)
    with zipfile.ZipFile(DEV_ZIP) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))[:60]
        faces = [f for f in (decode_image(zf.read(n), 64) for n in names) if cascade.detect(f)][:10]
    noise_images = list(np.random.default_rng(0).integers(0, 255, (10, 64, 64, 3), dtype=np.uint8))
    pool = [img for pair in zip(noise_images, faces) for img in pair]  # noise, face, noise, face, ...
    scores = [cascade.confidence(img) for img in pool]
    assert [s[0] for s in scores] == [bool(cascade.detect(img)) for img in pool]
    assert len(faces) == 10 and keep_top(scores, 10).tolist() == list(range(1, 20, 2))


def test_bad_pool_and_select_are_one_line_errors(run, tmp_path):
    with pytest.raises(UserError, match="smaller than --count"):
        generate(run, tmp_path / "x", n=10, pool=5, select="critic", device="cpu")
    with pytest.raises(UserError, match="needs a judge"):
        generate(run, tmp_path / "x", n=10, pool=20, device="cpu")
    with pytest.raises(UserError, match="critic or detector"):
        generate(run, tmp_path / "x", n=10, pool=20, select="fid", device="cpu")
    with pytest.raises(UserError, match="truncation"):
        generate(run, tmp_path / "x", n=10, truncation=1.2, device="cpu")
    assert not (tmp_path / "x").exists()


# --- the count follows the seeds; conditional runs drawn by condition ---------------------------------------


def test_seeds_without_a_count_draw_one_image_per_seed_and_only_a_contradiction_is_refused(run, tmp_path):
    from kaggle_gan.cli import main

    assert main(["generate", "--checkpoint", str(run), "--out", str(tmp_path / "a"), "--seeds", "0-49",
                 "--size", "32", "--device", "cpu"]) == 0
    assert len(list((tmp_path / "a").glob("*.jpg"))) == 50  # before: refused ("lists 50 seeds but 1000 images")
    assert main(["generate", "--checkpoint", str(run), "--out", str(tmp_path / "b"), "--seeds", "0-49",
                 "--count", "50", "--size", "32", "--device", "cpu"]) == 0
    with pytest.raises(UserError, match="lists 50 seed.* --count 60"):
        generate(run, tmp_path / "c", n=60, seeds="0-49", size=32, device="cpu")
    assert not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def set_run(tmp_path_factory):
    """A few steps of an i-CLEVR-style run: a generator conditioned on sets of the lab's 24 objects."""
    from kaggle_gan.data.prepare import prepare
    from kaggle_gan.experiments.iclevr import iclevr_config
    from kaggle_gan.experiments.iclevr_scenes import write_layout
    from kaggle_gan.training.loop import train

    root = tmp_path_factory.mktemp("sets")
    folder = write_layout(root / "lab", count=40, seed=1, progress=False)
    data = prepare(str(folder), root / "data", size=32, labels="iclevr").folder
    cfg = iclevr_config({"model.resolution": "32", "model.g_width": "8", "model.d_width": "8",
                         "train.batch_size": "16", "train.max_steps": "4", "train.sample_every": "0"})
    return train(cfg, data, root / "run", device="cpu", progress=False)


def test_a_set_conditioned_generator_draws_the_set_asked_for(set_run, tmp_path):
    from kaggle_gan.sampling.conditions import parse_condition

    state = load_state(set_run)
    assert state["condition"] == "set" and state["class_names"][:2] == ["gray cube", "red cube"]
    out = generate(set_run, tmp_path / "a", size=32, device="cpu", condition="red cube,blue sphere", seeds="0-3")
    assert len(list(out.glob("*.jpg"))) == 4
    # image k is G(noise(seed k), the multi-hot set): the same as drawing it by hand
    G, cfg, _ = generator_of(state, torch.device("cpu"), set_run)
    y = torch.zeros(2, 24)
    y[:, [1, 10]] = 1.0  # red cube (1) and blue sphere (10), the lab's indices
    by_hand = draw(G, noise([2, 3], cfg.model.z_dim), torch.device("cpu"), y)
    drawn = draw(G, noise([2, 3], cfg.model.z_dim), torch.device("cpu"),
                 parse_condition("red cube,blue sphere", state["class_names"], sets=True).expand(2, 24))
    assert torch.equal(by_hand, drawn)
    other = draw(G, noise([2, 3], cfg.model.z_dim), torch.device("cpu"), torch.eye(24)[[5, 5]])
    assert not torch.equal(by_hand, other)  # another set, another image
    for bad, why in (("", "names no object"), ("red cube,pink cone", "not one of this run's 24")):
        with pytest.raises(UserError, match=why):
            generate(set_run, tmp_path / "b", size=32, device="cpu", condition=bad, seeds="0")
    with pytest.raises(UserError, match="draws sets of objects: say which"):  # before: silently one object each
        generate(set_run, tmp_path / "b", n=2, size=32, device="cpu")
    assert not (tmp_path / "b").exists()


def test_a_file_of_sets_draws_one_image_per_set_and_the_labs_grid(set_run, tmp_path):
    import json

    from PIL import Image

    sets = tmp_path / "sets.json"
    sets.write_text(json.dumps([["red cube"], ["blue sphere", "gray cylinder"], ["yellow cube"]]))
    out = generate(set_run, tmp_path / "images", size=32, device="cpu", conditions=sets)
    assert sorted(p.name for p in out.glob("*.jpg")) == ["1.jpg", "2.jpg", "3.jpg"]
    with Image.open(tmp_path / "images-grid.png") as grid:
        assert grid.size == (3 * 32, 32)  # 8 sets a row: 3 sets fill one row
    meta = json.loads((tmp_path / "images.json").read_text())
    assert meta["conditions"] == str(sets) and meta["grid"] == "images-grid.png" and meta["seeds"] == [0, 1, 2]
    (tmp_path / "empty.json").write_text(json.dumps([["red cube"], []]))
    with pytest.raises(UserError, match="set 1 .* is empty"):
        generate(set_run, tmp_path / "x", size=32, device="cpu", conditions=tmp_path / "empty.json")
    with pytest.raises(UserError, match="lists 3 sets, one image each, but --count is 5"):
        generate(set_run, tmp_path / "x", n=5, size=32, device="cpu", conditions=sets)
    (tmp_path / "mine-grid.png").write_bytes(b"a picture of the user's")
    with pytest.raises(UserError, match="refusing to replace .*mine-grid.png"):
        generate(set_run, tmp_path / "mine", size=32, device="cpu", conditions=sets)
    assert (tmp_path / "mine-grid.png").read_bytes() == b"a picture of the user's"


def test_the_labs_objects_name_a_24_class_generator_file_without_names():
    from kaggle_gan.sampling.conditions import names_of

    names = names_of({}, 24)
    assert names[:3] == ["gray cube", "red cube", "blue cube"] and names[-1] == "yellow cylinder"
    assert names_of({}, 3) == ["0", "1", "2"]


def test_interpolating_a_set_conditioned_run_needs_its_set(set_run, tmp_path):
    from kaggle_gan.sampling.interpolate import interpolate

    with pytest.raises(UserError, match="draws sets of objects"):
        interpolate(set_run, "1,2", 4, out=tmp_path / "walk", size=32, device="cpu")
    written = interpolate(set_run, "1,2", 4, out=tmp_path / "walk", size=32, device="cpu", condition="red sphere")
    from PIL import Image

    with Image.open(written["strip"]) as strip:
        assert strip.size == (4 * 32, 32)  # one row: the set asked for
