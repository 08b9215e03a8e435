"""Evaluation during training: metrics.csv, quality.png, best.pt by the selection rule, resume, generate's choice."""
import numpy as np
import pandas as pd
import torch
from test_train import tiny

from kaggle_gan.sampling.curate import load_critic
from kaggle_gan.sampling.generate import generate
from kaggle_gan.sampling.runs import load_generator
from kaggle_gan.scoring import afd
from kaggle_gan.training.checkpoint import GENERATOR_FORMAT, load_file
from kaggle_gan.training.loop import train
from kaggle_gan.training.selection import Selection

# every 2 steps of 16; 64 images: AFD's standard error 0.054-0.0625 at the rates below, so a drop of 0.25 is
# "clearly worse" (more than 2 standard errors of the difference) and a rise of 0.125 is inside the noise
EVAL = {"train__eval_every": 0.032, "train__eval_images": 64, "train__eval_features": "none"}


class Scripted(afd.Detector):
    """A detector whose rate on the k-th batch of ``per_call`` images is ``rates[k]``: known AFD per evaluation."""

    name = "scripted"

    def __init__(self, rates, per_call=64, then=0.5):
        """``then``: the rate of every call after the scripted ones (the fresh-noise check of best.pt)."""
        self.rates, self.per_call, self.calls, self.then = list(rates), per_call, 0, then

    def detect(self, image):
        k, i = divmod(self.calls, self.per_call)
        self.calls += 1
        rate = self.rates[k] if k < len(self.rates) else self.then
        return [afd.Detection(0, 0, 8, 8, 1.0)] if i < round(rate * self.per_call) else []


def _chosen(metric, rows, images=1000):
    rule = Selection(metric, images)
    return [rule.consider({"step": i + 1, **r}) for i, r in enumerate(rows)]


def test_ties_and_points_inside_the_noise_go_to_the_later_point():
    # smoke on a CPU: AFD 0 at every evaluation and no KID; before, the first point stayed best.pt for good
    assert _chosen("afd", [{"afd": 0.0}, {"afd": 0.0}, {"afd": 0.0}]) == [True, True, True]
    # 1000 images: AFD's standard error ~0.015 here, so 0.60 after 0.61 is a tie within the noise
    assert _chosen("afd", [{"afd": 0.61}, {"afd": 0.60}]) == [True, True]


def test_a_clearly_worse_point_keeps_the_earlier_best_and_the_top_is_the_bar():
    # 0.55 is 0.06 below 0.61: over 2 standard errors of the difference (2 x 0.022) -> not chosen
    assert _chosen("afd", [{"afd": 0.61}, {"afd": 0.55}]) == [True, False]
    # a slow decline cannot walk best.pt down one noise-sized step at a time: each is compared with the top
    assert _chosen("afd", [{"afd": 0.70}, {"afd": 0.67}, {"afd": 0.64}, {"afd": 0.61}]) == [True, True, False, False]
    # lower is better for KID and FID; their spread is the row's own (kid_sd, fid_sd)
    assert _chosen("kid", [{"kid": 0.010, "kid_sd": 0.001}, {"kid": 0.011, "kid_sd": 0.001},
                           {"kid": 0.020, "kid_sd": 0.001}]) == [True, True, False]
    assert _chosen("fid", [{"fid": 30.0, "fid_sd": 1.0}, {"fid": 20.0, "fid_sd": 1.0}, {"fid": 25.0, "fid_sd": 1.0}]) \
        == [True, True, False]


def test_missing_values_never_beat_a_measured_best_and_ties_of_missing_go_later():
    # select=kid where KID is never measured: before, (inf,) < (inf, inf) kept the first point for good
    assert _chosen("kid", [{"afd": 0.1}, {"afd": 0.9}, {"kid": float("nan")}]) == [True, True, True]
    assert _chosen("kid", [{"kid": 0.02, "kid_sd": 0.001}, {}, {"kid": None}]) == [True, False, False]
    assert _chosen("afd", [{}, {"afd": 0.3}, {}]) == [True, True, False]


