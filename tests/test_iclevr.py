"""The i-CLEVR lab: the seeded scene renderer, the lab's layout through prepare, the lab's accuracy, the
conditional pair on sets (closed forms), exact resume, the lab's evaluator, and a short graded run."""
import json

import numpy as np
import pytest
import torch
from conftest import REPO, assert_resumes_bit_exactly

from kaggle_gan.core.io import UserError
from kaggle_gan.data.labels import multi_hot
from kaggle_gan.data.prepare import prepare
from kaggle_gan.experiments.iclevr import iclevr, iclevr_config, lab_evaluator
from kaggle_gan.experiments.iclevr_grading import blobs, chance
from kaggle_gan.experiments.iclevr_scenes import (
    COLOURS,
    LAB,
    OBJECTS,
    VALIDATION,
    accuracy,
    binds,
    breakdown,
    lab_sets,
    object_index,
    render,
    validation_sets,
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
    for name in ("test.json", "new_test.json"):  # the lab's own grading files, byte for byte
        assert (a / name).read_bytes() == (LAB / name).read_bytes()


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
    # 800 training images at 32 px: enough for the small CNN, little for a ResNet-18 from scratch (measured at
    # 1 thread: 0.51); both far above chance (about 0.1), and each reads less once shapes are blurred away
    for grader, floor in (("small CNN", 0.6), ("ResNet-18", 0.35)):
        g = results["graders"][grader]
        assert g["ceiling"] > floor and 0 <= g["blobs"] < g["ceiling"], (grader, g)
    assert list(results["files"]) == ["val_test.json", "val_new_test.json", "test.json", "new_test.json"]
    for name, entry in results["files"].items():
        assert entry["sets"] == 32 and entry["chance"] < 0.12 and (tmp_path / name.replace(".json", ".png")).is_file()
        for grader, above in (("small CNN", 2.0), ("ResNet-18", 1.5)):
            r = entry["graders"][grader]
            assert r["mean_of_draws"] > above * entry["chance"], (name, grader, r)
            assert set(r["binding"]) <= {"colour on two shapes", "colours distinct"} and r["size"]
        assert entry["lowest"]["mean_of_draws"] == min(g["mean_of_draws"] for g in entry["graders"].values())
    assert json.loads((tmp_path / "accuracy.json").read_text())["steps"] == 600
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps([["red cube"], ["red cube", "red sphere"]]))
    again = iclevr(tmp_path, scenes=1000, overrides=SMALL_RUN, grader_epochs=15, progress=False, device="cpu",
                   tests=[custom])
    assert again["steps"] == 600  # resumed: no new step, and the custom file graded beside the others
    assert again["files"]["test.json"] == results["files"]["test.json"]
    assert again["files"]["custom.json"]["sets"] == 2 and (tmp_path / "custom.png").is_file()


SMALL_RUN = {"model.resolution": "32", "model.g_width": "16", "model.d_width": "16", "train.batch_size": "32",
             "train.max_steps": "600", "train.minutes": "0", "train.sample_every": "300"}


@pytest.mark.parametrize("loss_name", ["hinge", "rpgan"])
def test_one_critic_forward_gives_the_scores_and_head_loss_two_forwards_gave(loss_name):
    """The conditional critic's score and its auxiliary head come from one pass (real and fake joint): the
    same losses and the same gradients as separate passes for real, fake and the head (no spectral norm here:
    its power iteration would step once per pass and make the two differ by design)."""
    from kaggle_gan.config import LossConfig
    from kaggle_gan.nets.conditional import bind
    from kaggle_gan.training.losses import StepContext, build_loss

    torch.manual_seed(0)
    D = ProjectionCritic(8, 32, "none", 24, aux_classifier=True)
    real, fake = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)
    index = object_index()
    y = _sets(*[[index[o] for o in s] for s in (["red cube"], ["blue sphere", "red sphere"],
                                                ["gray cube", "red cube", "yellow cylinder"], ["red cube"],
                                                ["cyan sphere"], ["green cylinder", "red cylinder"])])
    loss = build_loss(LossConfig(name=loss_name, aux_weight=1.0, gamma=0.5))
    results = []
    for joint in (False, True):
        D.zero_grad()
        critic, stats = loss.critic_loss(bind(D, y), real, fake, StepContext(joint=joint))
        g = loss.generator_loss(bind(D, y), fake.clone().requires_grad_(True), StepContext(), real)
        (critic + g).backward()
        results.append((critic.item(), g.item(), stats["aux_real"].item(), [p.grad.clone() for p in D.parameters()]))
    (c0, g0, a0, grads0), (c1, g1, a1, grads1) = results
    # the head's loss of the old way: a forward of its own on the real images
    assert a0 == pytest.approx(bind(D, y).class_loss(real).item(), rel=1e-5) == pytest.approx(a1, rel=1e-5)
    assert c0 == pytest.approx(c1, rel=1e-5) and g0 == pytest.approx(g1, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads0, grads1))


