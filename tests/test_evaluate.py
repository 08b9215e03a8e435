"""Evaluation during training: metrics.csv, quality.png, best.pt by the selection rule, resume, generate's choice."""
import math

import numpy as np
import pandas as pd
import torch
from test_train import tiny

from kaggle_gan.sampling.curate import load_critic
from kaggle_gan.sampling.generate import generate, load_generator
from kaggle_gan.scoring import afd
from kaggle_gan.training.checkpoint import GENERATOR_FORMAT, load_file
from kaggle_gan.training.evaluate import selection_key
from kaggle_gan.training.loop import train

EVAL = {"train__eval_every": 0.032, "train__eval_images": 8, "train__eval_features": "none"}  # every 2 steps of 16


class Scripted(afd.Detector):
    """A detector whose rate on the k-th batch of ``per_call`` images is ``rates[k]``: known AFD per evaluation."""

    name = "scripted"

    def __init__(self, rates, per_call=8):
        self.rates, self.per_call, self.calls = list(rates), per_call, 0

    def detect(self, image):
        k, i = divmod(self.calls, self.per_call)
        self.calls += 1
        return [afd.Detection(0, 0, 8, 8, 1.0)] if i < round(self.rates[k] * self.per_call) else []


def test_selection_prefers_afd_then_kid_and_ranks_missing_values_last():
    assert selection_key({"afd": 0.8, "kid": 0.02}, "afd") < selection_key({"afd": 0.7, "kid": 0.001}, "afd")
    assert selection_key({"afd": 0.8, "kid": 0.01}, "afd") < selection_key({"afd": 0.8, "kid": 0.02}, "afd")
    assert selection_key({"afd": 0.8}, "afd") < selection_key({}, "afd")
    assert selection_key({"kid": 0.01, "afd": 0.1}, "kid") < selection_key({"kid": 0.02, "afd": 0.9}, "kid")
    assert selection_key({"fid": float("nan")}, "fid") == (math.inf,)


def test_a_run_with_evaluation_keeps_the_best_point_and_generate_uses_it(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    det = Scripted([0.25, 0.75, 0.5])
    train(tiny("baseline", train__max_steps=6, **EVAL), prepared, run, device="cpu", progress=False,
          evaluation={"detector": det})
    rows = pd.read_csv(run / "metrics.csv")
    assert list(rows.step) == [2, 4, 6] and list(rows.afd) == [0.25, 0.75, 0.5]
    assert list(rows.best) == [True, True, False]
    assert (run / "quality.png").is_file()
    best = load_file(run / "best.pt", formats=(GENERATOR_FORMAT,))
    assert best["step"] == 4 and best["metrics"]["afd"] == 0.75 and best["select"] == "afd"
    # the critic of the same step rides along, for generate --select critic
    D, critic_step = load_critic(run, best, torch.device("cpu"))
    last = load_file(run / "checkpoints" / "last.pt")
    assert critic_step == 4 and last["step"] == 6
    assert all(torch.equal(v, D.state_dict()[k]) for k, v in best["D"].items())
    assert any(not torch.equal(v, last["D"][k]) for k, v in best["D"].items())
    _, _, step = load_generator(run, torch.device("cpu"))
    assert step == 4 and "best.pt (step 4, afd 0.75)" in capsys.readouterr().out
    _, _, step = load_generator(run, torch.device("cpu"), checkpoint="last")
    assert step == 6
    # images from best.pt are best.pt's generator's, not generator.pt's
    a = generate(run, tmp_path / "a", n=4, size=32, device="cpu")
    b = generate(run / "best.pt", tmp_path / "b", n=4, size=32, device="cpu")
    c = generate(run, tmp_path / "c", n=4, size=32, device="cpu", checkpoint="last")
    read = lambda d: np.stack([np.asarray(__import__("PIL.Image").Image.open(d / f"{i}.jpg")) for i in range(1, 5)])  # noqa: E731
    assert np.array_equal(read(a), read(b)) and not np.array_equal(read(a), read(c))
    (run / "best.pt").write_bytes(b"\0" * 100)  # damaged: a warning, then generator.pt
    _, _, step = load_generator(run, torch.device("cpu"))
    assert step == 6 and "trying the run's other generators" in capsys.readouterr().out


def test_a_resumed_run_keeps_its_best_and_drops_nothing(prepared, tmp_path):
    run = tmp_path / "run"
    train(tiny("baseline", train__max_steps=4, **EVAL), prepared, run, device="cpu", progress=False,
          evaluation={"detector": Scripted([0.25, 0.75])})
    train(tiny("baseline", train__max_steps=8, **EVAL), prepared, run, device="cpu", progress=False,
          evaluation={"detector": Scripted([0.5, 0.875])})
    rows = pd.read_csv(run / "metrics.csv")
    assert list(rows.step) == [2, 4, 6, 8] and list(rows.afd) == [0.25, 0.75, 0.5, 0.875]
    assert list(rows.best) == [True, True, False, True]  # 0.5 does not beat best.pt's 0.75; 0.875 does
    assert load_file(run / "best.pt", formats=(GENERATOR_FORMAT,))["step"] == 8


def test_evaluation_without_a_detector_or_features_is_off_in_one_line(prepared, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KAGGLE_GAN_CACHE", str(tmp_path / "empty-cache"))
    run = tmp_path / "run"
    train(tiny("baseline", train__max_steps=4, **EVAL), prepared, run, device="cpu", progress=False,
          evaluation={"detector": str(tmp_path / "missing.xml")})
    out = capsys.readouterr().out
    assert "evaluation has neither a detector nor features: it is off" in out
    assert not (run / "metrics.csv").exists() and not (run / "best.pt").exists()


def test_evaluation_with_proxy_features_logs_kid_and_fid(prepared, tmp_path):
    run = tmp_path / "run"
    over = {**EVAL, "train__eval_features": "inception", "train__eval_ref": 8, "train__eval_every": 0.064}
    train(tiny("baseline", train__max_steps=4, **over), prepared, run, device="cpu", progress=False,
          evaluation={"detector": Scripted([0.5]), "inception_weights": "random:0", "cache": tmp_path / "cache"})
    rows = pd.read_csv(run / "metrics.csv")
    assert list(rows.step) == [4]
    for col in ("kid", "fid", "precision", "recall"):
        assert np.isfinite(rows[col].iloc[0]), col
