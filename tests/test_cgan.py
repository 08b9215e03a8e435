"""The class-conditional GAN: conditioning plumbing, labelled prepare, resume, and a short graded run on digits."""
import csv

import pytest
import torch
from conftest import assert_resumes_bit_exactly, make_faces

from kaggle_gan.config import resolve
from kaggle_gan.core.io import UserError
from kaggle_gan.data.prepare import prepare
from kaggle_gan.experiments.cgan import cgan, cgan_config, prepare_digits
from kaggle_gan.nets.conditional import ConditionalBatchNorm2d, ConditionalGenerator, ProjectionCritic
from kaggle_gan.training.loop import Trainer

TINY = {"model.g_width": 8, "model.d_width": 8, "train.batch_size": 32, "train.log_every": 2}


def test_conditional_batch_norm_gives_each_class_its_own_gain_and_bias():
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(4, classes=3)
    x = torch.randn(6, 4, 5, 5)
    y0, y2 = torch.zeros(6, dtype=torch.long), torch.full((6,), 2)
    assert torch.equal(cbn(x, y0), cbn(x, y2))  # at init every class is (gain 1, bias 0)
    with torch.no_grad():
        cbn.gain.weight[2] = 3.0
        cbn.bias.weight[2] = -1.0
    assert torch.allclose(cbn(x, y2), 3 * cbn(x, y0) - 1, atol=1e-6)


@pytest.mark.parametrize("cond_input", ["embed", "onehot", "none"])
def test_the_generator_draws_what_the_label_asks(cond_input):
    torch.manual_seed(0)
    G = ConditionalGenerator(z_dim=8, width=8, resolution=32, classes=3, cond_input=cond_input)
    with torch.no_grad():  # as after some training: the classes' norms differ
        for norm in G.norms:
            norm.gain.weight.uniform_(0.5, 1.5)
    z = torch.randn(1, 8).repeat(4, 1)
    x = G(z, torch.tensor([0, 1, 2, 1]))
    assert x.shape == (4, 3, 32, 32) and x.abs().max() <= 1
    assert not torch.allclose(x[0], x[1]) and not torch.allclose(x[1], x[2])
    assert torch.allclose(x[1], x[3])  # same noise, same class: same image


def test_projection_critic_scores_depend_on_the_label_and_the_classifier_head_is_optional():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    D = ProjectionCritic(width=8, resolution=32, norm="none", classes=4)
    a, b = D(x, torch.tensor([0, 0])), D(x, torch.tensor([3, 3]))
    assert a.shape == (2,) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="no auxiliary classifier"):
        D(x, torch.tensor([0, 0]), logits=True)
    score, logits = ProjectionCritic(8, 32, "none", 4, aux_classifier=True)(x, torch.tensor([0, 1]), logits=True)
    assert score.shape == (2,) and logits.shape == (2, 4)


def test_conditional_keys_are_checked_before_any_work():
    with pytest.raises(UserError, match="model.arch=dcgan"):
        resolve("boss-resnet", {"model.classes": 10})
    with pytest.raises(UserError, match="loss.aux_weight needs labels"):
        resolve("baseline", {"loss.aux_weight": 1.0})
    with pytest.raises(UserError, match="cond_input"):
        resolve("baseline", {"model.cond_input": "text"})


def _class_folders(root):
    for name, seed in (("cat", 0), ("dog", 1), ("10", 2), ("9", 3)):
        make_faces(root / name, n=5, size=40, seed=seed)
    (root / "dog" / "broken.jpg").write_bytes(b"not an image")
    return root


def test_labels_survive_prepare_from_class_folders(tmp_path):
    src = _class_folders(tmp_path / "src")
    p = prepare(str(src), tmp_path / "out", size=32, workers=1, labels="folders")
    assert p.classes == ["9", "10", "cat", "dog"]  # natural order
    assert len(p.labels) == len(p.images) == 20  # the broken file is skipped, its label with it
    for file, label in zip(p.files, p.labels):
        assert file.split("/")[0] == p.classes[label]
    manifest = (tmp_path / "out" / "manifest.csv").read_text()
    assert "broken.jpg,skipped" in manifest


def test_labels_survive_prepare_from_a_csv(tmp_path):
    src = make_faces(tmp_path / "src", n=6, size=40)
    rows = [("filename", "label")] + [(f"{i}.{'png' if i % 4 == 0 else 'jpg'}", "odd" if i % 2 else "even")
                                       for i in range(5)]  # 5.jpg has no row: skipped and reported
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    p = prepare(str(src), tmp_path / "out", size=32, workers=1, labels=str(tmp_path / "labels.csv"))
    assert p.classes == ["even", "odd"] and p.labels.tolist() == [0, 1, 0, 1, 0]
    assert "5.jpg,skipped,no label in the CSV" in (tmp_path / "out" / "manifest.csv").read_text()


@pytest.mark.parametrize("content, message", [
    ("0.png,cat,extra\n", r"labels.csv:1: expected 'filename,label'"),
    ("0.png,\n", r"labels.csv:1: expected 'filename,label'"),
    ("0.png,cat\n0.png,dog\n", "labelled twice"),
    ("0.png,cat\nmissing.jpg,dog\n", "names 1 file"),
])
def test_bad_label_csvs_are_one_line_errors(tmp_path, content, message):
    src = make_faces(tmp_path / "src", n=2, size=40)
    (tmp_path / "labels.csv").write_text(content)
    with pytest.raises(UserError, match=message) as err:
        prepare(str(src), tmp_path / "out", size=32, workers=1, labels=str(tmp_path / "labels.csv"))
    assert "\n" not in str(err.value)


def test_loose_files_are_refused_with_labels_from_folders(tmp_path):
    src = make_faces(tmp_path / "src", n=2, size=40)
    with pytest.raises(UserError, match="not inside a class folder"):
        prepare(str(src), tmp_path / "out", size=32, workers=1, labels="folders")


def test_a_conditional_run_needs_labels_of_its_class_count(tmp_path, prepared):
    with pytest.raises(UserError, match="holds no labels"):
        Trainer(resolve("baseline", {"model.classes": 4, "model.resolution": 32}), prepared, tmp_path / "r")
    prepare_digits(tmp_path / "digits")
    with pytest.raises(UserError, match="set model.classes=10"):
        Trainer(cgan_config(7, TINY), tmp_path / "digits", tmp_path / "r2", device="cpu")


def test_a_conditional_run_resumes_bit_exactly(tmp_path):
    """Labels, the auxiliary classifier and the per-class norms all come back from the checkpoint."""
    data = prepare_digits(tmp_path / "digits").folder
    cfg = lambda n: cgan_config(10, {**TINY, "loss.aux_weight": 0.5, "train.max_steps": n})  # noqa: E731
    assert_resumes_bit_exactly(cfg, data, tmp_path)
    rows = (tmp_path / "a" / "log.csv").read_text()
    assert "aux_real" in rows.splitlines()[0]


@pytest.mark.slow
def test_a_short_run_on_digits_is_read_as_the_asked_class_far_above_chance(tmp_path):
    results = cgan(tmp_path, overrides={"train.max_steps": "400", "loss.aux_weight": "1.0"},
                   per_class=30,
                   device="cpu", progress=False)
    assert results["chance"] == 0.1
    assert results["ceiling"] > 0.9
    assert results["overall"] > 0.5, results["per_class"]  # 5x chance (measured: 0.927 on 1 thread)
    for f in ("sheet.png", "accuracy.csv", "accuracy.json", "run/samples/final.png"):
        assert (tmp_path / f).is_file(), f
