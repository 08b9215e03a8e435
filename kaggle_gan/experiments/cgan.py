"""Class-conditional GAN: labelled data, the one training loop, graded by a classifier.

The generator takes a class with its noise (conditional batch norm, plus an
embedding or one-hot input), the critic is a projection critic, optionally
with an auxiliary classifier (:mod:`kaggle_gan.nets.conditional`, ``model.classes`` > 0);
:class:`kaggle_gan.training.loop.Trainer` trains them with any loss. Grading follows
how conditional generation is judged: a classifier trained by the project on
real images reads generated ones, and its accuracy against the class asked
for is reported per class; its accuracy on held-out real images is the ceiling.

Data: scikit-learn's bundled 8x8 digits (no download) upscaled to 32x32, or
any folder of images by class (``class_name/*.jpg``) or with a CSV of labels.

Outputs under ``out`` (``WORK/cgan`` from the CLI)::

    data/                   the prepared labelled images (images.npy, labels.npy, prepare.json)
    run/                    the training run (config, checkpoints, samples: a row per class)
    sheet.png               a row per class, from the EMA generator
    accuracy.csv, .json     per-class accuracy of generated images, the ceiling, timings
    cache/classifier/       the grading classifier, keyed by the data's sha256
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from ..config import Config, Preset, describe_presets, resolve
from ..core.io import RunLock, UserError, atomic_path, read_json, write_json
from .grader import logits, small_cnn, train_grader

DIGITS = "digits"
CLASSIFIER_EPOCHS = 12
CLASSIFIER_VERSION = 1  # bump when the classifier or its training changes: the cache key includes it

CGAN_PRESETS: Dict[str, Preset] = {p.name: p for p in (
    Preset("cgan", None, "conditional DCGAN-style pair at 32x32 for CPU: CBN generator, projection critic", (
        ("model.resolution", 32, "the digits are 8x8, upscaled; 32 is the smallest side the DCGAN plan has"),
        ("model.z_dim", 32, "ten classes of simple strokes need little noise"),
        ("model.g_width", 32, "a quarter of the sample's width: a step in milliseconds on CPU"),
        ("model.d_width", 32, "same"),
        ("model.d_norm", "none", "spectral norm bounds the critic instead"),
        ("model.spectral_norm", True, "SN-GAN's critic, as in the projection-discriminator paper"),
        ("loss.name", "hinge", "the projection-discriminator paper's loss"),
        ("optim.lr_g", 2e-4, "Adam (0, 0.9) at 2e-4, as SN-GAN"),
        ("optim.lr_d", 2e-4, "same"),
        ("optim.beta1", 0.0, "SN-GAN"),
        ("optim.beta2", 0.9, "SN-GAN"),
        ("train.flip", False, "a mirrored digit is another symbol"),
        ("train.max_steps", 3000, "~100 epochs of the 1,797 digits"),
        ("train.keep_epochs", False, "an epoch is 28 steps: last.pt is enough"),
        ("train.ema_decay", 0.999, "the image presets' EMA"),
        ("train.log_every", 100, "a log row every 100 steps"),
    )),
)}


def load_digits_32(size: int = 32) -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 bundled 8x8 digits -> ((N, size, size, 3) uint8, white strokes on black; (N,) labels)."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)  # values 0..16
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    grey = x.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    return np.repeat(grey[..., None], 3, axis=3), digits.target.astype(np.int64)


def prepare_digits(out: Path, size: int = 32) -> "Prepared":  # noqa: F821
    """The digits as a prepared labelled folder (the same files ``prepare --labels`` writes); a no-op if done."""
    import pandas as pd

    from ..data.prepared import load_prepared, write_prepared

    out = Path(out)
    want = {"source": DIGITS, "size": size}
    if (out / "prepare.json").is_file() and {k: read_json(out / "prepare.json").get(k) for k in want} == want:
        return load_prepared(out)
    images, labels = load_digits_32(size)
    manifest = pd.DataFrame({"index": range(len(images)), "file": [f"digits/{i}" for i in range(len(images))],
                             "status": "ok", "reason": ""})
    prepared = write_prepared(out, images, manifest, want, labels, [str(c) for c in range(10)])
    print(f"prepare: {len(images)} digits at {size}x{size} in {out}")
    return prepared


# --- the grading classifier --------------------------------------------------------

def predict(model, x: "torch.Tensor", batch: int = 500) -> np.ndarray:  # noqa: F821
    """The class the classifier reads in each image of ``x``."""
    return logits(model, x, batch).argmax(1).numpy()


def grading_classifier(images: np.ndarray, labels: np.ndarray, classes: int, key: str, cache: Path,
                       progress: bool = True) -> Tuple["torch.nn.Module", float]:  # noqa: F821
    """A CNN trained on the real training split, and its accuracy on the held-out split (the ceiling).

    Cached in ``cache`` under ``key`` (the data's sha256 and the image side): a second run loads it.
    """
    return train_grader(images, labels, small_cnn(classes, (16, 32, 64)), Path(cache) / f"{key}-v{CLASSIFIER_VERSION}.pt",
                        lambda out, y: float((out.argmax(1).numpy() == y).mean()), CLASSIFIER_EPOCHS,
                        progress=progress, what="cgan: grading classifier")


# --- grading -----------------------------------------------------------------------

def generate_per_class(G, classes: int, per_class: int, z_dim: int, seed: int, device) -> Tuple["torch.Tensor", np.ndarray]:  # noqa: F821
    """``per_class`` images of every class from ``G`` (eval mode): ((classes * per_class, 3, R, R), asked labels)."""
    import torch

    from ..data.sources import fixed_noise

    y = torch.arange(classes).repeat_interleave(per_class)
    z = fixed_noise(len(y), z_dim, seed)
    with torch.no_grad():
        x = torch.cat([G(z[i : i + 500].to(device), y[i : i + 500].to(device)).float().cpu()
                       for i in range(0, len(y), 500)])
    return x, y.numpy()


def accuracy_table(predicted: np.ndarray, asked: np.ndarray, names) -> "pd.DataFrame":  # noqa: F821
    """One row per class: how many were asked for, and the share the classifier read as that class."""
    import pandas as pd

    rows = [{"class": name, "asked": int((asked == i).sum()), "accuracy": float((predicted[asked == i] == i).mean())}
            for i, name in enumerate(names)]
    return pd.DataFrame(rows)


def cgan_config(classes: int, overrides: Optional[Dict[str, str]] = None) -> Config:
    return resolve("cgan", {"model.classes": classes, **(overrides or {})}, table=CGAN_PRESETS)


def cgan(out: Union[str, Path], data: str = DIGITS, labels: Optional[str] = None,
         overrides: Optional[Dict[str, str]] = None, per_class: int = 100, device: str = "auto",
         cache: Optional[Path] = None, progress: bool = True) -> dict:
    """Prepare ``data``, train the conditional GAN, grade it; writes the sheet and accuracy files, returns the results."""
    from ..data.pictures import resize_images, save_grid
    from ..data.prepare import prepare
    from ..data.prepared import load_prepared
    from ..training.loop import Trainer

    out = Path(out)
    if data == DIGITS:
        prepared = prepare_digits(out / "data")
    else:
        prepared = prepare(data, out / "data", size=32, labels=labels or "folders")
    prepared = load_prepared(prepared.folder)
    if prepared.labels is None:
        raise UserError(f"{prepared.folder} holds no labels; pass --labels folders or --labels FILE.csv")
    names = prepared.classes
    cfg = cgan_config(len(names), overrides)
    start = time.perf_counter()
    with RunLock(out / "run"):
        trainer = Trainer(cfg, prepared.folder, out / "run", device=device, progress=progress)
        trainer.run()
    train_s = time.perf_counter() - start

    start = time.perf_counter()
    images = np.asarray(prepared.images)
    if images.shape[1] != cfg.model.resolution:
        images = resize_images(images, cfg.model.resolution)
    key = f"{prepared.meta['images_sha256'][:16]}-{prepared.meta['labels_sha256'][:16]}-{cfg.model.resolution}"
    classifier, ceiling = grading_classifier(images, prepared.labels, len(names), key,
                                             Path(cache) if cache else out / "cache" / "classifier", progress)
    G = trainer.gan.sampler().eval()
    fake, asked = generate_per_class(G, len(names), per_class, cfg.model.z_dim, cfg.train.seed + 3, trainer.device)
    table = accuracy_table(predict(classifier, fake), asked, names)
    overall = float((table.accuracy * table.asked).sum() / table.asked.sum())
    grade_s = time.perf_counter() - start
    per_row = min(per_class, 10)
    rows = fake.view(len(names), per_class, *fake.shape[1:])[:, :per_row].reshape(-1, *fake.shape[1:])
    save_grid(rows, out / "sheet.png", nrow=per_row, padding=1)  # a row per class
    with atomic_path(out / "accuracy.csv") as tmp:
        table.to_csv(tmp, index=False)
    results = {"overall": round(overall, 4), "ceiling": round(ceiling, 4), "chance": round(1 / len(names), 4),
               "per_class": dict(zip(table["class"], table.accuracy.round(4))), "steps": trainer.step,
               "train_s": round(train_s, 1), "grade_s": round(grade_s, 1), "images_per_class": per_class,
               "config": cfg.to_dict()}
    write_json(out / "accuracy.json", results)
    shown = table.assign(accuracy=(table.accuracy * 100).round(1))
    print(shown.to_string(index=False))
    print(f"cgan: generated-image accuracy {overall:.1%} (classifier ceiling on held-out real images {ceiling:.1%}, "
          f"chance {1 / len(names):.0%}); trained {trainer.step} steps in {train_s:.0f} s; sheet at {out / 'sheet.png'}")
    return results


def describe() -> str:
    return describe_presets(CGAN_PRESETS)
