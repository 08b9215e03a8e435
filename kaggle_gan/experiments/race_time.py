"""The race at equal minutes: each preset gets the same wall-clock budget on the same machine, several seeds.

A user pays in minutes, not in images: a recipe that reaches faces with a
fifth of the arithmetic per image can afford five times the images. Each
(preset, seed) trains for ``minutes`` of training time (``train.minutes``:
the schedules fitted to the steps the budget allows, evaluation not counted),
one run after another so that no run slows another down. Along the way the
evaluation measures AFD at ``points`` even marks of the budget (the curve);
at the end the final EMA generator is scored the way :mod:`kaggle_gan.experiments.race`
scores a point (AFD on ``count`` images; KID, precision/recall on
``fid_count``; FID on all against the race's reference).

Outputs under ``WORK`` (``WORK/race-minutes`` from the CLI)::

    runs/PRESET-sSEED/      each training run (metrics.csv: the AFD curve against minutes)
    minutes.json            the budget and scale: a second race in the folder reuses finished runs
    minutes.csv             one row per preset and seed: the final scores
    curve.csv, minutes.png  AFD against minutes of training: each seed, and each preset's median

The printed table gives each preset's median and spread (min-max) over the seeds.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from ..config import resolve
from ..core.io import UserError, atomic_path, read_json, write_json
from .race import check_settings, fid_model, race_config, race_reference, score_point
from .race_tables import plot_minutes, seed_summary

SCORES = ("afd", "fid", "fid_sd", "kid", "kid_sd", "precision", "recall")
COLUMNS = ["preset", "seed", "minutes", "train_min", "steps", "kimg", *SCORES, "fid_label", "threads"]
NO_CAP = 10**9  # the time budget ends these runs, not a step count


def race_minutes(
    data_dir: Union[str, Path],
    work: Union[str, Path],
    presets: Sequence[str],
    minutes: float,
    seeds: Sequence[int],
    resolution: int,
    width: int,
    batch_size: int = 64,
    points: int = 5,
    count: int = 1000,
    fid_count: int = 250,
    ref_count: int = 1000,
    inception_weights: Optional[str] = None,
    detector=None,
    device: str = "auto",
    overrides: Optional[Dict[str, str]] = None,
    fid_cache: Optional[Path] = None,
    progress: bool = True,
) -> "pd.DataFrame":  # noqa: F821
    """Train every preset for ``minutes`` at every seed, one run at a time; write and print the summary."""
    import pandas as pd

    from ..core.runtime import cpu_threads, resolve_device
    from ..data.prepared import load_prepared
    from ..scoring import afd as afd_mod
    from ..training.loop import train

    data_dir, work = Path(data_dir), Path(work)
    if minutes <= 0 or points < 1 or not seeds or count < 2 or not 2 <= fid_count <= count:
        raise UserError("race --minutes needs minutes > 0, points >= 1, seeds, count >= 2 and 2 <= fid-count <= count")
    prepared = load_prepared(data_dir)
    det = afd_mod.make_detector(detector)
    settings = {"minutes": minutes, "points": points, "resolution": resolution, "width": width,
                "batch_size": batch_size, "overrides": dict(overrides or {})}
    check_settings(work, settings, "minutes.json", "a race at equal minutes")
    dev = resolve_device(device)
    model = fid_model(inception_weights, dev)
    ref = race_reference(prepared, model, Path(fid_cache) if fid_cache else work / "cache" / "fid", ref_count,
                         resolution)
    budget = {"train.minutes": minutes, "train.max_steps": NO_CAP, "train.eval_minutes": minutes / points,
              "train.eval_images": count, "train.eval_features": "none", "train.ckpt_minutes": minutes / 2}
    rows: List[dict] = []
    started = time.perf_counter()
    for preset in presets:
        for seed in seeds:
            run = work / "runs" / f"{preset}-s{seed}"
            cfg = resolve(preset, {**race_config(preset, resolution, width, batch_size, seed, overrides).flat(),
                                   **budget})
            train(cfg, data_dir, run, device=device, progress=progress, evaluation={"detector": det})
            rows.append(_final_row(run, preset, seed, minutes, cfg.train.batch_size, count, fid_count, prepared,
                                   det, model, ref, device, cpu_threads()))
            r = rows[-1]
            print(f"race: {preset} seed {seed}: {r['kimg']:.0f}k images in {r['train_min']:.1f} min, AFD "
                  f"{r['afd']:.3f}, KID x1000 {r['kid'] * 1000:.3g}, precision {r['precision']:.2f}, "
                  f"recall {r['recall']:.2f}")
    table = pd.DataFrame(rows, columns=COLUMNS)
    curve = pd.concat([_curve(work / "runs" / f"{r['preset']}-s{r['seed']}", r["preset"], r["seed"]) for r in rows])
    with atomic_path(work / "minutes.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(work / "curve.csv") as tmp:
        curve.to_csv(tmp, index=False)
    plot_minutes(curve, work / "minutes.png", minutes)
    print(f"\nrace: {minutes:g} min of training per run, {len(seeds)} seed(s), {resolution}px, width {width}, one run "
          f"at a time on {rows[0]['threads']} thread(s); {(time.perf_counter() - started) / 60:.1f} min in all")
    print(seed_summary(table).to_string(index=False))
    print(f"race: wrote {work / 'minutes.csv'}, {work / 'curve.csv'} and {work / 'minutes.png'}")
    return table


def _final_row(run: Path, preset: str, seed: int, minutes: float, batch: int, count: int, fid_count: int, prepared,
               det, model, ref, device: str, threads: int) -> dict:
    """The final generator's scores (cached in ``final.json`` while the scoring is the same)."""
    import pandas as pd

    log = pd.read_csv(run / "log.csv")
    steps, seconds = int(log.step.iloc[-1]), float(log.seconds.iloc[-1])
    how = {"count": count, "fid_count": fid_count, "fid_key": f"{model.weights.identity}|{ref.key}",
           "detector": det.describe(), "steps": steps}
    cached = read_json(run / "final.json") if (run / "final.json").is_file() else None
    if cached is not None and cached.get("how") == how:
        scores = {k: cached[k] for k in SCORES}
    else:
        scores = score_point(run / "generator.pt", run / "images", count, fid_count, True, prepared, det, model, ref,
                             device, desc=f"{preset} seed {seed}")
        scores = {k: scores[k] for k in SCORES}
        write_json(run / "final.json", {"how": how, **scores})
    return {"preset": preset, "seed": seed, "minutes": minutes, "train_min": seconds / 60, "steps": steps,
            "kimg": steps * batch / 1000, **scores, "fid_label": model.label, "threads": threads}


def _curve(run: Path, preset: str, seed: int) -> "pd.DataFrame":  # noqa: F821
    import pandas as pd

    m = pd.read_csv(run / "metrics.csv")
    return pd.DataFrame({"preset": preset, "seed": seed, "minutes": m.minutes, "kimg": m.kimg, "afd": m.afd})
