"""Multi-object conditional generation: the i-CLEVR lab, graded by the lab's accuracy.

Each image holds 1 to 3 of 24 objects (8 colours x 3 shapes); the generator
gets the set as a multi-hot condition and must draw exactly those objects.
The pair is the class-conditional one (:mod:`kaggle_gan.nets.conditional`: a set
embedding into conditional batch norm, a projection critic on the set, an
auxiliary multi-label head), trained by the one :class:`~kaggle_gan.training.loop.Trainer`.

Grading follows the lab: a multi-label classifier reads each generated
image; its top-k objects (k = objects asked for) are hits when asked for;
accuracy = hits / objects asked for, over the 32 sets of ``test.json`` and
the 32 of ``new_test.json``. The classifier is ours, trained from scratch on
the real (rendered) images, its held-out accuracy the ceiling; or the lab's
ResNet-18 with ``evaluator=PATH``.

Outputs under ``out`` (``WORK/iclevr`` from the CLI)::

    scenes-N-S/             the rendered layout (N scenes, seed S), when no real folder is given
    data/                   the prepared images and (N, 24) multi-hot labels
    run/                    the training run (config, checkpoints, samples: a row per set)
    test.png, new_test.png  the lab's picture: one image per set, 8 x 4
    accuracy.json           both accuracies, the ceiling, timings
    cache/grader/           our grading classifier, keyed by the data's sha256
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from ..config import Config, Preset, describe_presets, resolve
from ..core.io import RunLock, UserError, read_json, sha256_file, write_json
from .grader import logits, small_cnn, train_grader
from .iclevr_scenes import accuracy, write_layout

TESTS = ("test.json", "new_test.json")
SCENES = 18_000  # the lab's training set holds 18,009 images
GRADER_EPOCHS = 4
GRADER_WIDTHS = (16, 32, 64, 128)
GRADER_VERSION = 1  # bump when the grader or its training changes: the cache key includes it
DRAWS = 10  # noise draws per set for the steadier figure beside the lab's one-image-per-set accuracy

ICLEVR_PRESETS: Dict[str, Preset] = {p.name: p for p in (
    Preset("iclevr", None, "conditional DCGAN-style pair at 64x64 for CPU: set embedding into CBN, projection "
           "critic, auxiliary multi-label head", (
        ("model.resolution", 64, "the lab's image side"),
        ("model.z_dim", 64, "small networks and a short run; the layout is what the noise must carry"),
        ("model.g_width", 16, "a quarter of the sample's width: 2.8x the images/s of width 32 on 2 CPU cores, "
         "and more accurate in 20 minutes (README)"),
        ("model.d_width", 16, "same"),
        ("model.d_norm", "none", "spectral norm bounds the critic instead"),
        ("model.spectral_norm", True, "SN-GAN's critic, as the report's recipe"),
        ("model.classes", 24, "8 colours x 3 shapes"),
        ("loss.name", "hinge", "the projection-discriminator paper's loss; no double backward on CPU"),
        ("loss.aux_weight", 1.0, "the auxiliary multi-label head of the report's recipe"),
        ("optim.lr_g", 2e-4, "Adam (0, 0.9) at 2e-4, as SN-GAN"),
        ("optim.lr_d", 2e-4, "same"),
        ("optim.beta1", 0.0, "SN-GAN"),
        ("optim.beta2", 0.9, "SN-GAN"),
        ("train.batch_size", 32, "twice the updates of batch 64 at the same images/s: faster to 0.7 (README)"),
        ("train.flip", False, "the light comes from the left: a mirrored scene is lit from the right"),
        ("train.max_steps", 7000, "about 20 minutes on 2 CPU cores (~190 images/s)"),
        ("train.keep_epochs", False, "last.pt is enough"),
        ("train.ema_decay", 0.995, "a short run: an average over the last ~200 steps, not 1000"),
        ("train.log_every", 200, "a log row every 200 steps"),
        ("train.sample_every", 1000, "a grid every 1000 steps"),
    )),
)}


def iclevr_config(overrides: Optional[Dict[str, str]] = None) -> Config:
    return resolve("iclevr", dict(overrides or {}), table=ICLEVR_PRESETS)


def layout(out: Path, data: Optional[str], scenes: int, seed: int, progress: bool) -> Path:
    """The lab's folder: ``data`` when given (a real i-CLEVR folder), else our scenes, rendered once."""
    if data:
        folder = Path(data).expanduser()
        missing = [f for f in ("objects.json", "train.json", *TESTS) if not (folder / f).is_file()]
        if missing:
            raise UserError(f"{folder} has no {', '.join(missing)}; ICLEVR_DATA must be the lab's folder "
                            "(objects.json, train.json, test.json, new_test.json, images/)")
        return folder
    folder = out / f"scenes-{scenes}-{seed}"
    if not (folder / "train.json").is_file():  # written last: an interrupted render draws only what is missing
        print(f"iclevr: rendering {scenes} scenes into {folder}")
        write_layout(folder, scenes, seed, progress=progress)
    return folder


