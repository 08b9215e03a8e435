"""The i-CLEVR lab's data and accuracy: the seeded scene renderer, the lab's layout, the lab's accuracy."""
import json

import numpy as np
import pytest

from kaggle_gan.experiments.iclevr_scenes import (COLOURS, OBJECTS, TEST_SETS, accuracy, multi_hot, object_index,
                                                  render, write_layout)


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
    a, b = write_layout(tmp_path / "a", count=6, seed=3), write_layout(tmp_path / "b", count=6, seed=3)
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


def test_multi_hot_counts_a_repeated_object_once_and_refuses_unknown_names():
    index = object_index()
    hot = multi_hot([["red cube", "red cube"], ["gray cube", "yellow cylinder", "red sphere"]], index)
    assert hot.shape == (2, 24) and hot[0].sum() == 1 and hot[0, index["red cube"]] == 1
    assert [i for i in range(24) if hot[1, i]] == [0, index["red sphere"], 23]
    with pytest.raises(ValueError, match="unknown object"):
        multi_hot([["pink cone"]], index)
