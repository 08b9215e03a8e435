"""The i-CLEVR lab: the seeded scene renderer, the lab's layout through prepare, the lab's accuracy, the
conditional pair on sets (closed forms), exact resume, the lab's evaluator, and a short graded run."""
import json

import numpy as np
import pytest
import torch
from conftest import assert_resumes_bit_exactly

from kaggle_gan.core.io import UserError
from kaggle_gan.data.labels import multi_hot
from kaggle_gan.data.prepare import prepare
from kaggle_gan.experiments.iclevr import chance, iclevr, iclevr_config, lab_evaluator
from kaggle_gan.experiments.iclevr_scenes import (
    COLOURS,
    OBJECTS,
    TEST_SETS,
    accuracy,
    object_index,
    render,
    write_layout,
)
from kaggle_gan.nets.conditional import ConditionalBatchNorm2d, ConditionalGenerator, ProjectionCritic, class_loss


def test_the_same_seed_renders_the_same_bytes_and_another_seed_does_not():
    a, b = render(["red cube", "blue sphere"], 5), render(["red cube", "blue sphere"], 5)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3) and a.tobytes() == b.tobytes()
    assert render(["red cube", "blue sphere"], 6).tobytes() != a.tobytes()


def test_every_object_is_drawn_in_its_own_colour():
    names = list(COLOURS)
    palette = np.array([COLOURS[c] for c in names], np.float64)
    for i, name in enumerate(OBJECTS):
        image = render([name], 100 + i).astype(np.float64)
        floor = np.median(image.reshape(-1, 3), axis=0)
        changed = np.abs(image - floor).sum(axis=2) > 60  # the object (and a little of its shadow)
        assert changed.sum() > 40, name
        mean = image[changed].mean(axis=0)
        # the object's mean colour is closest, in direction, to its own colour among the 8
        unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
        closest = names[int(np.argmax(unit(palette) @ unit(mean)))]
        assert closest == name.split()[0] or name.startswith("gray"), (name, closest)


