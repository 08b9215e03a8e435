"""The leaderboard: one row per scored folder in ``WORK/leaderboard.csv``, and the table ranked best first.

``score`` (:mod:`kaggle_gan.scoring.score`) adds or replaces a row after every report;
``make leaderboard`` prints :func:`leaderboard`. Concurrent ``score`` processes
take turns through a lock file, and the table is rewritten atomically.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Union

from ..core.io import atomic_path

LEADERBOARD = "leaderboard.csv"
LEADERBOARD_COLUMNS = [
    "scored_at", "run", "preset", "images", "n_images", "level", "afd", "fid_label", "fid",
    "fid_floor", "fid_sample", "fid_key", "detector", "scores",
    "kid", "kid_sd", "mifid", "precision", "recall", "density", "coverage", "afd_real",
]
METRIC_COLUMNS = ("kid", "kid_sd", "mifid", "precision", "recall", "density", "coverage")


@contextlib.contextmanager
def _locked(work: Path) -> Iterator[None]:
    """Serialise leaderboard updates between concurrent ``score`` processes (waits, never fails)."""
    import fcntl

    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".leaderboard.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_table(work: Path) -> "pd.DataFrame":  # noqa: F821
    import pandas as pd

    path = Path(work) / LEADERBOARD
    if not path.is_file():
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    table = pd.read_csv(path)
    for col in LEADERBOARD_COLUMNS:
        if col not in table:
            table[col] = None
    return table[LEADERBOARD_COLUMNS]


def record(work: Path, report: dict) -> None:
    """Add the row of a ``score`` report; a row of the same folder, FID flavour and detector is replaced."""
    import pandas as pd

    fid = report["fid"]
    row = {
        "scored_at": report["scored_at"],
        "run": report["run"] or "",
        "preset": report["preset"] or "",
        "images": report["images_dir"],
        "n_images": report["n_images"],
        "level": report["level"],
        "afd": round(report["afd"]["rate"], 4),
        "fid_label": fid["label"] if fid["status"] == "ok" else "skipped",
        "fid": fid.get("value"),
        "fid_floor": fid.get("anchors", {}).get("real_floor"),
        "fid_sample": fid.get("anchors", {}).get("sample_code"),
        "fid_key": fid.get("key", ""),
        "detector": f"{report['afd']['detector'].get('name')}:{str(report['afd']['detector'].get('sha256', ''))[:8]}",
        "scores": report["scores"],
        **{k: report.get(k) for k in METRIC_COLUMNS},
        "afd_real": (report.get("real_ceiling") or {}).get("afd"),
    }
    with _locked(work):
        table = read_table(work)
        # a re-score replaces the folder's row of the same FID flavour and detector instead of adding one
        same = ((table.images.astype(str) == row["images"])
                & (table.fid_key.astype(object).fillna("").astype(str) == row["fid_key"])
                & (table.detector.astype(str) == row["detector"]))
        table = table[~same]
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True) if len(table) else pd.DataFrame([row])
        with atomic_path(work / LEADERBOARD) as tmp:
            table[LEADERBOARD_COLUMNS].to_csv(tmp, index=False)


def leaderboard(work: Union[str, Path]) -> "pd.DataFrame":  # noqa: F821
    """Scored folders, best first: highest level passed, then real FID before proxies, lower FID, higher AFD.

    Only the latest score of a folder with the same FID flavour and detector is kept.
    Empty (with the columns) when nothing has been scored.
    """
    from .homework import LEVELS  # the homework's levels, easiest first (score imports this module: import here)

    table = read_table(Path(work))
    if table.empty:
        return table
    table = table.drop_duplicates(subset=["images", "fid_key", "detector"], keep="last").copy()
    rank = {name: i + 1 for i, (name, _, _) in enumerate(LEVELS)}
    table["_level"] = table.level.map(rank).fillna(0)
    table["_proxy"] = table.fid_label.astype(str).str.startswith("proxy") | table.fid.isna()
    table = table.sort_values(["_level", "_proxy", "fid", "afd"], ascending=[False, True, True, False], na_position="last")
    return table.drop(columns=["_level", "_proxy"]).reset_index(drop=True)


def significant(x) -> str:
    """Four significant digits, so a proxy FID of 0.0259 is not printed as 0.03; "-" for a missing value."""
    return "-" if x is None or x != x else f"{float(x):.4g}"


def format_leaderboard(table: "pd.DataFrame") -> str:  # noqa: F821
    """The printed leaderboard (``make leaderboard``): the columns a user compares, best first."""
    if table.empty:
        return "no scores yet: run `make score` (kaggle-gan score) first"
    shown = table.assign(
        run=table.run.fillna("").astype(str).where(table.run.notna() & (table.run.astype(str) != ""), table.images),
        afd=table.afd.map(lambda x: f"{x:.3f}"),
        fid=table.fid.map(significant),
        fid_floor=table.fid_floor.map(significant),
        kid=table.kid.map(lambda x: significant(x * 1000 if x == x and x is not None else None)),
        precision=table.precision.map(significant),
        recall=table.recall.map(significant),
    ).rename(columns={"kid": "kid_x1000"})
    cols = ["run", "preset", "level", "afd", "fid_label", "fid", "fid_floor", "kid_x1000", "precision", "recall",
            "n_images", "scored_at"]
    return shown[cols].astype(object).fillna("").to_string(index=False)
