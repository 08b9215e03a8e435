"""How far a race's scores move with a fresh draw of images: the noise under its ranking (a script, not a test).

For each preset's final EMA generator in a finished race, draws ``--seeds``
sets of ``--count`` images (seed 0 is the set the race scored), and scores
each like the race does: AFD, and FID against the race's cached reference
statistics. With ``--ref-draws K`` every draw is also scored against K other
references of as many training images (seen the same way). Prints every draw,
then per preset the spread over draws beside the half-sample sd of one draw
(the race's ``+-``), and the spread over references.

    .venv/bin/python benchmarks/fid_noise.py --work work --presets baseline,strong,boss --seeds 3 \
        --ref-draws 3 --detector ../shared/assets/lbpcascade_animeface.xml

About 1 min per 1,000 images on 2 CPU cores (Inception), images drawn or references; nothing is retrained.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="work", help="the make targets' WORK (holds data/, race/ and cache/fid)")
    p.add_argument("--race", help="race folder (default: WORK/race)")
    p.add_argument("--data", help="prepared data the race used (default: WORK/data)")
    p.add_argument("--fid-cache", help="the race's reference-statistics cache (default: WORK/cache/fid)")
    p.add_argument("--presets", default="", help="comma-separated (default: every run in the race)")
    p.add_argument("--seeds", type=int, default=3, help="draws per preset (default: %(default)s)")
    p.add_argument("--count", type=int, help="images per draw (default: the race's default, 1000)")
    p.add_argument("--ref-count", type=int, help="reference images, as the race had (default: the race's default, 1000)")
    p.add_argument("--ref-draws", type=int, default=0,
                   help="other references of as many training images, each draw scored against them too "
                        "(default: %(default)s)")
    p.add_argument("--inception-weights", default="random:0", help="as the race used (default: %(default)s)")
    p.add_argument("--detector", help="cascade XML for AFD (default: the package's default detector)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()

    import numpy as np
    import torch

    from kaggle_gan.core.io import read_json
    from kaggle_gan.data.prepared import load_prepared
    from kaggle_gan.experiments import race as race_mod
    from kaggle_gan.scoring import afd as afd_mod
    from kaggle_gan.scoring import fid as fid_mod
    from kaggle_gan.scoring import inception

    work = Path(a.work)
    race_dir = Path(a.race or work / "race")
    settings = read_json(race_dir / "race.json")
    prepared = load_prepared(Path(a.data or work / "data"))
    size = int(prepared.images.shape[1])
    model = inception.load_inception(a.inception_weights, torch.device(a.device))
    view = race_mod.reference_view(settings["resolution"], size)  # for the other references below
    ref = race_mod.race_reference(prepared, model, Path(a.fid_cache or work / "cache" / "fid"),
                                  a.ref_count or race_mod.DEFAULT_REF_COUNT, settings["resolution"])
    det = afd_mod.make_detector(a.detector)
    count = a.count or race_mod.DEFAULT_COUNT
    # Other references: as many training images as the race's, drawn afresh (seeds 1, 2, ...), seen the same way.
    refs = [(ref.mu, ref.sigma)]
    for r in range(1, a.ref_draws + 1):
        pick = np.sort(np.random.default_rng(r).permutation(len(prepared.images))[: ref.count])
        chosen = prepared.images[pick]
        refs.append(fid_mod.statistics(fid_mod.activations(view[1](chosen) if view else chosen, model,
                                                           desc=f"reference {r}")))
    presets = [x for x in a.presets.split(",") if x] or sorted(d.name for d in (race_dir / "runs").iterdir())
    print(f"{model.label}, the race's reference: {ref.count} images ({'cached' if ref.cache_hit else 'computed'}), "
          f"real floor {race_mod.plus_minus(ref.floor, ref.floor_sd)}; {count} images per draw; "
          "FID against the race's reference"
          + (f", then against {a.ref_draws} others" if a.ref_draws else ""))
    others = "".join(f" {'ref ' + str(r):>8}" for r in range(1, len(refs)))
    print(f"{'preset':>9} {'seed':>4} {'AFD':>6} {'half-sd':>8} {'FID':>8}{others}")
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            snapshots = sorted((race_dir / "runs" / preset).glob("generator-*.pt"))
            if not snapshots:
                raise SystemExit(f"{race_dir / 'runs' / preset} holds no generator-*.pt: was {preset} raced? "
                                 "(medium is raced as baseline)")
            generator = snapshots[-1]
            afds, fids, sds = [], [], []  # fids[seed][reference]
            for seed in range(a.seeds):
                images, rate = race_mod.draw_images(generator, Path(tmp) / f"{preset}-{seed}", count, seed, prepared,
                                                    det, a.device)
                afds.append(rate)
                feats = fid_mod.activations(images, model, desc=f"{preset} seed {seed}")
                fids.append([fid_mod.frechet_distance_to_features(feats, mu, sigma) for mu, sigma in refs])
                sds.append(fid_mod.half_sample_sd(feats, ref.mu, ref.sigma))
                scores = "".join(f" {v:8.4f}" for v in fids[-1])
                print(f"{preset:>9} {seed:>4} {afds[-1]:6.3f} {sds[-1]:8.4f}{scores}", flush=True)
            race_ref = [row[0] for row in fids]
            line = (f"{preset:>9}: AFD {np.mean(afds):.3f} ({min(afds):.3f}-{max(afds):.3f}); FID against the race's "
                    f"reference {np.mean(race_ref):.4f} ({min(race_ref):.4f}-{max(race_ref):.4f}), sd over draws "
                    f"{_sd(race_ref):.4f}, median half-sample sd {statistics.median(sds):.4f}")
            if len(refs) > 1:
                line += (f"; seed 0 over all {len(refs)} references {min(fids[0]):.4f}-{max(fids[0]):.4f}, "
                         f"sd {_sd(fids[0]):.4f}")
            summary.append(line)
    print("\n".join(["", *summary]))


def _sd(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


if __name__ == "__main__":
    main()
