"""i-CLEVR-like scenes without a download: a seeded renderer, the lab's folder layout, and its accuracy.

The lab's data: 64x64 images of 1 to 3 objects on a grey floor, each object
one of 24 kinds (8 colours x 3 shapes), described by ``objects.json``
(name -> index), ``train.json`` (file name -> list of object names),
``test.json`` and ``new_test.json`` (lists of object-name lists). This module
draws such scenes itself: each object is shaded by one light (a sphere by
its normal, a cube by three faces, a cylinder by its side's angle and a
lighter top), so shape is told by shading and not only by outline. Scenes
are drawn at 4x and downsampled with a box filter for clean edges.

Same seed, same bytes: every random choice comes from one
``numpy.random.Generator`` seeded per image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

# CLEVR's colours and shapes, in the order of the lab's objects.json (index = shape * 8 + colour)
COLOURS = {"gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
           "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51)}
SHAPES = ("cube", "sphere", "cylinder")
OBJECTS = [f"{c} {s}" for s in SHAPES for c in COLOURS]
SIZE, SCALE = 64, 4
LIGHT = np.array([-0.45, -0.65, 0.62]) / np.linalg.norm([-0.45, -0.65, 0.62])


def object_index() -> Dict[str, int]:
    return {name: i for i, name in enumerate(OBJECTS)}


def _floor(rng: np.random.Generator, side: int) -> np.ndarray:
    """A grey floor, lighter toward the back, with a little per-scene variation."""
    base = 118 + rng.uniform(-8, 8)
    ramp = np.linspace(base + 14, base - 10, side)[:, None, None]
    return np.broadcast_to(ramp, (side, side, 3)).astype(np.float64).copy()


def _shade(colour: Sequence[int], light: np.ndarray) -> np.ndarray:
    """Colour under a light intensity in [0, 1] (ambient 0.3): (..., 3)."""
    return np.asarray(colour, np.float64) * (0.3 + 0.7 * np.clip(light, 0, 1))[..., None]


def _paint(canvas: np.ndarray, mask: np.ndarray, rgb: np.ndarray) -> None:
    canvas[mask] = rgb[mask] if rgb.ndim == 3 else rgb


def _sphere(canvas, cx, cy, r, colour) -> None:
    h, w = canvas.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = (xx - cx) / r, (yy - cy) / r
    d2 = dx * dx + dy * dy
    inside = d2 <= 1
    dz = np.sqrt(np.clip(1 - d2, 0, 1))
    lambert = dx * LIGHT[0] + dy * LIGHT[1] + dz * LIGHT[2]
    rgb = _shade(colour, lambert)
    spec = np.clip(lambert, 0, 1) ** 24 * 90  # a small highlight: round, so only a sphere has one
    _paint(canvas, inside, np.clip(rgb + spec[..., None], 0, 255))


def _polygon_mask(shape: Tuple[int, int], points: Sequence[Tuple[float, float]]) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in points], fill=1)
    return np.asarray(img, bool)


def _ellipse_mask(shape, cx, cy, rx, ry) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def _cube(canvas, cx, cy, r, colour) -> None:
    """Front face (lit 0.55), top (1.0) and right side (0.3), in an oblique view."""
    s, d = 1.5 * r, 0.55 * r  # face side, depth offset
    x0, y0 = cx - s / 2 - d / 4, cy - s / 2 + d / 2
    front = [(x0, y0), (x0 + s, y0), (x0 + s, y0 + s), (x0, y0 + s)]
    top = [(x0, y0), (x0 + d, y0 - d), (x0 + s + d, y0 - d), (x0 + s, y0)]
    side = [(x0 + s, y0), (x0 + s + d, y0 - d), (x0 + s + d, y0 + s - d), (x0 + s, y0 + s)]
    for poly, light in ((side, 0.3), (top, 1.0), (front, 0.55)):
        _paint(canvas, _polygon_mask(canvas.shape[:2], poly), _shade(colour, np.array(light)))


def _cylinder(canvas, cx, cy, r, colour) -> None:
    """A side shaded by its angle to the light, a light elliptical top."""
    h, w = canvas.shape[:2]
    rx, ry, height = r, 0.35 * r, 1.5 * r
    top_y, bottom_y = cy - height / 2, cy + height / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u = np.clip((xx - cx) / rx, -1, 1)
    body = (np.abs(xx - cx) <= rx) & (yy >= top_y) & (yy <= bottom_y)
    body |= _ellipse_mask((h, w), cx, bottom_y, rx, ry)
    side_light = u * LIGHT[0] + np.sqrt(1 - u * u) * 0.9 * LIGHT[2] + 0.1
    _paint(canvas, body, _shade(colour, side_light))
    _paint(canvas, _ellipse_mask((h, w), cx, top_y, rx, ry), _shade(colour, np.array(0.95)))


DRAW = {"cube": _cube, "sphere": _sphere, "cylinder": _cylinder}


def render(objects: Sequence[str], seed: int) -> np.ndarray:
    """(64, 64, 3) uint8: ``objects`` (names from :data:`OBJECTS`) at random, barely overlapping places."""
    rng = np.random.default_rng(seed)
    side = SIZE * SCALE
    canvas = _floor(rng, side)
    placed: List[Tuple[float, float, float]] = []
    for name in objects:
        r = rng.uniform(0.10, 0.13) * side
        for _attempt in range(200):
            cx, cy = rng.uniform(0.18, 0.82) * side, rng.uniform(0.3, 0.8) * side
            if all((cx - x) ** 2 + (cy - y) ** 2 >= (1.9 * max(r, q)) ** 2 for x, y, q in placed):
                break
        placed.append((cx, cy, r))
    order = sorted(range(len(objects)), key=lambda i: placed[i][1])  # back to front
    for i in order:
        cx, cy, r = placed[i]
        colour, shape = objects[i].split(" ")
        shadow = _ellipse_mask(canvas.shape[:2], cx + 0.35 * r, cy + 0.95 * r, 1.1 * r, 0.35 * r)
        canvas[shadow] *= 0.75
        DRAW[shape](canvas, cx, cy, r, COLOURS[colour])
    small = canvas.reshape(SIZE, SCALE, SIZE, SCALE, 3).mean(axis=(1, 3))  # box filter: clean edges
    return np.clip(small.round(), 0, 255).astype(np.uint8)


def random_set(rng: np.random.Generator) -> List[str]:
    """1 to 3 distinct objects, in :data:`OBJECTS` order."""
    k = int(rng.integers(1, 4))
    return [OBJECTS[i] for i in sorted(rng.choice(len(OBJECTS), size=k, replace=False))]


LAB = Path(__file__).resolve().parents[1] / "data" / "iclevr"  # the lab's own condition files, shipped as data
LAB_TESTS = ("test.json", "new_test.json")
# our validation sets, drawn like the lab's files but never the same sets: (seed, sets of 1, 2 and 3 objects,
# sets in which one colour sits on two shapes). Recipes are chosen on these; the lab's files are reported once.
VALIDATION = {"val_test.json": (2022_1, (6, 12, 14), 3), "val_new_test.json": (2022_2, (0, 12, 20), 28)}


def lab_sets(name: str) -> List[List[str]]:
    """One of the lab's shipped condition files (``test.json``, ``new_test.json``): its object-name lists."""
    import json

    return json.loads((LAB / name).read_text())


