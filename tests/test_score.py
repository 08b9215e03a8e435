"""The score report: columns, verdicts, anchors, leaderboard, bad input, skipped FID."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kaggle_gan.core.io import UserError
from kaggle_gan.data.prepare import prepare
from kaggle_gan.scoring import afd, homework, metrics
from kaggle_gan.scoring import leaderboard as board_mod
from kaggle_gan.scoring import score as score_mod

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CASCADE = SHARED / "assets" / "lbpcascade_animeface.xml"
COLUMNS = ["images", "FID", "real floor", "sample code", "KID x1000", "MiFID", "precision", "recall", "AFD",
           "simple", "medium", "strong", "boss"]


class Bright(afd.Detector):
    """A face wherever the image's mean exceeds 127: the AFD of a test folder is known exactly."""

    name = "bright"

    def detect(self, image):
        return [afd.Detection(0, 0, 8, 8, 1.0)] if image.mean() > 127 else []


def write_images(folder: Path, values, size=64, fmt="png") -> Path:
    """One flat-ish image per value (mean ~ value), named 1.png, 2.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(values))
    for i, v in enumerate(values, 1):
        arr = np.clip(rng.normal(v, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.{fmt}")
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_images(root / "raw", list(np.linspace(30, 220, 16)))
    return prepare(str(root / "raw"), root / "data", 64, workers=1).folder


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No Inception weights anywhere."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("KAGGLE_GAN_CACHE", str(tmp_path / "kg"))


def test_report_without_inception_weights(data_dir, tmp_path, offline, capsys):
    images = write_images(tmp_path / "imgs", [50, 200, 210, 40, 220])  # 3 of 5 bright
    report = score_mod.score(images, data_dir, tmp_path / "work", detector=Bright(), device="cpu")
    assert report["afd"]["rate"] == pytest.approx(0.6)
    assert report["fid"]["status"] == "skipped"
    skipped = [n for n in report["notes"] if n.startswith("FID skipped")]
    assert len(skipped) == 1 and "--inception-weights" in skipped[0] and "\n" not in skipped[0]
    assert list(score_mod.report_table(report).columns) == COLUMNS
    # a level's cell says what was checked: the AFD bar (0.6 clears boss's), never a pass of the whole level
    assert score_mod.report_table(report).iloc[0][["simple", "boss"]].tolist() == ["AFD ok", "AFD ok"]
    out = Path(report["scores"])
    stored = json.loads(out.read_text())
    assert stored["afd"]["rate"] == pytest.approx(0.6) and stored["afd_level"] == "boss" and not stored["count_ok"]
    assert "level" not in stored and all("pass" not in v and v["fid_checked"] is False and v["afd_pass"]
                                         for v in stored["verdicts"].values())
    assert any("exactly 1000" in n for n in stored["notes"])
    csv = (out.parent / "afd.csv").read_text().splitlines()
    assert len(csv) == 6 and csv[0].startswith("file,faces,detected")
    printed = capsys.readouterr().out
    assert "FID skipped" in printed and "simple" in printed
    assert "levels: the levels' FID bars (judge FID <= 30000, 12000, 10000, 9000) are not checked here" in printed


def test_verdicts_say_only_what_the_afd_shows():
    v = homework.verdicts(0.55)
    assert [v[k]["afd_pass"] for k in ("simple", "medium", "strong", "boss")] == [True, True, True, False]
    assert homework.afd_level(v) == "strong" and homework.afd_level(homework.verdicts(0.6)) == "boss"
    assert [homework.verdict_cell(v[k]) for k in ("strong", "boss")] == ["AFD ok", "AFD fail"]
    limited = homework.verdicts(0.5, real_afd=0.3)["boss"]
    assert limited["detector_limited"] and homework.verdict_cell(limited) == "AFD fail (detector)"
    assert not any(x["fid_checked"] for x in v.values())
    assert score_mod.fid_position(60.0, 20.0, 120.0) == pytest.approx(0.4)
    assert score_mod.fid_position(60.0, 20.0, None) is None


def test_proxy_fid_with_cache_and_sample_code_anchor(data_dir, tmp_path, offline):
    work = tmp_path / "work"
    sample_images = write_images(work / "runs" / "baseline" / "images", [60, 90, 120, 150])
    first = score_mod.score(sample_images, data_dir, work, inception_weights="random:0", detector=Bright(),
                            device="cpu", ref_count=6)
    fid = first["fid"]
    assert first["run"] == "baseline" and Path(first["scores"]) == work / "runs" / "baseline" / "scores.json"
    assert fid["status"] == "ok" and fid["proxy"] and fid["label"] == "proxy FID (random:0)"
    assert fid["reference"] == {**fid["reference"], "count": 6, "holdout": 8, "cache_hit": False}
    assert np.isfinite(fid["value"]) and np.isfinite(fid["anchors"]["real_floor"])
    assert "proxy FID (random:0)" in score_mod.report_table(first).columns

    mine = write_images(tmp_path / "mine", [100, 200, 210, 220])
    second = score_mod.score(mine, data_dir, work, inception_weights="random:0", detector=Bright(),
                             device="cpu", ref_count=6, run="mine", out=tmp_path / "mine.json")
    assert second["fid"]["reference"]["cache_hit"]
    assert second["fid"]["anchors"]["sample_code"] == pytest.approx(fid["value"])
    assert second["fid"]["anchors"]["real_floor"] == fid["anchors"]["real_floor"]
    assert (tmp_path / "mine.afd.csv").is_file()
    # the FID's spread over halves of the images: printed with it from 6 images up
    assert second["fid"]["sd"] is None and "sd over halves" not in score_mod.render(second)
    # the floor's own spread (8 held-out images), cached with the reference and printed beside it
    floor_sd = second["fid"]["anchors"]["real_floor_sd"]
    assert floor_sd > 0 and floor_sd == fid["anchors"]["real_floor_sd"]
    assert f"floor {fid['anchors']['real_floor']:.2f} +- {floor_sd:.2f}" in score_mod.render(second)
    eight = write_images(tmp_path / "eight", [40, 70, 100, 130, 160, 190, 220, 250])
    third = score_mod.score(eight, data_dir, tmp_path / "work8", inception_weights="random:0", detector=Bright(), device="cpu",
                            ref_count=6, run="eight", out=tmp_path / "eight.json", quiet=True)
    assert third["fid"]["sd"] > 0 and f"+- {third['fid']['sd']:.2f}" in score_mod.render(third)

    board = board_mod.leaderboard(work)
    assert sorted(board.run.tolist()) == ["baseline", "mine"]
    assert set(board.fid_label) == {"proxy FID (random:0)"}
    assert "proxy FID (random:0)" in board_mod.format_leaderboard(board)


def test_a_rescore_replaces_the_folders_row(data_dir, tmp_path, offline):
    images = write_images(tmp_path / "imgs", [50, 200])
    for _ in range(2):
        score_mod.score(images, data_dir, tmp_path / "work", detector=Bright(), device="cpu", quiet=True)
    table = pd.read_csv(tmp_path / "work" / board_mod.LEADERBOARD)
    assert len(table) == 1 and table.afd.tolist() == [0.5]
    score_mod.score(write_images(tmp_path / "other", [200]), data_dir, tmp_path / "work", detector=Bright(),
                    device="cpu", quiet=True)
    assert len(pd.read_csv(tmp_path / "work" / board_mod.LEADERBOARD)) == 2


def test_leaderboard_ranks_within_one_feature_network_and_reference(tmp_path):
    import pandas as pd

    rows = [  # a table written before afd_level: its "level" column is read as the AFD level
        dict(run="a", images="/a", level="medium", fid=150.0, afd=0.45, fid_label="FID", fid_key="k", detector="d"),
        dict(run="b", images="/b", level="strong", fid=190.0, afd=0.52, fid_label="FID", fid_key="k", detector="d"),
        dict(run="c", images="/c", level="strong", fid=170.0, afd=0.51, fid_label="FID", fid_key="k", detector="d"),
        dict(run="d", images="/d", level="strong", fid=10.0, afd=0.55, fid_label="proxy FID (random:0)", fid_key="p", detector="d"),
        dict(run="e", images="/e", level="none", fid=None, afd=0.1, fid_label="skipped", fid_key="", detector="d"),
        dict(run="c2", images="/c", level="medium", fid=175.0, afd=0.45, fid_label="FID", fid_key="k", detector="d"),
    ]
    (tmp_path / board_mod.LEADERBOARD).write_text(pd.DataFrame(rows).to_csv(index=False))
    board = board_mod.leaderboard(tmp_path)
    # real FID's group first, best first within it; the proxy's apart (its 10.0 is no better than 150); no FID last
    assert board.run.tolist() == ["b", "a", "c2", "d", "e"]  # /c rescored: only its latest row stays
    assert list(board.columns) == [*board_mod.LEADERBOARD_COLUMNS, "group"]
    printed = board_mod.format_leaderboard(board)
    assert printed.index("FID (weights ?)") < printed.index("proxy FID (random:0)") < printed.index("no FID measured")
    assert board_mod.leaderboard(tmp_path / "empty").empty


def test_bad_folders_are_reported_before_any_work(data_dir, tmp_path, offline):
    work = tmp_path / "work"
    mixed = write_images(tmp_path / "mixed", [100, 120])
    write_images(tmp_path / "mixed", [100], size=96)  # overwrites 1.png with a 96x96 image
    with pytest.raises(UserError, match=r"mixed image sizes .*96x96: 1 files \(e.g. 1.png\)"):
        score_mod.score(mixed, data_dir, work, detector=Bright())
    junk = write_images(tmp_path / "junk", [100, 120])
    (junk / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match=r"1 of 3 files .* not images: notes.txt"):
        score_mod.score(junk, data_dir, work, detector=Bright())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no files"):
        score_mod.score(tmp_path / "empty", data_dir, work, detector=Bright())
    with pytest.raises(UserError, match="not found"):
        score_mod.score(tmp_path / "nowhere", data_dir, work, detector=Bright())
    with pytest.raises(UserError, match="no prepared data"):
        score_mod.score(junk, tmp_path / "nodata", work, detector=Bright())
    good = write_images(tmp_path / "good", [100, 120])
    with pytest.raises(UserError, match="random:SEED"):
        score_mod.score(good, data_dir, work, inception_weights="random:zero", detector=Bright())
    with pytest.raises(UserError, match="no such file"):
        score_mod.score(good, data_dir, work, inception_weights=tmp_path / "typo.pth", detector=Bright())
    assert not work.exists()  # nothing written, no partial cache


def test_other_sizes_are_resized_like_the_training_data(data_dir, tmp_path, offline):
    images = write_images(tmp_path / "big", [200, 30, 220], size=96, fmt="jpg")
    report = score_mod.score(images, data_dir, tmp_path / "work", detector=Bright(), quiet=True)
    assert report["image_size"] == [96, 96] and report["afd"]["rate"] == pytest.approx(2 / 3)
    assert any("resized to 64x64" in n for n in report["notes"])


@pytest.mark.skipif(not CASCADE.exists(), reason="../shared not present: no lbpcascade_animeface.xml")
def test_default_cascade_path_option(data_dir, tmp_path, offline):
    images = write_images(tmp_path / "imgs", [128, 128])
    report = score_mod.score(images, data_dir, tmp_path / "work", detector=str(CASCADE), quiet=True)
    assert report["afd"]["detector"]["params"]["min_neighbors"] == 5 and report["afd"]["rate"] == 0.0


def test_printed_leaderboard(tmp_path):
    assert "no scores yet" in board_mod.format_leaderboard(board_mod.leaderboard(tmp_path))


def test_every_metric_from_one_feature_pass_and_the_detectors_own_ceiling(data_dir, tmp_path, offline):
    """Copies of the reference images: MiFID's memorisation distance is ~0 and its penalty fires."""
    from kaggle_gan.data.prepared import load_prepared
    from kaggle_gan.scoring import fid as fid_mod

    prepared = load_prepared(data_dir)
    hold, ref = fid_mod.selection(len(prepared.images), score_mod.DEFAULT_REF_COUNT)
    copies = tmp_path / "copies"
    copies.mkdir()
    for i in ref:
        Image.fromarray(prepared.images[i]).save(copies / f"{i}.png")
    report = score_mod.score(copies, data_dir, tmp_path / "work", inception_weights="random:0", detector=Bright(),
                             device="cpu", quiet=True)
    stored = json.loads(Path(report["scores"]).read_text())
    for key in ("kid", "kid_sd", "mifid", "memorisation_distance", "precision", "recall", "density", "coverage"):
        assert stored[key] is not None and np.isfinite(stored[key]), key
    # copies sit at distance ~0 from the training set (exactly 0 or rounding noise, by CPU), far below the
    # threshold, so MiFID takes its penalty branch: FID / d (FID itself may round to exactly 0 for copies, so
    # the penalty's size is checked where FID is bounded away from 0: tests/test_metrics.py)
    fid, d = stored["fid"]["value"], stored["memorisation_distance"]
    assert 0 <= d < 1e-5 < metrics.MIFID_THRESHOLD
    assert stored["mifid"] == pytest.approx(fid / (d + metrics.MIFID_EPSILON), rel=1e-9, abs=1e-12)
    assert stored["precision"] == 1.0 and stored["recall"] == 1.0 and stored["coverage"] == 1.0
    # the ceiling is the detector's rate on the held-out images of the FID floor, exactly
    want = float(np.mean([prepared.images[i].mean() > 127 for i in hold]))
    assert stored["real_ceiling"]["afd"] == pytest.approx(want)
    assert set(stored["real_ceiling"]) >= {"afd", "kid", "precision", "recall"}
    board = board_mod.read_table(tmp_path / "work")
    assert board.kid.iloc[0] == pytest.approx(stored["kid"]) and board.afd_real.iloc[0] == pytest.approx(want)


