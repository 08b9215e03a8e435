"""The score report: FID and AFD of a folder of images, the homework baselines they pass, a leaderboard.

``score`` checks every input before it computes anything, so bad input costs
seconds and leaves nothing behind; outputs are written atomically:

- ``scores.json`` (and ``afd.csv``, one row per image) beside the run, or under
  ``WORK/scores/`` for any other folder,
- its row in ``WORK/leaderboard.csv`` (:mod:`kaggle_gan.scoring.leaderboard`), replacing an earlier score of the folder.

The judge's FID scale is not pytorch-fid's (see HW6.md), so the local FID is
placed between two anchors computed the same way: the real-data floor and,
once a sample-code run has been scored, that run's FID.
"""
from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from ..core.io import UserError, atomic_path, read_json, write_json
from ..core.version import __version__
from .homework import FID_NOT_CHECKED, LEVELS, SUBMISSION_COUNT, afd_level, verdict_cell, verdicts
from .leaderboard import METRIC_COLUMNS, read_table, record, significant
from .provenance import how_drawn

DEFAULT_REF_COUNT = 10_000
MEMORISATION_REFS = ("reference", "all")  # MiFID's training side: the reference subsample, or every image
# A run whose name or recorded preset is one of these is the sample-code anchor
# ("baseline" is the sample-code preset, and a run is named after its preset by default).
SAMPLE_CODE_NAMES = ("baseline", "sample")


# --- reading the folder -----------------------------------------------------------

def load_image_folder(folder: Path, size: int, resample: str = "bilinear") -> Tuple[List[str], np.ndarray, dict]:
    """Every file of ``folder`` -> names, (N, size, size, 3) uint8 images and a note on resizing.

    All files must be images of one size (anything else is a :class:`UserError`
    listing the culprits); images of another size than ``size`` are brought to
    it the way the training data was prepared.
    """
    from ..data.imagefiles import decode_files, iter_image_files

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"images folder not found: {folder}")
    files = iter_image_files(folder)
    if not files:
        raise UserError(f"{folder} holds no files; generate images first (make generate)")
    names, images, dims = decode_files(files, size, resample, where=str(folder))
    sizes = Counter(dims)
    if len(sizes) > 1:
        example = {d: n for n, d in zip(names[::-1], dims[::-1])}
        listing = ", ".join(f"{w}x{h}: {c} files (e.g. {example[(w, h)]})" for (w, h), c in sizes.most_common())
        raise UserError(f"mixed image sizes in {folder} ({listing}); every image must have the same size")
    (w, h), = sizes.keys()
    note = {"original_size": [w, h], "resized": (w, h) != (size, size)}
    return names, images, note


# --- verdicts and anchors --------------------------------------------------------


def fid_position(fid: Optional[float], floor: Optional[float], sample: Optional[float]) -> Optional[float]:
    """0 at the real-data floor, 1 at the sample-code FID; None when an end is missing."""
    if fid is None or floor is None or sample is None or not sample > floor:
        return None
    return (fid - floor) / (sample - floor)


def _run_preset(run_dir: Path) -> Optional[str]:
    """The preset recorded beside a run, when the run folder says."""
    for name in ("config.json", "run.json", "options.json"):
        path = run_dir / name
        if path.is_file():
            try:
                cfg = read_json(path)
            except Exception:
                continue
            if isinstance(cfg, dict):
                preset = cfg.get("preset") or (cfg.get("config") or {}).get("preset")
                if preset:
                    return str(preset)
    return None


def _sample_anchor(work: Path, fid_key: str) -> Tuple[Optional[float], Optional[str]]:
    """Latest sample-code FID computed the same way (same weights, reference and policy)."""
    table = read_table(work)
    if table.empty:
        return None, None
    same = table[(table.fid_key == fid_key) & table.fid.notna()]
    is_sample = same.run.astype(str).isin(SAMPLE_CODE_NAMES) | same.preset.astype(str).isin(SAMPLE_CODE_NAMES)
    rows = same[is_sample]
    if rows.empty:
        return None, None
    last = rows.iloc[-1]
    return float(last.fid), str(last.run)


# --- the report ------------------------------------------------------------------

def _run_dir_of(work: Path, images_dir: Path) -> Optional[Path]:
    """``WORK/runs/RUN`` when ``images_dir`` is that run's ``images`` folder, else None."""
    resolved = images_dir.resolve()
    if resolved.name == "images" and resolved.parent.parent == (work / "runs").resolve():
        return resolved.parent
    return None


