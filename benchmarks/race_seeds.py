"""How far a race's ranking moves with the training seed: several races, one table (a script, not a test).

A race trains every preset from one seed. This script reads any number of
finished race folders (``kaggle-gan race --seed S --out DIR``, whole or with a
subset of ``--presets``), checks that they share the budget and scale and have
no ``--set`` overrides, and tabulates each preset's final AFD and FID per seed,
with the mean and the spread over seeds; then, among the presets raced at every
seed, how often each was best and the order at each seed. Two presets whose
AFDs overlap across seeds are not ranked by one race, however small the
binomial ``+-`` of its 1,000 images is.

    .venv/bin/python benchmarks/race_seeds.py work/race work/race-s2023 work/race-s2024

Reads CSVs only: seconds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCALE = ("kimg", "resolution", "width", "batch_size")  # what must match for AFDs to compare


def collect(folders) -> "pd.DataFrame":  # noqa: F821
    """The last point of every raced preset in ``folders``, with its seed; twins (``same_as``) left out."""
    import pandas as pd

    from kaggle_gan.core.io import read_json

    rows, scale = [], None
    for folder in map(Path, folders):
        if not ((folder / "race.csv").is_file() and (folder / "race.json").is_file()):
            raise SystemExit(f"{folder} lacks race.csv or race.json: is it a finished race folder?")
        settings = read_json(folder / "race.json")
        if settings.get("overrides"):
            raise SystemExit(f"{folder} was raced with --set {settings['overrides']}: not a preset as it is")
        mine = {k: settings[k] for k in SCALE}
        if scale is None:
            scale = mine
        elif mine != scale:
            raise SystemExit(f"{folder} raced at {mine}, the first folder at {scale}: not comparable")
        race = pd.read_csv(folder / "race.csv")
        race = race[race.same_as.isna() & (race.kimg == race.kimg.max())]
        for r in race.itertuples():
            rows.append({"seed": settings["seed"], "preset": r.preset, "afd": r.afd, "fid": r.fid,
                         "fid_label": r.fid_label, "folder": str(folder)})
    table = pd.DataFrame(rows)
    dup = table[table.duplicated(["seed", "preset"], keep=False)]
    if len(dup):
        first = dup.iloc[0]
        raise SystemExit(f"{first.preset} at seed {first.seed} appears in more than one folder: "
                         f"{', '.join(dup[(dup.seed == first.seed) & (dup.preset == first.preset)].folder)}")
    return table


def summarise(table) -> str:
    """Per metric (AFD, then FID) and preset: the value at each seed, mean and sd over seeds; then which preset
    is best (highest AFD, lowest FID) seed by seed, among the presets raced at every seed."""
    seeds = sorted(table.seed.unique())
    common = [p for p, rows in table.groupby("preset", sort=False) if set(rows.seed) == set(seeds)]
    lines = []
    for metric, name, best, fmt, sd_fmt in [("afd", "AFD", "highest", "8.3f", "9.3f"),
                                            ("fid", str(table.fid_label.iloc[0]), "lowest", "8.4g", "9.2g")]:
        lines.append(f"{'preset':>9} " + " ".join(f"{'s' + str(s):>8}" for s in seeds)
                     + f" {'mean':>8} {'sd(seeds)':>9}   {name}")
        for preset, rows in table.groupby("preset", sort=False):
            by_seed = dict(zip(rows.seed, rows[metric]))
            values = list(by_seed.values())
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells = " ".join(f"{by_seed[s]:{fmt}}" if s in by_seed else f"{'-':>8}" for s in seeds)
            lines.append(f"{preset:>9} {cells} {statistics.mean(values):{fmt}} {sd:{sd_fmt}}")
        if len(common) > 1:
            wins, orders = {p: 0 for p in common}, []
            for s in seeds:
                at = table[(table.seed == s) & table.preset.isin(common)].set_index("preset")[metric]
                at = at.sort_values(ascending=best == "lowest")
                wins[at.index[0]] += 1
                orders.append(f"s{s} {' > '.join(at.index)}")
            lines.append(f"{best} {name}: " + ", ".join(f"{p} on {n} of {len(seeds)} seeds" for p, n in wins.items()))
            lines.append("best first: " + "; ".join(orders))
        lines.append("")
    return "\n".join(lines).rstrip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="finished race folders (kaggle-gan race --seed S --out DIR)")
    a = p.parse_args()
    print(summarise(collect(a.folders)))


if __name__ == "__main__":
    main()
