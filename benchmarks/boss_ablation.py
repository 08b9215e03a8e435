"""What each of boss-resnet's ingredients buys at the race's CPU scale: one race per variant (a script, not a test).

``boss-resnet`` is the SN-ResNet recipe, ``boss`` when this ablation ran (its figures in
docs/boss-and-race.md, whose race folders hold ``runs/boss``). Every variant is ``boss-resnet``
(``--preset``) with one change (a race ``--set``), trained from the same seed and data order for the
same budget and scored as the race scores (AFD on 1,000 images with its binomial se, proxy FID with
its half-sample ``+-``). ``seed2023`` and ``seed2024`` are the preset itself from other seeds: the
training noise that one seed per variant leaves in every row, far larger than
the ``+-`` of one draw of images. Each variant is a race folder
``OUT/NAME``, so finished variants are reused and a killed run resumes; the
summary (``OUT/ablation.csv``, ``OUT/ablation.png``, printed) covers every
variant folder found.

    .venv/bin/python benchmarks/boss_ablation.py --work work --detector ../shared/assets/lbpcascade_animeface.xml

About 35-45 min per variant on one CPU core, scoring included (boss trains at ~90 img/s there, with R1
~65); two processes with ``OMP_NUM_THREADS=1`` and disjoint ``--variants`` share 2 cores about evenly.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESET = "boss-resnet"  # the recipe ablated (--preset)

#: folder -> (the change, race overrides, seed or None for the race's default)
VARIANTS = {
    "default": ("boss as it is", {}, None),
    "seed2023": ("boss as it is, seed 2023", {}, 2023),
    "seed2024": ("boss as it is, seed 2024", {}, 2024),
    "nosn": ("no spectral norm", {"model.spectral_norm": "false"}, None),
    "noaug": ("no augmentation", {"train.augment": ""}, None),
    "augfull": ("colour + translation + cutout", {"train.augment": "color,translation,cutout"}, None),
    "bce": ("BCE loss instead of hinge", {"loss.name": "bce"}, None),
    "dcgan": ("DCGAN layout instead of ResNet", {"model.arch": "dcgan"}, None),
    "r1": ("+ R1 penalty, gamma 1", {"loss.r1_gamma": "1"}, None),
    "lrequal": ("critic lr 2e-4 (= generator's)", {"optim.lr_d": "2e-4"}, None),
    "noema": ("raw generator instead of EMA (default's training)", None, None),  # scored, not trained
}


def main() -> None:
    from kaggle_gan.experiments.race import DEFAULT_KIMG, DEFAULT_REF_COUNT

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="work", help="the make targets' WORK (holds data/ and cache/fid)")
    p.add_argument("--data", help="prepared data folder (default: WORK/data)")
    p.add_argument("--out", help="ablation folder, one race folder per variant (default: WORK/ablation)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (default: %(default)s)")
    p.add_argument("--kimg", type=float, default=DEFAULT_KIMG, help="budget per variant (default: the race's)")
    p.add_argument("--points", type=int, default=2, help="evaluation points (default: %(default)s)")
    p.add_argument("--ref-count", type=int, default=DEFAULT_REF_COUNT,
                   help="FID reference images (default: the race's)")
    p.add_argument("--inception-weights", help="as for race (default: the cached weights, else random:0)")
    p.add_argument("--detector", help="cascade XML for AFD (default: the package's default detector)")
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", default=PRESET, help="the recipe each variant changes (default: %(default)s)")
    p.add_argument("--summary-only", action="store_true", help="train nothing; summarise the finished variants")
    a = p.parse_args()

    work = Path(a.work)
    data = Path(a.data or work / "data")
    out = Path(a.out or work / "ablation")
    names = [v for v in a.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if not a.summary_only:
        from kaggle_gan.experiments.race import race

        for name in names:
            change, overrides, seed = VARIANTS[name]
            print(f"\n=== {name}: {change}", flush=True)
            if overrides is None:
                score_raw(out, data, work / "cache" / "fid", a.ref_count, a.inception_weights, a.detector, a.device,
                          a.preset)
                continue
            race(data, out / name, presets=[a.preset], kimg=a.kimg, points=a.points, ref_count=a.ref_count,
                 inception_weights=a.inception_weights, detector=a.detector, device=a.device,
                 overrides=overrides, fid_cache=work / "cache" / "fid", **({"seed": seed} if seed else {}))
    table = summarise(out, a.preset)
    print("\n" + table.to_string(index=False))


def score_raw(out: Path, data: Path, fid_cache: Path, ref_count: int, inception_weights, detector, device: str,
              preset: str) -> None:
    """``noema``: the raw generator of ``default``'s last checkpoint, drawn and scored as the race scores the EMA one.

    EMA changes no training step, so this is "boss without EMA" at no training cost. Writes
    ``OUT/noema/race.csv`` with ``default``'s last row and these scores.
    """
    import pandas as pd

    from kaggle_gan.core.io import atomic_path, read_json
    from kaggle_gan.core.runtime import resolve_device
    from kaggle_gan.data.prepared import load_prepared
    from kaggle_gan.experiments import race as race_mod
    from kaggle_gan.scoring import afd as afd_mod
    from kaggle_gan.training.checkpoint import load_latest, save_generator

    source = out / "default"
    state = load_latest(source / "runs" / preset / "checkpoints")
    if state is None or not (source / "race.csv").is_file():
        raise SystemExit(f"noema needs the finished default variant in {source}: run --variants default first")
    settings = read_json(source / "race.json")
    rows = pd.read_csv(source / "race.csv")
    last = rows[rows.preset == preset].iloc[[-1]]
    if state["step"] != int(last.steps.iloc[0]):
        raise SystemExit(f"{source}'s last checkpoint is at step {state['step']}, its last point at "
                         f"{int(last.steps.iloc[0])}: finish default first")
    dest = out / "noema"
    raw = save_generator(state["G"], state["config"], state["step"], dest / "generator-raw.pt")
    prepared = load_prepared(data)
    count, fid_count = int(last.n_images.iloc[0]), int(last.fid_small_images.iloc[0])  # as default was scored
    model = race_mod.fid_model(inception_weights, resolve_device(device))
    ref = race_mod.race_reference(prepared, model, fid_cache, ref_count, settings["resolution"])
    scores = race_mod.score_point(raw, dest / "images", count, fid_count, True, prepared,
                                  afd_mod.make_detector(detector), model, ref, device, desc="raw generator")
    last = last.assign(**scores, fid_label=model.label)
    with atomic_path(dest / "race.csv") as tmp:
        last.to_csv(tmp, index=False)


def summarise(out: Path, preset: str) -> "pd.DataFrame":  # noqa: F821
    """One row per finished variant folder under ``out``: AFD at each point, the final AFD and FID with +-."""
    import pandas as pd

    from kaggle_gan.core.io import atomic_path
    from kaggle_gan.experiments.race_tables import afd_se, plus_minus

    rows = []
    for name in VARIANTS:
        csv = out / name / "race.csv"
        if not csv.is_file():
            continue
        race = pd.read_csv(csv)
        race = race[race.preset == preset]
        last = race[race.point == race.point.max()].iloc[0]
        se = afd_se(last.afd, last.n_images)
        row = {"variant": name, "change": VARIANTS[name][0]}
        row |= {f"AFD {k:.3g}k": f"{v:.3f}" for k, v in zip(race.kimg, race.afd) if k != last.kimg}
        row |= {f"AFD {last.kimg:.3g}k": f"{last.afd:.3f} +- {se:.3f}",
                last.fid_label: plus_minus(last.fid, last.fid_sd),
                "g_steps": int(last.g_steps), "train min": f"{last.train_s / 60:.1f}", "_afd": last.afd, "_se": se}
        rows.append(row)
    if not rows:
        raise SystemExit(f"no finished variant under {out}")
    table = pd.DataFrame(rows).fillna("-")  # noema has no curve
    with atomic_path(out / "ablation.csv") as tmp:
        table.drop(columns=["_afd", "_se"]).to_csv(tmp, index=False)
    _plot(table, out / "ablation.png")
    print(f"wrote {out / 'ablation.csv'} and {out / 'ablation.png'}")
    return table.drop(columns=["_afd", "_se"])


def _plot(table, path: Path) -> None:
    """Final AFD per variant with +-2 se; boss's own seeds in green, their range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kaggle_gan.core.io import save_figure

    fig, ax = plt.subplots(figsize=(10, 0.45 * len(table) + 1.4))
    y = list(range(len(table)))
    seeds = [VARIANTS[v][1] == {} for v in table.variant]
    ax.barh(y, table._afd, xerr=2 * table._se, color=["tab:green" if s else "tab:blue" for s in seeds], capsize=3)
    if sum(seeds) > 1:
        own = table._afd[seeds]
        ax.axvspan(own.min(), own.max(), color="tab:green", alpha=0.15, label="boss as it is: range over seeds")
        ax.legend(loc="lower right")
    ax.set_yticks(y, [f"{v}: {c}" for v, c in zip(table.variant, table.change)])
    ax.invert_yaxis()
    ax.set(xlabel="AFD at the end of the budget (+-2 se)", xlim=(0, 1), title="boss, one ingredient changed at a time")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