# --- graders -------------------------------------------------------------------------

def our_grader(prepared, cache: Path, epochs: int = GRADER_EPOCHS, progress: bool = True):
    """Our multi-label CNN for ``prepared`` and its ceiling: the lab's accuracy on held-out real images."""
    key = f"{prepared.meta['images_sha256'][:16]}-{prepared.meta['labels_sha256'][:16]}-e{epochs}-v{GRADER_VERSION}"
    model = small_cnn(len(prepared.classes), GRADER_WIDTHS)
    return train_grader(np.asarray(prepared.images), prepared.labels, model, Path(cache) / f"{key}.pt",
                        lambda out, y: accuracy(out.numpy(), y), epochs, progress=progress,
                        what="iclevr: grading classifier")


def lab_evaluator(path: Union[str, Path]):
    """The lab's own evaluator: a torchvision ResNet-18 whose head is Linear(512, 24) + Sigmoid, its weights
    under ``model`` in the checkpoint (or the state dict itself). Reads (B, 3, 64, 64) in [-1, 1]."""
    import torch
    import torchvision
    from torch import nn

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"evaluator checkpoint not found: {path}; pass the lab's checkpoint.pth or drop --evaluator")
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Sequential(nn.Linear(512, 24), nn.Sigmoid())
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    except Exception as err:  # a pickle of something else, or other keys
        first = str(err).strip().splitlines()[0][:160]
        raise UserError(f"{path} is not the lab's evaluator (a ResNet-18 with a 24-way sigmoid head): {first}") from err
    return net.eval()


# --- grading -------------------------------------------------------------------------

def draw_sets(G, conditions: "torch.Tensor", z_dim: int, seed: int, device) -> "torch.Tensor":  # noqa: F821
    """One image per row of ``conditions`` (B, K) from ``G`` in eval mode, noise from ``seed``."""
    import torch

    from ..data.sources import fixed_noise

    with torch.no_grad():
        return G(fixed_noise(len(conditions), z_dim, seed).to(device), conditions.to(device)).float().cpu()


def grade(G, grader, conditions: np.ndarray, z_dim: int, seed: int, device, draws: int = DRAWS):
    """(the lab's accuracy on one image per set, the accuracy of each of ``draws`` draws, the first draw's images)."""
    import torch

    cond = torch.from_numpy(conditions)
    per_draw, first = [], None
    for d in range(draws):
        images = draw_sets(G, cond, z_dim, seed + d, device)
        first = images if first is None else first
        per_draw.append(accuracy(logits(grader, images).numpy(), conditions))
    return per_draw[0], per_draw, first