def _default_out(work: Path, images_dir: Path) -> Path:
    """Beside a run's images folder, or ``WORK/scores/NAME-HASH/`` for any other folder."""
    run_dir = _run_dir_of(work, images_dir)
    if run_dir is not None:
        return run_dir / "scores.json"
    digest = hashlib.sha1(str(images_dir.resolve()).encode()).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", images_dir.resolve().name) or "images"
    return work / "scores" / f"{stem}-{digest}" / "scores.json"


def report_table(report: dict) -> "pd.DataFrame":  # noqa: F821
    """One row: image count, FID and its anchors, AFD, and per homework level whether the AFD clears its bar."""
    import pandas as pd

    fid = report["fid"]
    label = fid.get("label", "FID")
    kid = report.get("kid")
    row = {
        "images": report["n_images"],
        label: significant(fid.get("value")) if fid["status"] == "ok" else "skipped",
        "real floor": significant(fid.get("anchors", {}).get("real_floor")),
        "sample code": significant(fid.get("anchors", {}).get("sample_code")),
        "KID x1000": "-" if kid is None else f"{significant(kid * 1000)} +- {significant(report['kid_sd'] * 1000)}",
        "MiFID": significant(report.get("mifid")),
        "precision": significant(report.get("precision")),
        "recall": significant(report.get("recall")),
        "AFD": f"{report['afd']['rate']:.3f}",
    }
    for name, _, _ in LEVELS:
        row[name] = verdict_cell(report["verdicts"][name])
    return pd.DataFrame([row])


