"""Benchmark of ``kaggle-gan score`` on CPU (a script, not a timed test).

Measures
1. the first-time cost of reference statistics (Inception over the reference
   subsample plus the 1000 held-out real images of the floor), once;
2. scoring 1000 64x64 images with cached statistics, end to end through
   ``score()`` and by phase, as the median of ``--repeats`` runs, including
   what every metric beyond FID adds (KID, MiFID, precision/recall,
   density/coverage: one feature pass, the real side cached), as a share of
   FID alone (Inception + Frechet distance);
3. the AFD calibration of the default cascade (real dev faces, noise, flat grey).

Inception costs the same with random and published weights, so ``random:0``
stands in where the real file cannot be downloaded.

    .venv/bin/python benchmarks/bench_score.py --data ../shared/data/anime-faces-dev.zip \
        --detector ../shared/assets/lbpcascade_animeface.xml --csv bench_score.csv
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


CPU_TIMES: list = []  # process CPU seconds of each timed call, all threads: robust to other jobs on the machine


def timed(fn, repeats: int):
    times, cpu, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    CPU_TIMES.append(statistics.median(cpu))
    return statistics.median(times), times, out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "data" / "anime-faces-dev.zip"), help="zip or folder of real faces")
    p.add_argument("--detector", default=str(SHARED / "assets" / "lbpcascade_animeface.xml"))
    p.add_argument("--weights", default="random:0", help="Inception weights: a path or random:SEED")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed after)")
    p.add_argument("--ref-count", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--count", type=int, default=1000, help="images scored (a submission has 1000)")
    p.add_argument("--skip-ref", action="store_true", help="reuse a cached reference (needs --work of an earlier run)")
    p.add_argument("--csv", default="bench_score.csv")
    args = p.parse_args(argv)

    import pandas as pd
    from PIL import Image

    from kaggle_gan.core.runtime import available_cores, resolve_device
    from kaggle_gan.data.prepare import prepare
    from kaggle_gan.scoring import afd, fid, inception, metrics
    from kaggle_gan.scoring.score import load_image_folder, score

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_score-"))
    rows = []

    def record(metric, seconds, n, runs, note="", cpu=None):
        cpu = CPU_TIMES[-1] if cpu is None else cpu
        rows.append({"metric": metric, "median_s": round(seconds, 2), "per_image_ms": round(1000 * seconds / n, 2),
                     "cpu_s": round(cpu, 2), "images": n, "repeats": len(runs),
                     "runs_s": " ".join(f"{r:.2f}" for r in runs), "note": note})

    try:
        device = resolve_device("cpu")
        prepared = prepare(args.data, work / "data", 64)
        n = len(prepared.images)

        # `count` "generated" images: real faces saved as the submission's JPEGs (1000 by default).
        images_dir = work / "gen" / "images"
        images_dir.mkdir(parents=True, exist_ok=True)
        picks = np.random.default_rng(1).choice(n, args.count, replace=False)
        for i, k in enumerate(picks, 1):
            Image.fromarray(np.asarray(prepared.images[k])).save(images_dir / f"{i}.jpg", quality=95)

        model = inception.load_inception(args.weights, device)
        cache = work / "cache" / "fid"
        hold, ref = fid.split_counts(n, args.ref_count)
        if not args.skip_ref:
            shutil.rmtree(cache, ignore_errors=True)
        t, c = time.perf_counter(), time.process_time()
        stats = fid.reference_stats(prepared.images, prepared.meta["images_sha256"], model, cache, args.ref_count)
        first, first_cpu = time.perf_counter() - t, time.process_time() - c
        if not stats.cache_hit:
            record("reference stats, first time", first, ref + hold, [first],
                   f"{ref} reference + {hold} floor images through Inception, then 2 Frechet terms", cpu=first_cpu)

        # End to end with cached statistics, as `kaggle-gan score` runs it.
        def run():
            return score(images_dir, work / "data", work, inception_weights=args.weights, detector=args.detector,
                         device="cpu", ref_count=args.ref_count, quiet=True)

        med, runs, report = timed(run, args.repeats)
        assert report["fid"]["reference"]["cache_hit"]
        record(f"score {args.count} images, cached stats", med, args.count, runs, "read + AFD + Inception + Frechet + reports")

        # By phase, to see where the time goes.
        med, runs, (names, imgs, _) = timed(lambda: load_image_folder(images_dir, 64), args.repeats)
        record(f"  read and decode {args.count} JPEGs", med, args.count, runs)
        det = afd.make_detector(args.detector)
        med, runs, _ = timed(lambda: afd.detection_rate(imgs, det, progress=False), args.repeats)
        record("  AFD (cascade)", med, args.count, runs)
        med, runs, feats = timed(lambda: fid.activations(imgs, model), args.repeats)
        record("  Inception activations", med, args.count, runs, f"batch 32, {available_cores()} cores")
        med, runs, value = timed(lambda: fid.frechet_distance_to_features(feats, stats.mu, stats.sigma), args.repeats)
        record("  Frechet distance (float64, (N, N) route)", med, args.count, runs)
        fid_alone = rows[-2]["median_s"] + rows[-1]["median_s"]
        med, runs, _ = timed(lambda: metrics.all_metrics(feats, stats.real, value), args.repeats)
        record("  KID, MiFID, precision/recall, density/coverage", med, args.count, runs,
               f"against {ref} cached reference features")
        extra = med / fid_alone

        # AFD calibration of the default cascade.
        calib = [("real dev faces", np.asarray(prepared.images))]
        rng = np.random.default_rng(0)
        calib.append(("uniform noise", rng.integers(0, 256, (1000, 64, 64, 3), dtype=np.uint8)))
        levels = np.linspace(0, 255, 1000).astype(np.uint8)[:, None, None, None]
        calib.append(("flat grey", np.ascontiguousarray(np.broadcast_to(levels, (1000, 64, 64, 3)))))
        afd_rows = [{"images": name, "count": len(x), "AFD": round(afd.detection_rate(x, det, progress=False).rate, 4)}
                    for name, x in calib]
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    table = pd.DataFrame(rows)
    load = os.getloadavg()
    print(f"\nscore benchmark: {available_cores()} CPU cores, torch {__import__('torch').__version__}, "
          f"weights {args.weights}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other jobs slow wall times)")
    print(table.to_string(index=False))
    print(f"\nFID of the {args.count} stand-in images: {value:.2f}; real floor {stats.floor:.2f}")
    print(f"every metric beyond FID costs {100 * extra:.1f}% more than FID alone (Inception + Frechet distance)")
    print("\nAFD calibration (" + ", ".join(f"{k}={v}" for k, v in det.describe()["params"].items()) + ")")
    print(pd.DataFrame(afd_rows).to_string(index=False))
    table.to_csv(args.csv, index=False)
    print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()
