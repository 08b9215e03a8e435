"""What truncation and curated pools do to a run's submission (a script, not a test).

For one trained run it draws, through ``kaggle_gan.sampling.generate.generate`` (the
same path as ``kaggle-gan generate``), ``--count`` images for

- truncation psi 1, 0.85, 0.7, 0.5 (no pool), and
- pools of 2N and 4N images ranked by the run's critic and by the detector
  (psi 1; the pool of N is the psi 1 row),

and scores each set as the race scores: AFD with the detector, and KID,
precision, recall, MiFID's memorisation distance and FID on Inception
features against the race's reference (``--ref-count`` training images seen
at the run's resolution). Without real Inception weights the features are
``random:0`` and every feature metric is a proxy, comparable only within
this table.

    .venv/bin/python benchmarks/sampling_table.py --run work/runs/boss32 --checkpoint last --data work/data \\
        --detector ../shared/assets/lbpcascade_animeface.xml --out work/sampling

Writes ``OUT/sampling.csv`` and prints the table. Each image set is kept in
``OUT/NAME/`` and reused when its ``images.json`` matches.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRUNCATIONS = (1.0, 0.85, 0.7, 0.5)
POOLS = (2, 4)  # times the count
SELECTORS = ("critic", "detector")


def settings(count: int):
    """(name, generate's keyword arguments) per row."""
    rows = [(f"psi{psi:g}", {"truncation": psi}) for psi in TRUNCATIONS]
    rows += [(f"pool{k}N-{sel}", {"pool": k * count, "select": sel}) for k in POOLS for sel in SELECTORS]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a trained run folder (its best.pt or generator.pt and critic)")
    p.add_argument("--checkpoint", default="best", help="best or last, as generate's (default: best)")
    p.add_argument("--data", default="work/data", help="the prepared data the run trained on")
    p.add_argument("--detector", help="cascade XML (default: the cached one)")
    p.add_argument("--inception-weights", help="Inception weights (default: the cached ones, else random:0)")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--ref-count", type=int, default=1000)
    p.add_argument("--out", default="work/sampling")
    p.add_argument("--cache", default="work/cache/fid", help="reference statistics cache (the race's, shared)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)

    import pandas as pd

    from kaggle_gan.core.io import read_json
    from kaggle_gan.core.runtime import resolve_device
    from kaggle_gan.data.prepared import load_prepared
    from kaggle_gan.experiments.race import race_reference
    from kaggle_gan.sampling.generate import generate
    from kaggle_gan.sampling.runs import load_generator
    from kaggle_gan.scoring import afd, fid, inception, metrics
    from kaggle_gan.scoring.score import load_image_folder

    out = Path(a.out)
    prepared = load_prepared(a.data)
    detector = afd.make_detector(a.detector)
    model = inception.load_inception_or_proxy(a.inception_weights, resolve_device(a.device), "sampling_table")
    _G, cfg, step = load_generator(Path(a.run), "cpu", a.checkpoint)
    ref = race_reference(prepared, model, Path(a.cache), a.ref_count, cfg.model.resolution)
    rows = []
    for name, kwargs in settings(a.count):
        folder = out / name
        meta = read_json(out / f"{name}.json") if (out / f"{name}.json").is_file() else {}
        if not (meta.get("step") == step and all(meta.get(k) == v for k, v in kwargs.items())
                and meta.get("count") == a.count):
            generate(Path(a.run), folder, n=a.count, device=a.device, detector=a.detector, checkpoint=a.checkpoint,
                     **kwargs)
        names, images, _ = load_image_folder(folder, int(prepared.images.shape[1]),
                                             prepared.meta.get("resample", "bilinear"))
        feats = fid.activations(images, model, desc=name)
        distance = fid.frechet_distance_to_features(feats, ref.mu, ref.sigma)
        scores = metrics.all_metrics(feats, ref.real, distance)
        rate = afd.detection_rate(images, detector, names, progress=False).rate
        rows.append({"set": name, **kwargs, "afd": rate, "afd_se": math.sqrt(rate * (1 - rate) / len(images)),
                     "kid_x1000": 1000 * scores["kid"], "kid_sd_x1000": 1000 * scores["kid_sd"],
                     "precision": scores["precision"], "recall": scores["recall"],
                     "memorisation_distance": scores["memorisation_distance"],
                     "fid": distance})
    table = pd.DataFrame(rows)
    table.to_csv(out / "sampling.csv", index=False)
    print(f"run {a.run} (step {step}), {a.count} images per set; features: {model.label}")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(4).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
