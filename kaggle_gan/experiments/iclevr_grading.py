"""How i-CLEVR generation is graded: two classifiers trained from scratch on the real (rendered) images, the
lab's accuracy per condition file, and where it fails (set size, colour-shape binding).

Graders (each cached under a key of the data, its epochs and its version):

- ``small CNN``: ours, 16-32-64-128 conv blocks (:func:`.grader.small_cnn`);
- ``ResNet-18``: the lab's way, a torchvision ResNet-18 with a 24-way head, from scratch (no pretrained
  weights), trained with a binary cross-entropy per object as the lab's sigmoid head is;
- ``lab evaluator``: the lab's own checkpoint, when ``--evaluator`` names one.

The two graders disagree by up to 0.1 on the same images, so both are reported
and the lower decides. Each grader's ceiling is its accuracy on held-out real
images; its strictness about shape, its accuracy on the same images blurred to
blobs (down to 8x8 and back): a grader that still reads blobs well grades
colour more than shape.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from .grader import as_input, logits, small_cnn, split, train_grader
from .iclevr_scenes import accuracy, binds, breakdown

GRADER_EPOCHS = 4
GRADER_WIDTHS = (16, 32, 64, 128)
GRADER_VERSION = 1  # bump when a grader or its training changes: the cache key includes it
BLOB_SIDE = 8  # held-out images shrunk to this side and back: shapes gone, colours and places kept
DRAWS = 10  # noise draws per set for the steadier figure beside the lab's one-image-per-set accuracy


def resnet18(classes: int) -> "torch.nn.Module":  # noqa: F821
    """The lab's classifier, untrained: torchvision's ResNet-18 with a ``classes``-way linear head (logits; the
    lab's sigmoid is monotonic, so the top-k it grades by is the same)."""
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=classes)


GRADERS = {"small CNN": lambda k: small_cnn(k, GRADER_WIDTHS), "ResNet-18": resnet18}


def train_graders(prepared, cache: Path, epochs: int = GRADER_EPOCHS, progress: bool = True) -> Dict[str, tuple]:
    """Each grader of :data:`GRADERS` for ``prepared``: (model, ceiling on held-out real images)."""
    key = f"{prepared.meta['images_sha256'][:16]}-{prepared.meta['labels_sha256'][:16]}-e{epochs}-v{GRADER_VERSION}"
    out = {}
    for name, build in GRADERS.items():
        slug = name.lower().replace(" ", "-")
        out[name] = train_grader(np.asarray(prepared.images), prepared.labels, build(len(prepared.classes)),
                                 Path(cache) / f"{slug}-{key}.pt", lambda o, y: accuracy(o.numpy(), y), epochs,
                                 progress=progress, what=f"iclevr: {name} grader")
    return out


def blobs(images: np.ndarray, side: int = BLOB_SIDE) -> np.ndarray:
    """(N, H, W, 3) uint8 shrunk to ``side`` (area average) and back (bilinear): blobs of colour."""
    from ..data.pictures import resize_images

    return resize_images(resize_images(images, side), images.shape[1])


def strictness(model, prepared) -> float:
    """The grader's accuracy on its held-out real images blurred to blobs (shapes gone)."""
    _train, held = split(len(prepared.images))
    images = np.asarray(prepared.images)[held]
    return float(accuracy(logits(model, as_input(blobs(images))).numpy(), np.asarray(prepared.labels)[held]))


def draw_sets(G, conditions: "torch.Tensor", z_dim: int, seed: int, device) -> "torch.Tensor":  # noqa: F821
    """One image per row of ``conditions`` (B, K) from ``G`` in eval mode, noise from ``seed``."""
    import torch

    from ..data.sources import fixed_noise

    with torch.no_grad():
        return G(fixed_noise(len(conditions), z_dim, seed).to(device), conditions.to(device)).float().cpu()


def groups(sets: Sequence[Sequence[str]]) -> Dict[str, List[str]]:
    """Each set's group by size (``1 object`` ...) and by binding (``colour on two shapes`` or not)."""
    return {"size": [f"{len(s)} object{'s' if len(s) > 1 else ''}" for s in sets],
            "binding": ["colour on two shapes" if binds(s) else "colours distinct" for s in sets]}


def grade_file(G, graders: Dict[str, object], sets: Sequence[Sequence[str]], conditions: np.ndarray, z_dim: int,
               seed: int, device, draws: int = DRAWS) -> Dict[str, dict]:
    """Per grader: the lab's accuracy on one image per set (the first draw), the mean and sd over ``draws``
    draws, and the accuracy by set size and by binding over all draws. The same images for every grader."""
    import torch

    cond = torch.from_numpy(conditions)
    images = [draw_sets(G, cond, z_dim, seed + d, device) for d in range(draws)]
    named = groups(sets)
    out = {}
    for name, model in graders.items():
        scores = [logits(model, x).numpy() for x in images]
        per_draw = [accuracy(s, conditions) for s in scores]
        every = np.concatenate(scores), np.concatenate([conditions] * draws)
        out[name] = {"accuracy": round(per_draw[0], 4), "mean_of_draws": round(float(np.mean(per_draw)), 4),
                     "sd_of_draws": round(float(np.std(per_draw, ddof=1)), 4) if draws > 1 else 0.0,
                     **{kind: {g: round(v, 4) for g, v in breakdown(*every, labels * draws).items()}
                        for kind, labels in named.items()}}
    return out


def chance(conditions: np.ndarray) -> float:
    """The accuracy of random scores: an image asking for k of K objects hits k/K of its k picks on average."""
    k = conditions.sum(1)
    return float((k * k).sum() / (conditions.shape[1] * k.sum()))


def lowest(result: Dict[str, dict], key: str) -> float:
    """The lower of the graders' figures (``accuracy`` or ``mean_of_draws``): what the targets are judged by."""
    return min(r[key] for r in result.values())


def format_table(results: dict) -> str:
    """A row per condition file and grader: accuracy, mean of draws, by size and binding; chance and ceilings."""
    files, graders = results["files"], list(results["graders"])
    lines = [f"{'file':22} {'grader':14} {'accuracy':>8} {'mean of draws':>16} {'1 obj':>6} {'2 obj':>6} "
             f"{'3 obj':>6} {'bound':>6} {'distinct':>8} {'chance':>6}"]
    for name, entry in files.items():
        for grader in graders:
            r = entry["graders"][grader]
            size = [r["size"].get(k) for k in ("1 object", "2 objects", "3 objects")]
            bind = [r["binding"].get(k) for k in ("colour on two shapes", "colours distinct")]
            cells = [f"{v:>6.3f}" if v is not None else f"{'-':>6}" for v in size + bind[:1]]
            lines.append(f"{name:22} {grader:14} {r['accuracy']:>8.3f} "
                         f"{r['mean_of_draws']:>7.3f} +- {r['sd_of_draws']:.3f} {' '.join(cells)} "
                         f"{bind[1] if bind[1] is not None else float('nan'):>8.3f} {entry['chance']:>6.3f}")
    for grader, g in results["graders"].items():
        ceiling = "n/a" if g["ceiling"] is None else f"{g['ceiling']:.4f}"
        blob = "n/a" if g["blobs"] is None else f"{g['blobs']:.3f}"
        lines.append(f"grader {grader}: held-out real images {ceiling}; the same blurred to blobs {blob}")
    lines.append(f"iclevr: {results['steps']} steps in {results['train_s']:.0f} s of training; the lower grader "
                 "decides (the lab's full mark is 0.800); val_*.json are ours, drawn like the lab's; grids: *.png")
    return "\n".join(lines)