def test_a_bound_critic_counts_its_forwards():
    from kaggle_gan.nets.conditional import bind

    D = ProjectionCritic(8, 32, "none", 24, aux_classifier=True)
    calls = []
    D.register_forward_hook(lambda *_: calls.append(1))
    bound = bind(D, _sets([1], [10])).keeping()
    bound(torch.randn(4, 3, 32, 32))  # real and fake in one pass: the conditions repeated
    assert len(calls) == 1 and bound.logits[0].shape == (4, 24) and bound.first_class_loss().ndim == 0


def test_the_shipped_condition_files_are_the_labs():
    """24 objects in the lab's order; test.json 6/12/14 sets of 1/2/3 objects, new_test.json 0/12/20 with one
    colour on two shapes in 28 of its 32 (/work/shared/iclevr's README); no set repeats an object."""
    import collections

    assert json.loads((LAB / "objects.json").read_text()) == object_index()
    for name, sizes, bound in (("test.json", {1: 6, 2: 12, 3: 14}, 3), ("new_test.json", {2: 12, 3: 20}, 28)):
        sets = lab_sets(name)
        assert dict(collections.Counter(map(len, sets))) == sizes and sum(map(binds, sets)) == bound
        assert all(len(set(s)) == len(s) and set(s) <= set(OBJECTS) for s in sets)
    shared = REPO.parent / "shared" / "iclevr"
    if shared.is_dir():  # the lab's files as published, where ../shared is at hand
        assert all((LAB / f).read_bytes() == (shared / f).read_bytes() for f in ("objects.json", "test.json", "new_test.json"))


def test_our_validation_sets_are_drawn_like_the_labs_files_but_are_not_them():
    for name, (seed, sizes, bound) in VALIDATION.items():
        sets = validation_sets(seed, sizes, bound)
        assert [sum(len(s) == k for s in sets) for k in (1, 2, 3)] == list(sizes)
        assert sum(map(binds, sets)) == bound and all(len(set(s)) == len(s) for s in sets)
        assert sets == validation_sets(seed, sizes, bound)  # seeded
        lab = lab_sets(name.replace("val_", ""))
        assert sorted(map(sorted, sets)) != sorted(map(sorted, lab))  # drawn like them, not copied


def test_the_breakdown_is_the_labs_accuracy_within_each_group():
    asked = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0]])
    scores = np.array([[0.9, 0.0, 0.8, 0.0],   # top 2: objects 0 and 2, one hit of 2
                       [0.9, 0.1, 0.0, 0.0],   # top 1: object 0, a hit
                       [0.0, 0.9, 0.8, 0.0]])  # top 2: objects 1 and 2, both hits
    got = breakdown(scores, asked, ["2 objects", "1 object", "2 objects"])
    assert got == {"2 objects": 3 / 4, "1 object": 1.0}
    assert accuracy(scores, asked) == pytest.approx(4 / 5)


def test_blobs_keep_colour_and_place_and_lose_shape():
    cube, sphere = render(["red cube"], 3), render(["red sphere"], 3)  # the same place: the seed draws it
    a, b = blobs(np.stack([cube, sphere]))
    assert np.abs(a.astype(int) - b.astype(int)).mean() < np.abs(cube.astype(int) - sphere.astype(int)).mean()
    assert a.shape == cube.shape and abs(a.mean() - cube.mean()) < 3