def test_another_feature_network_by_name_scores_every_metric_and_caches_apart(data_dir, tmp_path, offline):
    """``--features NAME``: a timm network (random weights here: nothing is downloaded) for every distance."""
    from kaggle_gan.scoring.backbones import canonical_name

    assert canonical_name("dinov2") == "vit_large_patch14_dinov2.lvd142m"
    images = write_images(tmp_path / "imgs", list(np.linspace(40, 210, 8)))
    work = tmp_path / "work"
    report = score_mod.score(images, data_dir, work, detector=Bright(), device="cpu", quiet=True,
                             features="resnet18", feature_weights="random:0")
    fid = report["fid"]
    assert fid["status"] == "ok" and fid["label"] == "proxy FD (resnet18) (random:0)"
    assert np.isfinite(fid["value"]) and np.isfinite(report["kid"]) and 0 <= report["precision"] <= 1
    inception = score_mod.score(images, data_dir, work, inception_weights="random:0", detector=Bright(),
                                device="cpu", quiet=True)
    assert inception["fid"]["reference"]["key"] != fid["reference"]["key"]  # one cache per network
    assert inception["fid"]["value"] != pytest.approx(fid["value"])
    with pytest.raises(UserError, match="weights not found"):  # a network the user named: no silent skip
        score_mod.score(images, data_dir, work, detector=Bright(), device="cpu", quiet=True, features="resnet18")