def score(
    images_dir: Union[str, Path],
    data_dir: Union[str, Path],
    work: Union[str, Path],
    inception_weights: Union[str, Path, None] = None,
    detector=None,
    device: str = "auto",
    ref_count: Optional[int] = DEFAULT_REF_COUNT,
    run: Optional[str] = None,
    out: Union[str, Path, None] = None,
    *,
    inception_sha256: Optional[str] = None,
    quiet: bool = False,
    features: Optional[str] = None,
    feature_weights: Union[str, Path, None] = None,
    memorisation_ref: str = "reference",
) -> dict:
    """Score a folder of images against the prepared training data; write and print the report.

    Args:
        images_dir: folder of images (generated or real), e.g. ``WORK/runs/RUN/images``;
            every file must be an image, all of one size; a submission has 1000.
        data_dir: prepared training data (``kaggle-gan prepare`` output, ``WORK/data``).
        work: work folder; holds the reference-statistics cache (``cache/fid``),
            ``leaderboard.csv`` and, for folders outside a run, ``scores/``.
        inception_weights: None (torch hub cache, then the kaggle_gan cache), a path to
            ``pt_inception-2015-12-05-6726825d.pth``, or ``random:SEED`` for a labelled proxy FID.
            With None and no file found, the FID is skipped with one line saying how to supply
            the weights; a path that does not exist is an error.
        detector: None (the lbpcascade_animeface cascade, fetched once and cached), a cascade
            XML path, ``NAME:ARG`` of a registered detector, or a :class:`kaggle_gan.scoring.afd.Detector`.
        device: ``auto``, ``cpu`` or ``cuda`` for the Inception network.
        ref_count: training images in the reference statistics (a seeded subsample when the
            data has more; 1000 others are held out for the real-data floor); None: 10,000.
        run: name the leaderboard row carries; when ``images_dir`` is ``WORK/runs/RUN/images``
            the folder decides the name and the report goes to ``WORK/runs/RUN/scores.json``;
            other folders report to ``WORK/scores/NAME-HASH/scores.json``.
        out: where to write ``scores.json`` instead (``afd.csv`` goes beside it).
        inception_sha256: expected sha256 (or prefix) of the weights file, for files other than
            the published one.
        quiet: do not print the table.
        features: another feature network for every distance instead of Inception: ``dinov2``
            (FD_DINOv2, which Stein et al. 2023 found to track human judgement better), ``clip`` or a timm
            model name, with ``feature_weights`` (None: the user's caches; a path; ``random:SEED``).
            The reference statistics are cached per network.
        memorisation_ref: what MiFID's memorisation distance is measured against: ``reference`` (the
            reference images, the default: no extra features) or ``all`` (every prepared training image, as
            Kaggle computes it; their features are cached in chunks like the reference's).

    Returns:
        The report written to ``scores.json``.
    """
    from ..core.runtime import resolve_device
    from ..core.weights import WeightsMissing
    from ..data.prepared import load_prepared
    from . import afd as afd_mod
    from . import fid as fid_mod
    from . import inception
    from .metrics import DC_K, all_metrics

    images_dir, data_dir, work = Path(images_dir), Path(data_dir), Path(work)
    ref_count = DEFAULT_REF_COUNT if ref_count is None else int(ref_count)
    if memorisation_ref not in MEMORISATION_REFS:
        raise UserError(f"--memorisation-ref must be {' or '.join(MEMORISATION_REFS)}, not {memorisation_ref!r}")
    if ref_count < 2:
        raise UserError(f"--ref-count must be at least 2, got {ref_count}")
    run_dir = _run_dir_of(work, images_dir)
    if run_dir is not None:  # the folder says which run it is, whatever --run defaulted to
        run = run_dir.name
    # Everything a user can get wrong is checked here, before minutes of computing.
    prepared = load_prepared(data_dir)
    size = int(prepared.images.shape[1])
    names, images, size_note = load_image_folder(images_dir, size, prepared.meta.get("resample", "bilinear"))
    det = afd_mod.make_detector(detector)
    notes: List[str] = []
    dev = resolve_device(device)
    try:
        if features and features.lower() != "inception":  # a network the user named: missing weights are an error
            from .backbones import metric_features

            model = metric_features(features, feature_weights, dev)
        else:
            model = inception.load_inception(inception_weights, dev, sha256=inception_sha256)
    except WeightsMissing as err:
        if inception_weights is not None or features:  # what the user typed is a mistake to fix, not a reason to skip
            raise
        model = None
        notes.append(f"FID skipped: {err}")
    if model is not None and len(images) < 2:
        model = None
        notes.append("FID skipped: it needs at least 2 images")
    out = Path(out) if out else _default_out(work, images_dir)
    csv_path = out.parent / "afd.csv" if out.name == "scores.json" else out.with_name(out.stem + ".afd.csv")
    if len(images) != SUBMISSION_COUNT:
        notes.append(f"{len(images)} images: a homework submission is exactly {SUBMISSION_COUNT}; the judge takes "
                     "no other count")
    if size_note["resized"]:
        w, h = size_note["original_size"]
        notes.append(f"images are {w}x{h}: resized to {size}x{size} like the training data before scoring")

    afd = afd_mod.detection_rate(images, det, names, progress=not quiet)
    ceiling: dict = {"afd": None}  # the detector's rate on held-out real images (from 4 prepared images up)
    if len(prepared.images) >= 4:
        holdout = fid_mod.selection(len(prepared.images), ref_count)[0]
        ceiling["afd"] = afd_mod.real_rate(prepared.images, prepared.meta["images_sha256"], holdout, det,
                                           work / "cache" / "fid", progress=not quiet)
    more: dict = dict.fromkeys(METRIC_COLUMNS + ("memorisation_distance",))
    memorisation = None
    fid_report: dict = {"status": "skipped", "label": "FID", "resize_policy": inception.RESIZE_POLICY}
    if model is not None:
        ref = fid_mod.reference_stats(prepared.images, prepared.meta["images_sha256"], model, work / "cache" / "fid", ref_count)
        feats = fid_mod.activations(images, model, desc=f"scoring ({len(images)} images)")
        value = fid_mod.frechet_distance_to_features(feats, ref.mu, ref.sigma)
        if len(feats) > DC_K and ref.real is not None:  # one feature pass, every number
            train = (fid_mod.training_features(prepared.images, prepared.meta["images_sha256"], model,
                                               work / "cache" / "fid") if memorisation_ref == "all" else None)
            more = all_metrics(feats, ref.real, value, memorisation=train)
            memorisation = {"against": memorisation_ref, "images": ref.count if train is None else len(train)}
        else:
            notes.append(f"KID, MiFID, precision/recall and density/coverage skipped: they need more than {DC_K} "
                         "images, generated and in the reference")
        ceiling.update(ref.ceiling or {})
        fid_key = f"{model.weights.identity}|{ref.key}"
        sample, sample_run = _sample_anchor(work, fid_key)
        fid_report = {
            "status": "ok",
            "value": value,
            "sd": fid_mod.half_sample_sd(feats, ref.mu, ref.sigma),
            "label": model.label,
            "proxy": model.weights.is_random,
            "key": fid_key,
            "resize_policy": getattr(model, "resize_policy", inception.RESIZE_POLICY),
            "weights": model.weights.describe(),
            "device": str(dev),
            "reference": {
                "count": ref.count, "holdout": ref.holdout, "requested": ref_count, "key": ref.key,
                "cache": str(ref.path), "cache_hit": ref.cache_hit, "data_images": len(prepared.images),
            },
            "anchors": {"real_floor": ref.floor, "real_floor_sd": ref.floor_sd, "sample_code": sample,
                        "sample_run": sample_run},
            "position": fid_position(value, ref.floor, sample),
        }
        if model.weights.is_random:
            notes.append(
                f"{model.label}: random weights, comparable only with proxies of the same network and seed"
            )
        if sample is None:
            notes.append(
                f"no sample-code anchor yet: train and score the run {SAMPLE_CODE_NAMES[0]!r} (preset baseline) "
                "with the same weights"
            )
    v = verdicts(afd.rate, ceiling["afd"])
    limited = [name for name in v if v[name]["detector_limited"]]
    if limited:  # implies a measured ceiling
        notes.append(f"the detector finds a face in only {ceiling['afd']:.1%} of held-out real training images, "
                     f"below the AFD bar of {', '.join(limited)}: there the detector, not the generator, is the "
                     f"limit; read AFD against that rate (ratio {afd.rate / max(ceiling['afd'], 1e-9):.2f})")
    report = {
        "version": __version__,
        "scored_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "run": run,
        "preset": _run_preset(work / "runs" / run) if run else None,
        "images_dir": str(images_dir.resolve()),
        "data_dir": str(data_dir.resolve()),
        "n_images": len(images),
        "image_size": size_note["original_size"],
        "afd": {"rate": afd.rate, "detected": int(afd.table.detected.sum()), "detector": afd.detector, "csv": str(csv_path)},
        "fid": fid_report,
        **more,
        "features": fid_report["label"],
        "real_ceiling": ceiling,
        "verdicts": v,
        "afd_level": afd_level(v),
        "count_ok": len(images) == SUBMISSION_COUNT,
        "memorisation_ref": memorisation,
        "drawn": how_drawn(images_dir),
        "notes": notes,
        "scores": str(out),
    }
    with atomic_path(csv_path) as tmp:
        afd.table.to_csv(tmp, index=False)
    write_json(out, report)
    record(work, report)
    if not quiet:
        print(render(report))
    return report


