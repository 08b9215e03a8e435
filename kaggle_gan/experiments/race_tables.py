"""The race's tables and pictures: the final table, the curves, the median and spread over seeds."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from ..core.io import save_figure


def afd_se(rate: float, n: int) -> float:
    """AFD's binomial standard error over ``n`` images."""
    return math.sqrt(rate * (1 - rate) / n)



def plus_minus(value: float, sd: Optional[float]) -> str:
    """``0.0763 +- 0.015``, or the value alone when there is no spread (fewer than 6 images)."""
    return f"{value:.3g}" + (f" +- {sd:.2g}" if sd is not None and not math.isnan(sd) else "")



def final_table(table: "pd.DataFrame") -> "pd.DataFrame":  # noqa: F821
    """The last point of each preset, best AFD first: what ``make race`` prints and the README shows."""
    import numpy as np

    last = table[table.point == table.point.max()].copy()
    label = str(last.fid_label.iloc[0]) if len(last) else "FID"
    # each preset's best point by AFD, ties by KID: where a run with evaluation would have kept best.pt
    ranked = table.sort_values(["afd", "kid"], ascending=[False, True], kind="stable")
    best = ranked.drop_duplicates("preset").set_index("preset")
    out = last.assign(
        kimg=last.kimg.map(lambda v: f"{v:.1f}"),
        train_min=(last.train_s / 60).map(lambda v: f"{v:.1f}"),
        afd=[f"{p:.3f} +- {afd_se(p, n):.3f}" for p, n in zip(last.afd, last.n_images)],
        fid=[plus_minus(v, sd) for v, sd in zip(last.fid, last.fid_sd)],
        kid=[plus_minus(v * 1000, sd * 1000) for v, sd in zip(last.kid, last.kid_sd)],
        pr=[f"{p:.2f} / {r:.2f}" for p, r in zip(last.precision, last.recall)],
        best=[f"{best.kimg[p]:.1f}k: AFD {best.afd[p]:.3f}" for p in last.preset],
        same_as=last.same_as.fillna("").replace("", "-"),
    )[["preset", "same_as", "kimg", "steps", "g_steps", "train_min", "afd", "fid", "kid", "pr", "best"]]
    order = last.afd.astype(float).rank(ascending=False, method="first").values
    out = out.iloc[np.argsort(order)]
    small = int(last.fid_small_images.iloc[0]) if len(last) else 0
    return out.rename(columns={"fid": f"{label} (n={int(last.n_images.iloc[0])})" if len(last) else "fid",
                               "afd": "AFD", "train_min": "train min", "same_as": "same as",
                               "kid": f"KID x1000 (n={small})", "pr": f"precision / recall (n={small})",
                               "best": "best point"})



def plot_race(table: "pd.DataFrame", out_png: Path) -> Path:  # noqa: F821
    """AFD (left) and small-sample FID (right) against thousands of images shown, one line per preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    label = str(table.fid_label.iloc[0]) if len(table) else "FID"
    n_small = int(table.fid_small_images.iloc[0]) if len(table) else 0
    for preset, rows in table.groupby("preset", sort=False):
        twin = rows.same_as.fillna("").iloc[0]
        style = {"linestyle": "--"} if twin else {}
        name = f"{preset} (= {twin})" if twin else preset
        axes[0].plot(rows.kimg, rows.afd, marker="o", label=name, **style)
        axes[1].plot(rows.kimg, rows.fid_small, marker="o", label=name, **style)
    axes[0].set(xlabel="thousand images shown to the critic", ylabel="AFD (higher is better)",
                title="anime-face detection rate")
    axes[1].set(xlabel="thousand images shown to the critic", ylabel=f"{label}, {n_small} images (lower is better)",
                title=label + (": comparable only within this race" if "proxy" in label else ""))
    axes[1].set_yscale("log")
    axes[0].legend()
    return save_figure(fig, out_png)



def seed_summary(table: "pd.DataFrame", by: str = "preset") -> "pd.DataFrame":  # noqa: F821
    """Per preset: the median over seeds and the spread (min-max) of each final score; best median AFD first."""
    import pandas as pd

    def cell(values, scale: float = 1.0, digits: str = ".3f") -> str:
        v = values.dropna() * scale
        return "-" if v.empty else f"{v.median():{digits}} [{v.min():{digits}}-{v.max():{digits}}]"

    out = []
    for preset, rows in table.groupby(by, sort=False):
        out.append({by: preset, "seeds": len(rows), "kimg": cell(rows.kimg, digits=".0f"), "AFD": cell(rows.afd),
                    "KID x1000": cell(rows.kid, 1000, ".3g"), "precision": cell(rows.precision, digits=".2f"),
                    "recall": cell(rows.recall, digits=".2f"), "FID": cell(rows.fid, digits=".3g"),
                    "_median": rows.afd.median()})
    frame = pd.DataFrame(out).sort_values("_median", ascending=False)
    return frame.drop(columns="_median").rename(columns={"AFD": "AFD median [min-max]"})



def plot_minutes(curve: "pd.DataFrame", out_png: Path, minutes: float) -> Path:  # noqa: F821
    """AFD against minutes of training: each seed thin, each preset's median over seeds bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (preset, rows) in enumerate(curve.groupby("preset", sort=False)):
        colour = f"C{i}"
        for _seed, one in rows.groupby("seed"):
            ax.plot(one.minutes, one.afd, color=colour, alpha=0.3, linewidth=1)
        point = rows.assign(mark=(rows.minutes / minutes * 20).round())  # marks align across seeds
        med = point.groupby("mark").agg(minutes=("minutes", "median"), afd=("afd", "median"))
        ax.plot(med.minutes, med.afd, color=colour, marker="o", linewidth=2, label=f"{preset} (median)")
    ax.axhline(0.6, color="grey", linestyle=":", label="boss line (AFD 0.6)")
    ax.set(xlabel="minutes of training", ylabel="AFD (higher is better)", title="the race at equal minutes",
           ylim=(0, 1))
    ax.legend(loc="lower right")
    return save_figure(fig, out_png)

