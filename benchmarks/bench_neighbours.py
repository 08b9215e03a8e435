"""Benchmark of ``kaggle-gan neighbours`` on CPU (a script, not a timed test).

Measures
1. the exact top-k search itself: ``--queries`` unit vectors against an index of
   ``--index`` float16 unit vectors, for the feature widths of the backbones
   (512 CLIP projection, 512 resnet18, 2048 Inception), median of ``--repeats``;
2. index-build throughput per backbone (feature extraction with mirror
   averaging, as ``build_index`` does) on a subset of real faces (64 for the
   big networks, more for small ones), extrapolated to 10,000 images and
   labelled so;
3. the leave-one-out calibration that ``build_index`` adds (1000 x N search).

Untrained (``random:0``) networks cost the same as trained ones, so they stand
in where the weights cannot be downloaded.

    .venv/bin/python benchmarks/bench_neighbours.py --data /tmp/nn/data --csv bench_neighbours.csv
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"

BACKBONES = (  # name, input size (None: the network's own), images measured (times --scale)
    ("clip", None, 64),
    ("inception", None, 64),
    ("resnet18", None, 256),
    ("resnet18", 32, 1000),
)


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "data" / "anime-faces-dev.zip"),
                   help="a prepared folder, or a zip/folder of faces to prepare into --work")
    p.add_argument("--work", default="/tmp/bench_neighbours", help="scratch folder for preparing --data")
    p.add_argument("--index", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the images measured per backbone")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-build", action="store_true", help="search timings only")
    p.add_argument("--csv", default="bench_neighbours.csv")
    args = p.parse_args(argv)

    import pandas as pd
    import torch

    from kaggle_gan.core.runtime import available_cores, resolve_device
    from kaggle_gan.data.prepare import prepare
    from kaggle_gan.data.prepared import load_prepared
    from kaggle_gan.scoring import backbones as bb
    from kaggle_gan.scoring import neighbours as nb

    device = resolve_device("cpu")
    rows = []
    print(f"cpu cores {available_cores()}, torch threads {torch.get_num_threads()}", flush=True)

    rng = np.random.default_rng(0)
    for dim in (512, 2048):
        index = rng.normal(size=(args.index, dim)).astype(np.float32)
        index = (index / np.linalg.norm(index, axis=1, keepdims=True)).astype(np.float16)
        q = rng.normal(size=(args.queries, dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        nb.topk_cosine(q[:10], index, 5, device=device)  # warm-up: thread pool, allocator
        med, runs, _ = timed(lambda: nb.topk_cosine(q, index, 5, device=device), args.repeats)
        rows.append({"what": f"search {args.queries} x {args.index}, D={dim}, k=5, chunk {nb.DEFAULT_CHUNK}",
                     "median_s": round(med, 3), "runs_s": " ".join(f"{r:.3f}" for r in runs), "note": "measured"})
        print(rows[-1], flush=True)
        med, runs, _ = timed(lambda: nb.leave_one_out_top1(index, device=device), max(1, args.repeats // 2))
        rows.append({"what": f"calibration 1000 x {args.index}, D={dim}", "median_s": round(med, 3),
                     "runs_s": " ".join(f"{r:.3f}" for r in runs), "note": "measured, once per index"})
        print(rows[-1], flush=True)

    if not args.skip_build:
        data = Path(args.data)
        prepared = load_prepared(data) if (data / "prepare.json").is_file() else prepare(str(data), Path(args.work) / "data", 64)
        for name, size, count in BACKBONES:
            images = np.array(prepared.images[: max(8, int(count * args.scale))])
            net = bb.load_backbone(name, "random:0", device, size)
            bb.embed(images[:4], net, desc="warm-up")
            med, runs, _ = timed(lambda: bb.embed(images, net, desc=name), 1)
            rate = len(images) / med
            label = f"{net.name} @ {net.preprocessing['input_size']} px"
            rows.append({"what": f"index build {label}: {len(images)} images", "median_s": round(med, 2),
                         "runs_s": f"{rate:.1f} img/s", "note": "measured"})
            rows.append({"what": f"index build {label}: 10,000 images", "median_s": round(10_000 / rate, 1),
                         "runs_s": f"{rate:.1f} img/s", "note": f"extrapolated from {len(images)}"})
            print(rows[-2], rows[-1], flush=True)

    table = pd.DataFrame(rows)
    table.to_csv(args.csv, index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
