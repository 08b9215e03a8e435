"""The leaderboard: one row per scored folder in ``WORK/leaderboard.csv``, and the table ranked best first.

``score`` (:mod:`kaggle_gan.scoring.score`) adds or replaces a row after every report;
``make leaderboard`` prints :func:`leaderboard`. Concurrent ``score`` processes
take turns through a lock file, and the table is rewritten atomically.

Every row says how its images were made (checkpoint and step, truncation,
pool and selector, seeds; :mod:`kaggle_gan.scoring.provenance`) and what
measured them (feature network and its weights' digest, reference size,
MiFID's memorisation set). FIDs and KIDs of different feature networks or
references are on different scales: rows are ranked only within a group of
the same ``fid_key`` and groups are printed apart. Curated rows are marked:
``*`` a pool ranked by the detector (it raises the AFD by design), ``+`` by
the run's own critic.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Union

from ..core.io import atomic_path
from .homework import LEVELS
from .provenance import FIELDS as DRAWN_FIELDS
from .provenance import curated

LEADERBOARD = "leaderboard.csv"
LEADERBOARD_COLUMNS = [
    "scored_at", "run", "preset", "images", "n_images", "afd_level", "afd", "fid_label", "fid",
    "fid_floor", "fid_sample", "fid_key", "detector", "scores",
    "kid", "kid_sd", "mifid", "precision", "recall", "density", "coverage", "afd_real",
    *DRAWN_FIELDS, "features_weights", "ref_count", "memorisation_ref",
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
    """The stored rows; a table written before a column existed gets it empty (``afd_level`` from its old
    ``level``, which also required 1000 images)."""
    import pandas as pd

    path = Path(work) / LEADERBOARD
    if not path.is_file():
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    table = pd.read_csv(path)
    if "afd_level" not in table and "level" in table:
        table["afd_level"] = table["level"]
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
        "afd_level": report["afd_level"],
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
        **(report.get("drawn") or dict.fromkeys(DRAWN_FIELDS)),
        "features_weights": _weights(fid),
        "ref_count": (fid.get("reference") or {}).get("count"),
        "memorisation_ref": (report.get("memorisation_ref") or {}).get("against"),
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


def _weights(fid: dict) -> str:
    """The feature network's weights in a few characters: ``random:SEED`` or the file's sha256 prefix."""
    w = fid.get("weights") or {}
    return "" if not w else (w.get("source", "") if w.get("random") else str(w.get("sha256") or "")[:8])


def leaderboard(work: Union[str, Path]) -> "pd.DataFrame":  # noqa: F821
    """Scored folders in groups of one feature network and reference (``fid_key``; real weights before
    proxies, folders without an FID last), best first within a group: highest AFD level, then lower FID,
    then higher AFD. Only the latest score of a folder with the same ``fid_key`` and detector is kept.
    Empty (with the columns) when nothing has been scored."""
    table = read_table(Path(work))
    if table.empty:
        return table.assign(group=[])
    table = table.drop_duplicates(subset=["images", "fid_key", "detector"], keep="last").copy()
    rank = {name: i + 1 for i, (name, _, _) in enumerate(LEVELS)}
    table["_level"] = table.afd_level.map(rank).fillna(0)
    table["group"] = table.fid_key.astype(object).fillna("").astype(str)
    measured = table.fid.notna() & (table.group != "")
    proxy = table.fid_label.astype(str).str.startswith("proxy")
    table["_group_rank"] = (~measured) * 2 + (measured & proxy)
    table = table.sort_values(["_group_rank", "group", "_level", "fid", "afd"],
                              ascending=[True, True, False, True, False], na_position="last")
    return table.drop(columns=["_level", "_group_rank"]).reset_index(drop=True)


def significant(x) -> str:
    """Four significant digits, so a proxy FID of 0.0259 is not printed as 0.03; "-" for a missing value."""
    return "-" if x is None or x != x else f"{float(x):.4g}"


def _drawn(row) -> str:
    """How a row's images were made, in one cell: ``best.pt@1800 psi 0.7 pool 4000 by detector``."""
    if not isinstance(row.checkpoint, str) or not row.checkpoint:
        return "-"
    text = row.checkpoint + (f"@{int(row.step)}" if row.step == row.step and row.step is not None else "")
    if row.truncation == row.truncation and row.truncation is not None and float(row.truncation) != 1.0:
        text += f" psi {float(row.truncation):g}"
    if isinstance(row.select, str) and row.select:
        text += f" pool {int(row.pool)} by {row.select}" if row.pool == row.pool and row.pool else f" by {row.select}"
    return text


def _group_title(rows) -> str:
    first = rows.iloc[0]
    if not first.group or first.fid != first.fid:
        return "no FID measured (ranked by AFD level and AFD)"
    weights = first.features_weights if isinstance(first.features_weights, str) and first.features_weights else "?"
    ref = f", reference {int(first.ref_count)} images" if first.ref_count == first.ref_count and first.ref_count else ""
    return f"{first.fid_label} (weights {weights}){ref}: ranked within this group only"


def format_leaderboard(table: "pd.DataFrame") -> str:  # noqa: F821
    """The printed leaderboard (``make leaderboard``): a block per feature network and reference, best first,
    curated rows marked."""
    if table.empty:
        return "no scores yet: run `make score` (kaggle-gan score) first"
    named = table.run.notna() & (table.run.astype(str) != "")
    shown = table.assign(
        run=[curated(s if isinstance(s, str) else "") + r for s, r in
             zip(table["select"], table.run.astype(str).where(named, table.images.astype(str)))],
        drawn=[_drawn(r) for r in table.itertuples()],
        afd=table.afd.map(lambda x: f"{x:.3f}"),
        fid=table.fid.map(significant),
        fid_floor=table.fid_floor.map(significant),
        kid=table.kid.map(lambda x: significant(x * 1000 if x == x and x is not None else None)),
        precision=table.precision.map(significant),
        recall=table.recall.map(significant),
    ).rename(columns={"kid": "kid_x1000", "afd_level": "AFD level"})
    cols = ["run", "preset", "drawn", "AFD level", "afd", "fid", "fid_floor", "kid_x1000", "precision", "recall",
            "n_images", "scored_at"]
    blocks = []
    for _, rows in shown.groupby("group", sort=False):
        body = rows[cols].astype(object).fillna("").to_string(index=False)
        blocks.append(_group_title(table.loc[rows.index]) + "\n" + body)
    legend = ("* curated by the face detector: a pool ranked by it raises the AFD by design; "
              "+ curated by the run's own critic. AFD level: the AFD bars only (FID bars are not checked here)")
    return "\n\n".join(blocks) + "\n" + legend