def binds(objects: Sequence[str]) -> bool:
    """Whether a set puts one colour on two shapes (``red sphere`` and ``red cube``): it tests binding."""
    colours = [o.split(" ")[0] for o in objects]
    return len(set(colours)) < len(colours)


def validation_sets(seed: int, sizes: Sequence[int], binding: int) -> List[List[str]]:
    """Sets drawn like a lab file: ``sizes[k - 1]`` sets of k objects, of which ``binding`` (among the sets of
    two or three) put one colour on two shapes and the rest have all colours distinct; seeded, shuffled."""
    rng = np.random.default_rng(seed)
    ks = [k for k, n in zip((1, 2, 3), sizes) for _ in range(n)]
    multi = [i for i, k in enumerate(ks) if k > 1]
    chosen = set(rng.choice(multi, size=binding, replace=False).tolist()) if binding else set()
    colours = list(COLOURS)
    sets = []
    for i, k in enumerate(ks):
        if i in chosen:  # a colour on two shapes, and for three objects a third of another colour
            c = colours[rng.integers(len(colours))]
            objects = [f"{c} {s}" for s in rng.choice(SHAPES, size=2, replace=False)]
            if k == 3:
                other = [x for x in colours if x != c][rng.integers(len(colours) - 1)]
                objects.append(f"{other} {SHAPES[rng.integers(len(SHAPES))]}")
        else:  # every colour distinct
            objects = [f"{c} {SHAPES[rng.integers(len(SHAPES))]}" for c in rng.choice(colours, size=k, replace=False)]
        sets.append(sorted(objects, key=OBJECTS.index))
    order = rng.permutation(len(sets))
    return [sets[j] for j in order]