def test_a_reference_too_small_for_the_neighbour_metrics_still_gives_fid(tmp_path, offline):
    root = tmp_path / "tiny"
    write_images(root / "raw", list(np.linspace(30, 220, 8)))  # 4 held out, 4 in the reference
    data = prepare(str(root / "raw"), root / "data", 64, workers=1).folder
    images = write_images(tmp_path / "imgs", list(np.linspace(40, 210, 8)))
    for attempt in range(2):  # the second run reads the cache written by the first
        report = score_mod.score(images, data, tmp_path / "work", inception_weights="random:0", detector=Bright(),
                                 device="cpu", quiet=True)
        assert report["fid"]["status"] == "ok" and np.isfinite(report["fid"]["value"])
        assert report["fid"]["reference"]["cache_hit"] == (attempt == 1)
        assert report["kid"] is None and any("need more than 5" in n for n in report["notes"])


def _generated(folder, seeds, **how):
    """A folder of images with the marker generate writes: what the leaderboard reads how they were made from."""
    from kaggle_gan.core.io import GENERATED_BY, MARKER

    images = write_images(folder, [60 + 10 * i for i in range(len(seeds))])
    meta = {"written_by": GENERATED_BY, "count": len(seeds), "seeds": seeds, "files": sorted(os.listdir(images)),
            "truncation": 1.0, "select": None, "pool": len(seeds), **how}
    (images / MARKER).write_text(json.dumps(meta))
    return images