def test_the_layout_is_the_labs_and_is_reproducible(tmp_path):
    a, b = write_layout(tmp_path / "a", count=6, seed=3, progress=False), write_layout(tmp_path / "b", count=6, seed=3, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert [str(f) for f in files] == ["images/000000.png", "images/000001.png", "images/000002.png",
                                       "images/000003.png", "images/000004.png", "images/000005.png",
                                       "new_test.json", "objects.json", "test.json", "train.json"]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    objects = json.loads((a / "objects.json").read_text())
    assert objects == object_index() and len(objects) == 24 and objects["gray cube"] == 0
    assert objects["yellow cylinder"] == 23
    train = json.loads((a / "train.json").read_text())
    assert sorted(train) == [f"{i:06d}.png" for i in range(6)]
    assert all(1 <= len(v) <= 3 and len(set(v)) == len(v) and set(v) <= set(objects) for v in train.values())
    test, new_test = (json.loads((a / f).read_text()) for f in ("test.json", "new_test.json"))
    assert len(test) == len(new_test) == TEST_SETS and test != new_test
    assert all(1 <= len(v) <= 3 for v in test + new_test)


def test_accuracy_is_the_labs_top_k_hits_over_objects_asked():
    asked = np.array([[1, 0, 0, 1], [0, 1, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.2, 0.8], [0.5, 0.4, 0.0, 0.0]])
    assert accuracy(scores, asked) == pytest.approx(2 / 3)  # both of image 1's; image 2's top 1 is index 0, a miss
    assert accuracy(asked.astype(float), asked) == 1.0
    # an empty prediction (all scores equal) takes the lowest indices: a hit only where those were asked for
    assert accuracy(np.zeros((2, 4)), asked) == pytest.approx(1 / 3)
    # an image asked for nothing adds nothing; nothing asked anywhere is undefined
    assert accuracy(np.vstack([scores, np.ones(4)]), np.vstack([asked, np.zeros(4)])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        accuracy(np.zeros((1, 4)), np.zeros((1, 4)))


def test_chance_is_the_average_accuracy_over_every_ordering_of_the_scores():
    import itertools

    asked = np.array([[1, 1, 0, 0], [0, 0, 1, 0]])
    orders = list(itertools.permutations(range(4)))
    mean = np.mean([accuracy(np.array([a, b], float), asked) for a in orders for b in orders])
    assert chance(asked) == pytest.approx(mean) == pytest.approx((4 + 1) / (4 * 3))


def test_multi_hot_counts_a_repeated_object_once_and_refuses_unknown_names():
    index = object_index()
    hot = multi_hot([["red cube", "red cube"], ["gray cube", "yellow cylinder", "red sphere"]], index)
    assert hot.shape == (2, 24) and hot[0].sum() == 1 and hot[0, index["red cube"]] == 1
    assert [i for i in range(24) if hot[1, i]] == [0, index["red sphere"], 23]
    with pytest.raises(ValueError, match="unknown object"):
        multi_hot([["pink cone"]], index)


# --- sets through prepare ------------------------------------------------------------------------------

def test_the_layout_round_trips_through_prepare(tmp_path):
    folder = write_layout(tmp_path / "lab", count=10, seed=4, progress=False)
    prepared = prepare(str(folder), tmp_path / "data", size=64, labels="iclevr")
    train = json.loads((folder / "train.json").read_text())
    assert prepared.classes == OBJECTS and prepared.labels.shape == (10, 24)
    assert prepared.labels.tolist() == multi_hot(list(train.values()), object_index()).astype(int).tolist()
    for i, (name, objects) in enumerate(train.items()):  # each image is its scene, pixel for pixel
        assert np.array_equal(prepared.images[i], render(objects, 4 * 1_000_003 + i)), name
    again = prepare(str(folder), tmp_path / "data", size=64, labels="iclevr")  # up to date: a no-op
    assert again.meta["images_sha256"] == prepared.meta["images_sha256"]


def test_the_real_labs_folder_is_read_whole_not_cropped(tmp_path):
    """The lab's images are 320x240 in iclevr/; resized whole, an object at the left edge survives."""
    from PIL import Image

    lab = tmp_path / "lab"
    (lab / "iclevr").mkdir(parents=True)
    (lab / "objects.json").write_text(json.dumps(object_index()))
    frame = np.full((240, 320, 3), 120, np.uint8)
    frame[:, :40] = (173, 35, 35)  # a red band at the left, which a centre crop would cut away
    Image.fromarray(frame).save(lab / "iclevr" / "CLEVR_train_000001_0.png")
    Image.fromarray(frame[:, ::-1]).save(lab / "iclevr" / "CLEVR_train_000001_1.png")
    (lab / "train.json").write_text(json.dumps({"CLEVR_train_000001_0.png": ["red cube"],
                                                "CLEVR_train_000001_1.png": ["red cube", "red cube", "gray sphere"]}))
    prepared = prepare(str(lab), tmp_path / "data", size=64, labels="iclevr")
    assert prepared.images.shape == (2, 64, 64, 3)
    assert tuple(prepared.images[0, 32, 2]) == (173, 35, 35) and tuple(prepared.images[0, 32, 40]) == (120, 120, 120)
    assert tuple(prepared.images[1, 32, 61]) == (173, 35, 35)
    assert prepared.labels[1].sum() == 2  # a repeated object counts once


@pytest.mark.parametrize("breakage, message", [
    (lambda lab: (lab / "objects.json").unlink(), "has no objects.json"),
    (lambda lab: (lab / "train.json").write_text('{"000000.png": ["pink cone"]}'), "does not list"),
    (lambda lab: (lab / "train.json").write_text('{"999999.png": ["red cube"]}'), "is in none of"),
])
def test_a_broken_layout_is_a_one_line_error(tmp_path, breakage, message):
    lab = write_layout(tmp_path / "lab", count=2, seed=0, progress=False)
    breakage(lab)
    with pytest.raises(UserError, match=message):
        prepare(str(lab), tmp_path / "data", size=64, labels="iclevr")


# --- the conditional pair on sets ----------------------------------------------------------------------

def _sets(*rows, k=24):
    y = torch.zeros(len(rows), k)
    for i, row in enumerate(rows):
        y[i, list(row)] = 1
    return y


def test_a_one_object_set_conditions_exactly_as_its_class_index():
    torch.manual_seed(0)
    G = ConditionalGenerator(16, 8, 32, 24).eval()
    D = ProjectionCritic(8, 32, "none", 24, aux_classifier=True)
    z, classes = torch.randn(3, 16), torch.tensor([0, 7, 23])
    onehot = _sets([0], [7], [23])
    assert torch.equal(G(z, classes), G(z, onehot))
    x = G(z, classes)
    assert torch.allclose(D(x, classes), D(x, onehot), atol=1e-6)


def test_cbn_takes_the_mean_of_a_sets_gains_and_the_critic_the_sum_of_its_projections():
    torch.manual_seed(0)
    norm = ConditionalBatchNorm2d(4, 24)
    torch.nn.init.normal_(norm.gain.weight)
    torch.nn.init.normal_(norm.bias.weight)
    x = torch.randn(1, 4, 3, 3)
    normed = norm.norm(x)
    want = normed * ((norm.gain.weight[2] + norm.gain.weight[9]) / 2)[None, :, None, None] \
        + ((norm.bias.weight[2] + norm.bias.weight[9]) / 2)[None, :, None, None]
    assert torch.allclose(norm(x, _sets([2, 9])), want, atol=1e-6)

    D = ProjectionCritic(8, 32, "none", 24)
    x = torch.randn(1, 3, 32, 32)
    empty = D(x, _sets([]))  # psi(h) alone
    a, b, both = D(x, _sets([3])), D(x, _sets([17])), D(x, _sets([3, 17]))
    assert torch.allclose(both - empty, (a - empty) + (b - empty), atol=1e-4)


def test_the_auxiliary_loss_on_sets_is_each_objects_bce_summed_over_objects():
    logits, y = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]]), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    p = torch.sigmoid(logits)
    want = -(y * p.log() + (1 - y) * (1 - p).log()).sum() / 2
    assert class_loss(logits, y).item() == pytest.approx(want.item(), rel=1e-6)
    assert class_loss(logits, torch.tensor([0, 1])).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).item())