def _render_file(args) -> None:
    path, objects, seed = args
    from PIL import Image

    from ..core.io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(render(objects, seed)).save(tmp, format="PNG")


def write_layout(out: Union[str, Path], count: int = 18_000, seed: int = 0, workers: int = 0,
                 progress: bool = True) -> Path:
    """Render ``count`` training scenes into the lab's layout under ``out``; same arguments, same bytes.

    ``objects.json`` (name -> index), ``train.json`` (file name -> object names; 1, 2 or 3 distinct
    objects, a third each, as the lab's ``train.json``), the lab's own ``test.json`` and ``new_test.json``,
    ``images/NNNNNN.png``.
    Scene i is ``render(objects, seed * 1_000_003 + i)``: one image can be drawn again alone, so an
    interrupted render keeps the images it finished and draws only the rest. ``train.json`` is written
    last: it marks the layout complete. ``workers`` processes (0: one per core).
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    from ..core.io import write_json
    from ..core.runtime import available_cores

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels: Dict[str, List[str]] = {f"{i:06d}.png": random_set(rng) for i in range(count)}
    todo = [(out / "images" / name, objects, seed * 1_000_003 + i)
            for i, (name, objects) in enumerate(labels.items()) if not (out / "images" / name).is_file()]
    workers = workers or available_cores()
    with tqdm(total=count, initial=count - len(todo), unit="scene", desc="render", disable=not progress) as bar:
        if workers <= 1 or len(todo) < 64:
            for task in todo:
                _render_file(task)
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_render_file, todo, chunksize=32):
                    bar.update()
    write_json(out / "objects.json", object_index())
    for name in LAB_TESTS:  # the lab's own grading sets, byte for byte
        (out / name).write_bytes((LAB / name).read_bytes())
    write_json(out / "train.json", labels)
    return out


def hits(scores: np.ndarray, asked: np.ndarray) -> np.ndarray:
    """Per image, how many of its top-k objects by ``scores`` (k = objects asked for) were asked for."""
    scores, asked = np.asarray(scores, np.float64), np.asarray(asked) > 0
    if scores.shape != asked.shape:
        raise ValueError(f"scores {scores.shape} and multi-hot labels {asked.shape} differ in shape")
    out = np.zeros(len(asked), np.int64)
    for i, (row_scores, row_asked) in enumerate(zip(scores, asked)):
        top = np.argsort(-row_scores, kind="stable")[: int(row_asked.sum())]
        out[i] = int(row_asked[top].sum())
    return out


def breakdown(scores: np.ndarray, asked: np.ndarray, groups: Sequence[str]) -> Dict[str, float]:
    """The lab's accuracy within each group of images (hits / objects asked, over the group's images)."""
    asked_n = (np.asarray(asked) > 0).sum(1)
    got = hits(scores, asked)
    out = {}
    for group in dict.fromkeys(groups):
        rows = np.array([g == group for g in groups])
        out[group] = float(got[rows].sum() / asked_n[rows].sum())
    return out


def accuracy(scores: np.ndarray, asked: np.ndarray) -> float:
    """The lab's accuracy: for each image, its top-k objects by ``scores`` (k = objects asked for) are hits
    when asked for; hits / objects asked for, over all images. Ties go to the lower index; an image asked
    for nothing counts nothing."""
    scores, asked = np.asarray(scores, np.float64), np.asarray(asked) > 0
    if scores.shape != asked.shape:
        raise ValueError(f"scores {scores.shape} and multi-hot labels {asked.shape} differ in shape")
    total = int(asked.sum())
    if total == 0:
        raise ValueError("no objects asked for: accuracy is undefined")
    hits = 0
    for row_scores, row_asked in zip(scores, asked):
        k = int(row_asked.sum())
        top = np.argsort(-row_scores, kind="stable")[:k]
        hits += int(row_asked[top].sum())
    return hits / total