def iclevr(out: Union[str, Path], data: Optional[str] = None, overrides: Optional[Dict[str, str]] = None,
           scenes: int = SCENES, scene_seed: int = 0, evaluator: Optional[str] = None, device: str = "auto",
           cache: Optional[Path] = None, grader_epochs: int = GRADER_EPOCHS, progress: bool = True) -> dict:
    """Render (once) or read the layout, prepare, train, grade on test.json and new_test.json; returns the results."""
    from ..data.labels import multi_hot
    from ..data.pictures import save_grid
    from ..data.prepare import prepare
    from ..data.prepared import load_prepared
    from ..training.loop import Trainer

    out = Path(out)
    cfg = iclevr_config(overrides)
    folder = layout(out, data, scenes, scene_seed, progress)
    prepared = load_prepared(prepare(str(folder), out / "data", size=cfg.model.resolution, labels="iclevr").folder)
    if len(prepared.classes) != cfg.model.classes:
        raise UserError(f"{folder / 'objects.json'} lists {len(prepared.classes)} objects; "
                        f"pass --set model.classes={len(prepared.classes)}")
    index = {name: i for i, name in enumerate(prepared.classes)}
    try:
        tests = {name: multi_hot(read_json(folder / name), index) for name in TESTS}
    except ValueError as err:
        raise UserError(f"{folder}: {err}") from err

    start = time.perf_counter()
    grader, ceiling = (lab_evaluator(evaluator), None) if evaluator else our_grader(
        prepared, Path(cache) if cache else out / "cache" / "grader", grader_epochs, progress)
    grader_s = time.perf_counter() - start

    start = time.perf_counter()
    with RunLock(out / "run"):
        trainer = Trainer(cfg, prepared.folder, out / "run", device=device, progress=progress)
        trainer.run()
    train_s = time.perf_counter() - start

    G = trainer.gan.sampler().eval()
    results: dict = {"steps": trainer.step, "train_s": round(train_s, 1), "grader_s": round(grader_s, 1),
                     "ceiling": None if ceiling is None else round(ceiling, 4),
                     "grader": str(evaluator) if evaluator else "ours", "data": str(folder), "draws": DRAWS}
    if evaluator:
        results["evaluator_sha256"] = sha256_file(Path(evaluator).expanduser())
    for name, conditions in tests.items():
        lab, per_draw, images = grade(G, grader, conditions, cfg.model.z_dim, cfg.train.seed + 5, trainer.device)
        picture = out / name.replace(".json", ".png")
        save_grid(images, picture, nrow=8, padding=2)  # 32 sets: 8 x 4, as the lab's figure
        results[name] = {"accuracy": round(lab, 4), "mean_of_draws": round(float(np.mean(per_draw)), 4),
                         "sd_of_draws": round(float(np.std(per_draw, ddof=1)), 4), "chance": round(chance(conditions), 4),
                         "sets": len(conditions), "objects": int(conditions.sum()), "grid": picture.name}
    results["config"] = cfg.to_dict()
    write_json(out / "accuracy.json", results)
    print(format_table(results))
    return results


def chance(conditions: np.ndarray) -> float:
    """The accuracy of random scores: an image asking for k of K objects hits k/K of its k picks on average."""
    k = conditions.sum(1)
    return float((k * k).sum() / (conditions.shape[1] * k.sum()))


def format_table(results: dict) -> str:
    """The lab's table: each test file's accuracy (one image per set), the mean over the draws, chance, the ceiling."""
    ceiling = "n/a (lab evaluator)" if results["ceiling"] is None else f"{results['ceiling']:.3f}"
    lines = [f"{'':14} {'accuracy':>9} {'mean of ' + str(results['draws']) + ' draws':>18} {'chance':>7} {'ceiling':>9}"]
    for name in TESTS:
        r = results[name]
        spread = f"{r['mean_of_draws']:.3f} +- {r['sd_of_draws']:.3f}"
        lines.append(f"{name:14} {r['accuracy']:>9.3f} {spread:>18} {r['chance']:>7.3f} {ceiling:>9}")
    lines.append(f"iclevr: {results['steps']} steps in {results['train_s']:.0f} s of training; grader "
                 f"{results['grader']}; the lab's full mark is 0.800; grids at test.png and new_test.png")
    return "\n".join(lines)


def describe() -> str:
    return describe_presets(ICLEVR_PRESETS)