def test_rows_record_how_images_were_made_and_groups_of_feature_networks_print_apart(data_dir, tmp_path, offline):
    work = tmp_path / "work"
    plain = _generated(tmp_path / "plain", list(range(8)), checkpoint="/w/runs/r/best.pt", step=12)
    picked = _generated(tmp_path / "picked", [3, 17, 40, 41, 77, 90, 95, 99], checkpoint="/w/runs/r/best.pt",
                        step=12, truncation=0.7, pool=100, select="detector")
    for images in (plain, picked):
        score_mod.score(images, data_dir, work, inception_weights="random:0", detector=Bright(), device="cpu",
                        quiet=True)
        score_mod.score(images, data_dir, work, detector=Bright(), device="cpu", quiet=True, features="resnet18",
                        feature_weights="random:0")
    table = board_mod.read_table(work)
    row = table[(table.images == str(picked.resolve())) & table.fid_label.str.contains("resnet18")].iloc[0]
    assert (row.checkpoint, row.step, row.truncation, row.pool, row.select) == ("best.pt", 12, 0.7, 100, "detector")
    assert row.seeds.startswith("8 seeds (") and row.features_weights == "random:0" and row.ref_count == 8
    assert row.memorisation_ref == "reference"
    assert table[table.images == str(plain.resolve())].seeds.tolist() == ["0-7", "0-7"]
    board = board_mod.leaderboard(work)
    assert board.group.nunique() == 2 and len(board) == 4
    printed = board_mod.format_leaderboard(board)
    blocks = printed.split("\n\n")
    assert len(blocks) == 2 and all("ranked within this group only" in b for b in blocks)
    assert "proxy FID (random:0)" in blocks[0] + blocks[1] and "resnet18" in blocks[0] + blocks[1]
    marked = [line for line in printed.splitlines() if line.endswith("picked") or "/picked " in line]
    assert len(marked) == 2 and all(line.startswith("*") for line in marked)
    assert "best.pt@12 psi 0.7 pool 100 by detector" in printed
    assert "* curated by the face detector" in printed