def render(report: dict) -> str:
    """The printed form: the table, where the FID stands, and the notes."""
    lines = [report_table(report).to_string(index=False), f"levels: {FID_NOT_CHECKED}"]
    fid = report["fid"]
    if fid["status"] == "ok":
        pos = fid.get("position")
        where = f", {pos:.2f} of the way from the floor to the sample code" if pos is not None else ""
        sd = f" +- {fid['sd']:.2f} (sd over halves of the images)" if fid.get("sd") is not None else ""
        floor_sd = fid["anchors"].get("real_floor_sd")
        floor = f"{fid['anchors']['real_floor']:.2f}" + (f" +- {floor_sd:.2f}" if floor_sd is not None else "")
        lines.append(
            f"{fid['label']} {fid['value']:.2f}{sd} (real-data floor {floor}{where}); "
            f"judge FID limits are on another scale ({fid['resize_policy']}, {fid['reference']['count']} reference images)"
        )
    memo = report.get("memorisation_ref")
    if memo and report.get("mifid") is not None:
        against = (f"all {memo['images']} training images, as Kaggle" if memo["against"] == "all" else
                   f"the {memo['images']} reference images (Kaggle uses every training image: --memorisation-ref all)")
        lines.append(f"MiFID {report['mifid']:.4g}: memorisation distance {report['memorisation_distance']:.4f} "
                     f"against {against}")
    real = report["real_ceiling"]["afd"]
    ceiling = "" if real is None else f"; held-out real training images: {real:.3f}" + (
        f", ratio {report['afd']['rate'] / real:.2f}" if real else "")
    lines.append(f"AFD: {report['afd']['detected']}/{report['n_images']} images with a face "
                 f"({report['afd']['detector']['name']}){ceiling}")
    lines += [f"note: {n}" for n in report["notes"]]
    lines.append(f"report: {report['scores']}")
    return "\n".join(lines)