def test_a_multi_hot_run_resumes_bit_exactly(tmp_path):
    """The sets, the auxiliary multi-label head and the EMA calibrated on the data's sets all resume."""
    folder = write_layout(tmp_path / "lab", count=40, seed=1, progress=False)
    data = prepare(str(folder), tmp_path / "data", size=32, labels="iclevr").folder
    cfg = lambda n: iclevr_config({"model.resolution": "32", "model.g_width": "8", "model.d_width": "8",  # noqa: E731
                                   "train.batch_size": "16", "train.log_every": "2", "train.max_steps": str(n)})
    assert_resumes_bit_exactly(cfg, data, tmp_path)
    assert "aux_real" in (tmp_path / "a" / "log.csv").read_text().splitlines()[0]
    assert (tmp_path / "a" / "samples" / "final.png").is_file()  # a row per set of the data


def test_the_labs_evaluator_checkpoint_loads_and_a_wrong_one_is_refused(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Sequential(torch.nn.Linear(512, 24), torch.nn.Sigmoid())
    torch.save({"model": net.state_dict()}, tmp_path / "checkpoint.pth")
    loaded = lab_evaluator(tmp_path / "checkpoint.pth")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
    torch.save({"model": torchvision.models.resnet18(weights=None).state_dict()}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not the lab's evaluator"):
        lab_evaluator(tmp_path / "other.pth")
    with pytest.raises(UserError, match="not found"):
        lab_evaluator(tmp_path / "missing.pth")


@pytest.mark.slow
def test_a_short_graded_run_reads_the_asked_objects_far_above_chance(tmp_path):
    """Render, prepare, train, grade end to end, small: 32 px, 1000 scenes, 600 steps. Chance is 0.09 and 0.10."""
    results = iclevr(tmp_path, scenes=1000, overrides=SMALL_RUN, grader_epochs=15, progress=False, device="cpu")
    assert results["ceiling"] > 0.6  # 800 training images at 32 px
    for name in ("test.json", "new_test.json"):
        r = results[name]
        assert r["sets"] == 32 and r["chance"] < 0.1 and r["mean_of_draws"] > 0.2, r  # measured 0.297 and 0.297
        assert (tmp_path / name.replace(".json", ".png")).is_file()
    assert json.loads((tmp_path / "accuracy.json").read_text())["steps"] == 600
    again = iclevr(tmp_path, scenes=1000, overrides=SMALL_RUN, grader_epochs=15, progress=False, device="cpu")
    assert again["test.json"] == results["test.json"] and again["steps"] == 600  # resumed: no new step


SMALL_RUN = {"model.resolution": "32", "model.g_width": "16", "model.d_width": "16", "train.batch_size": "32",
             "train.max_steps": "600", "train.sample_every": "300"}