def test_mifid_against_every_training_image_finds_copies_the_reference_does_not_hold(data_dir, tmp_path, offline):
    from kaggle_gan.data.prepared import load_prepared
    from kaggle_gan.scoring import fid as fid_mod

    prepared = load_prepared(data_dir)
    hold, _ref = fid_mod.selection(len(prepared.images), score_mod.DEFAULT_REF_COUNT)
    copies = tmp_path / "copies"  # copies of held-out training images: in the data, not in the reference
    copies.mkdir()
    for i in hold:
        Image.fromarray(prepared.images[i]).save(copies / f"{i}.png")
    kw = dict(inception_weights="random:0", detector=Bright(), device="cpu", quiet=True)
    against_ref = score_mod.score(copies, data_dir, tmp_path / "work", **kw)
    against_all = score_mod.score(copies, data_dir, tmp_path / "work", memorisation_ref="all", **kw)
    assert against_ref["memorisation_ref"] == {"against": "reference", "images": 8}
    assert against_all["memorisation_ref"] == {"against": "all", "images": 16}
    assert against_all["memorisation_distance"] < 1e-5 < 1e-4 < against_ref["memorisation_distance"]
    assert "against all 16 training images, as Kaggle" in score_mod.render(against_all)
    assert "--memorisation-ref all" in score_mod.render(against_ref)
    cached = list((tmp_path / "work" / "cache" / "fid").glob("train-*.npz"))
    assert len(cached) == 1 and not list((tmp_path / "work" / "cache" / "fid").glob("train-*.parts"))
    with pytest.raises(UserError, match="--memorisation-ref must be reference or all"):
        score_mod.score(copies, data_dir, tmp_path / "work", memorisation_ref="everything", **kw)
