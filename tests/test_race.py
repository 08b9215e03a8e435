"""The race on a tiny budget: same budget per preset, twins reported once, CSV + PNG + a labelled proxy FID."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CASCADE, REPO, cli, needs_cascade

from kaggle_gan.config import resolve
from kaggle_gan.core.io import UserError
from kaggle_gan.experiments.race import COLUMNS, race, race_config
from kaggle_gan.training.checkpoint import load_file


def test_race_config_reduces_scale_and_keeps_each_recipe():
    cfg = race_config("strong", 32, 16, 64, 7)
    assert (cfg.model.resolution, cfg.model.g_width, cfg.model.d_width, cfg.train.seed) == (32, 16, 16, 7)
    assert cfg.loss == resolve("strong").loss and cfg.optim == resolve("strong").optim


@needs_cascade
def test_race_trains_each_recipe_once_for_the_same_budget(prepared, tmp_path, capsys):
    work = tmp_path / "race"
    table = race(prepared, work, presets=["baseline", "medium", "boss"], kimg=0.064, points=2, width=8,
                 batch_size=16, count=8, fid_count=4, ref_count=8, inception_weights="random:0",
                 detector=str(CASCADE), device="cpu", progress=False)
    out = capsys.readouterr().out
    assert "proxy" in out and "same recipe as baseline" in out
    assert (work / "race.png").stat().st_size > 0
    csv = pd.read_csv(work / "race.csv")
    assert list(csv.preset.unique()) == ["baseline", "medium", "boss"] and len(csv) == 6
    assert (csv.groupby("preset").steps.max() == 4).all()  # 64 images / batch 16, for every preset
    last = csv[csv.point == 2]
    assert last.fid.notna().all() and csv[csv.point == 1].fid.isna().all()
    assert (last.fid_sd > 0).all() and csv[csv.point == 1].fid_sd.isna().all()
    assert "+-" in out and "do not rank two presets" in out
    assert re.search(r"8 held-out real images score proxy FID \(random:0\) [0-9.e-]+ \+- [0-9.e-]+ against", out)
    base, medium = (last[last.preset == p].iloc[0] for p in ("baseline", "medium"))
    assert medium.same_as == "baseline" and medium.afd == base.afd and medium.fid == base.fid
    assert not (work / "runs" / "medium").exists()  # not trained twice
    assert torch.load(work / "runs" / "boss" / "generator.pt", weights_only=True)["step"] == 4
    assert (work / "runs" / "boss" / "point-0000004.json").is_file()  # scores kept for a re-run
    assert len(table) == 6
    # the reference is the training images as the 32px models saw them (down and back up), not at 64px
    (ref_file,) = (work / "cache" / "fid").glob("ref-*.npz")
    assert json.loads(str(np.load(ref_file)["fields"]))["view"] == "32px-and-back"

    shutil.copytree(work, tmp_path / "ablation" / "default")  # for the ablation script, below

    # run again: every point is reused (no training), the numbers are the same
    (work / "runs" / "boss" / "checkpoints" / "last.pt").unlink()
    again = race(prepared, work, presets=["baseline", "medium", "boss"], kimg=0.064, points=2, width=8,
                 batch_size=16, count=8, fid_count=4, ref_count=8, inception_weights="random:0",
                 detector=str(CASCADE), device="cpu", progress=False)
    assert not (work / "runs" / "boss" / "checkpoints" / "last.pt").exists()
    pd.testing.assert_frame_equal(again.drop(columns="train_s"), table.drop(columns="train_s"))
    with pytest.raises(UserError, match="holds a race with kimg=0.064"):
        race(prepared, work, presets=["baseline"], kimg=0.128, points=2, width=8, batch_size=16, count=8,
             fid_count=4, ref_count=8, inception_weights="random:0", detector=str(CASCADE), device="cpu")

    # the noise script: its seed-0 draw is the set the race scored, so it reproduces the race's numbers
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fid_noise.py"), "--race", str(work),
                          "--data", str(prepared), "--fid-cache", str(work / "cache" / "fid"), "--presets", "boss",
                          "--seeds", "2", "--count", "8", "--ref-count", "8", "--detector", str(CASCADE)],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["boss"]]
    boss = last[last.preset == "boss"].iloc[0]
    assert [r[1] for r in rows] == ["0", "1"] and "the race's reference: 8 images (cached)" in out
    assert float(rows[0][4]) == pytest.approx(boss.fid, abs=6e-5) and float(rows[0][2]) == pytest.approx(boss.afd, abs=6e-4)

    # the ablation script: variant folders are races (this one stands in for "default"); "noema" scores
    # default's raw generator, from its last checkpoint, the way the race scored the EMA one
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "boss_ablation.py"), "--work", str(work),
                          "--data", str(prepared), "--out", str(tmp_path / "ablation"), "--variants", "noema",
                          "--ref-count", "8", "--inception-weights", "random:0", "--detector", str(CASCADE),
                          "--device", "cpu", "--preset", "boss"], capture_output=True, text=True, check=True).stdout
    summary = pd.read_csv(tmp_path / "ablation" / "ablation.csv")
    assert summary.variant.tolist() == ["default", "noema"]
    assert (tmp_path / "ablation" / "ablation.png").stat().st_size > 0
    se = (boss.afd * (1 - boss.afd) / 8) ** 0.5
    assert summary["AFD 0.064k"].iloc[0] == f"{boss.afd:.3f} +- {se:.3f}" and "boss as it is" in out
    raw = torch.load(tmp_path / "ablation" / "noema" / "generator-raw.pt", weights_only=True)
    ckpt = load_file(tmp_path / "ablation" / "default" / "runs" / "boss" / "checkpoints" / "last.pt")
    ema = torch.load(work / "runs" / "boss" / "generator.pt", weights_only=True)
    assert raw["step"] == ema["step"] == 4 and all(torch.equal(raw["G"][k], v) for k, v in ckpt["G"].items())
    assert any(not torch.equal(raw["G"][k], ema["G"][k]) for k in ema["G"])
    noema = pd.read_csv(tmp_path / "ablation" / "noema" / "race.csv").iloc[0]
    assert noema.n_images == 8 and np.isfinite(noema.fid) and noema.fid != boss.fid


def test_race_command_is_listed():
    out = subprocess.run(cli("race", "--help"), capture_output=True, text=True, check=True).stdout
    assert "--kimg" in out and "--presets" in out


def _race_folder(path, seed, afds, kimg=128.0, overrides=None):
    """A finished race folder as race() leaves it: race.json and one final row per preset in race.csv."""
    path.mkdir(parents=True)
    (path / "race.json").write_text(json.dumps({"batch_size": 64, "kimg": kimg, "overrides": overrides or {},
                                                "points": 1, "resolution": 32, "seed": seed, "width": 32}))
    rows = [{"preset": p, "same_as": "", "point": 1, "kimg": kimg, "afd": a, "fid": 0.1, "fid_label": "proxy FID"}
            for p, a in afds.items()]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path / "race.csv", index=False)
    return str(path)


def test_race_seeds_tabulates_every_seed_and_refuses_races_that_do_not_compare(tmp_path):
    script = [sys.executable, str(REPO / "benchmarks" / "race_seeds.py")]
    a = _race_folder(tmp_path / "a", 1, {"baseline": 0.4, "boss": 0.7})
    b = _race_folder(tmp_path / "b", 2, {"baseline": 0.5, "boss": 0.45})
    c = _race_folder(tmp_path / "c", 3, {"boss": 0.6})  # boss alone, as the ablation's seed folders are
    out = subprocess.run(script + [a, b, c], capture_output=True, text=True, check=True).stdout
    boss = next(line.split() for line in out.splitlines() if line.split()[:1] == ["boss"])
    assert boss[1:4] == ["0.700", "0.450", "0.600"] and float(boss[4]) == pytest.approx(0.583, abs=1e-3)
    assert float(boss[5]) == pytest.approx(np.std([0.7, 0.45, 0.6], ddof=1), abs=1e-3)
    baseline = next(line.split() for line in out.splitlines() if line.split()[:1] == ["baseline"])
    assert baseline[1:4] == ["0.400", "0.500", "-"]
    assert "highest AFD" not in out and "best first" not in out  # only boss was raced at every seed
    both = subprocess.run(script + [a, b], capture_output=True, text=True, check=True).stdout
    assert "highest AFD: baseline on 1 of 2 seeds, boss on 1 of 2 seeds" in both
    assert "best first: s1 boss > baseline; s2 baseline > boss" in both
    for bad, why in [(_race_folder(tmp_path / "d", 4, {"boss": 0.5}, kimg=64.0), "not comparable"),
                     (_race_folder(tmp_path / "e", 5, {"boss": 0.5}, overrides={"train.augment": ""}), "--set"),
                     (_race_folder(tmp_path / "f", 1, {"boss": 0.5}), "more than one folder")]:
        run = subprocess.run(script + [a, bad], capture_output=True, text=True)
        assert run.returncode != 0 and why in run.stderr


@needs_cascade
def test_the_race_at_equal_minutes_gives_every_seed_the_same_budget_and_a_median(prepared, tmp_path, capsys):
    from kaggle_gan.experiments.race_time import race_minutes

    work = tmp_path / "minutes"
    table = race_minutes(prepared, work, presets=["baseline", "r3gan"], minutes=0.05, seeds=[1, 2], resolution=32,
                         width=8, batch_size=16, points=2, count=8, fid_count=8, ref_count=8,
                         inception_weights="random:0", detector=str(CASCADE), device="cpu", progress=False)
    assert list(zip(table.preset, table.seed)) == [("baseline", 1), ("baseline", 2), ("r3gan", 1), ("r3gan", 2)]
    # each run trained its 3 seconds (a last step may overrun a little) and stopped by time, not by steps
    assert ((table.train_min * 60 >= 3.0) & (table.train_min * 60 < 6.0)).all() and (table.steps < 10**6).all()
    curve = pd.read_csv(work / "curve.csv")
    assert set(curve.groupby(["preset", "seed"]).size()) <= {2, 3}  # a point every half of the budget, the end
    assert curve.minutes.max() <= 0.1 and (work / "minutes.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "AFD median [min-max]" in out and "one run at a time" in out
    summary = out[out.index("AFD median"):]
    base = table[table.preset == "baseline"].afd
    assert f"{base.median():.3f} [{base.min():.3f}-{base.max():.3f}]" in summary
    # a second race in the folder reuses every finished run: no step trained again
    again = race_minutes(prepared, work, presets=["baseline", "r3gan"], minutes=0.05, seeds=[1, 2], resolution=32,
                         width=8, batch_size=16, points=2, count=8, fid_count=8, ref_count=8,
                         inception_weights="random:0", detector=str(CASCADE), device="cpu", progress=False)
    assert list(again.steps) == list(table.steps) and list(again.afd) == list(table.afd)
    with pytest.raises(UserError, match="holds a race at equal minutes with minutes=0.05"):
        race_minutes(prepared, work, presets=["baseline"], minutes=1.0, seeds=[1], resolution=32, width=8,
                     batch_size=16, points=2, count=8, fid_count=8, ref_count=8, inception_weights="random:0",
                     detector=str(CASCADE), device="cpu", progress=False)