def test_the_rule_resumes_from_best_pt_and_from_a_file_written_before_it():
    rule = Selection("afd", 1000)
    rule.consider({"step": 2, "afd": 0.7})
    rule.consider({"step": 4, "afd": 0.69})
    again = Selection.resume("afd", 1000, {"selection": rule.state(), "metrics": {"afd": 0.69}})
    assert (again.top, again.top_step) == (0.7, 2) and not again.consider({"step": 6, "afd": 0.6})
    legacy = Selection.resume("afd", 1000, {"metrics": {"step": 4, "afd": 0.75, "kid": 0.01}, "select": "afd"})
    assert legacy.top == 0.75 and legacy.best_has_value and not legacy.consider({"afd": 0.6})
    assert Selection.resume("kid", 1000, {"metrics": {"afd": 0.75}}).consider({"kid": 0.1})  # nothing to beat


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
    assert step == 4 and "best.pt (step 4, afd 0.75" in capsys.readouterr().out
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
    assert list(rows.best) == [True, True, False, True]  # 0.5 is clearly below best.pt's 0.75; 0.875 is not
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


def test_at_the_end_best_pt_is_scored_on_fresh_noise_and_says_what_chose_it(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny("baseline", train__max_steps=6, **EVAL), prepared, run, device="cpu", progress=False,
          evaluation={"detector": Scripted([0.0, 0.0, 0.0], then=0.25)})
    best = load_file(run / "best.pt", formats=(GENERATOR_FORMAT,))
    assert best["step"] == 6  # three ties: the later point (before: step 2, the half-trained generator)
    assert best["metrics"]["afd"] == 0.0 and best["metrics_fresh"]["afd"] == 0.25
    assert best["chosen_by"] == {"metric": "afd", "by": {"name": "scripted"}}
    out = capsys.readouterr()
    assert ("best.pt: step 6, chosen by AFD (scripted): 0 +- 0 on the evaluation's noise, 0.25 +- 0.054 on fresh "
            "noise") in out.out + out.err
    _, _, step = load_generator(run, torch.device("cpu"))
    assert "0.25 on fresh noise" in capsys.readouterr().out


def test_tensorboard_events_hold_the_logs_numbers_the_evaluation_and_the_grids(prepared, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tiny("baseline", train__max_steps=6, train__sample_every=2, **EVAL), prepared, run, device="cpu",
          progress=False, evaluation={"detector": Scripted([0.25, 0.75, 0.5])})
    acc = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    log = pd.read_csv(run / "log.csv")
    got = acc.Scalars("loss/d_loss")
    assert [e.step for e in got] == list(log.step)
    assert np.allclose([e.value for e in got], log.d_loss, rtol=1e-5)  # log.csv keeps 6 significant digits
    assert [e.step for e in acc.Scalars("diagnostics/d_gap")] == list(log.step)
    assert [(e.step, e.value) for e in acc.Scalars("eval/afd")] == [(2, 0.25), (4, 0.75), (6, 0.5)]
    assert [e.step for e in acc.Images("samples")] == [2, 4, 6]


def test_without_tensorboard_one_line_says_so_and_nothing_is_written(prepared, tmp_path, capsys, monkeypatch):
    from kaggle_gan.training import events

    monkeypatch.setattr(events, "available", lambda: False)
    run = tmp_path / "run"
    train(tiny("baseline", train__max_steps=2), prepared, run, device="cpu", progress=False)
    lines = [x for x in capsys.readouterr().out.splitlines() if "TensorBoard" in x]
    assert len(lines) == 1 and "pip install tensorboard" in lines[0]
    assert not list(run.glob("events.out.tfevents.*"))
    train(tiny("baseline", train__max_steps=4, train__tensorboard=False), prepared, tmp_path / "off", device="cpu",
          progress=False)
    assert "TensorBoard" not in capsys.readouterr().out
