"""The race: every preset on the same data for the same number of images shown to the critic.

Each preset is trained with :func:`kaggle_gan.training.loop.train` (the one loop) at a
reduced resolution and width, in segments that resume one another; after each
segment the EMA generator draws images the way ``kaggle-gan generate`` does
(upsampled to 64x64 JPEGs) and they are scored with the project's AFD and FID
code. Same seed, hence the same data order, for every preset.

Outputs under ``WORK`` (``WORK/race`` from the CLI)::

    runs/PRESET/        the training runs; generator-STEP.pt is the EMA generator at each point,
                        point-STEP.json its scores
    race.json           the budget and scale: a second race in the folder reuses finished points
    race.csv            one row per preset and evaluation point
    race.png            AFD and FID against thousands of images shown, one line per preset

Budgets are counted in images shown to the critic (critic steps x batch), so a
preset with 5 critic steps per generator step gets a fifth of the generator
steps: that is its cost, and the race charges it.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from ..config import RACE, Config, resolve
from ..core.io import UserError, atomic_path, read_json, write_json
from .race_tables import final_table, plot_race, plus_minus

PRESETS = ("baseline", "medium", "wgan", "strong", "boss")
# the default scale lives in config.RACE, where the command line reads it without importing this module
DEFAULT_KIMG, DEFAULT_RESOLUTION, DEFAULT_WIDTH, DEFAULT_POINTS = RACE.kimg, RACE.resolution, RACE.width, RACE.points
DEFAULT_COUNT, DEFAULT_FID_COUNT, DEFAULT_REF_COUNT = RACE.count, RACE.fid_count, RACE.ref_count
SCORES = ("afd", "fid_small", "fid", "fid_sd", "kid", "kid_sd", "precision", "recall")  # score_point's, per point
COLUMNS = ["preset", "same_as", "point", "kimg", "steps", "g_steps", "train_s", "afd", "fid_small", "fid", "fid_sd",
           "kid", "kid_sd", "precision", "recall", "n_images", "fid_small_images", "fid_label"]


@dataclass(frozen=True)
class Entry:
    """A preset as raced: its configuration at race scale, with the budget left to the segments."""

    preset: str
    cfg: Config


def race_config(preset: str, resolution: int, width: int, batch_size: int, seed: int,
                overrides: Optional[Dict[str, str]] = None) -> Config:
    """``preset`` at race scale, then ``overrides`` (ablations); ``train.max_steps`` is set per segment."""
    return resolve(preset, {
        "model.resolution": resolution, "model.g_width": width, "model.d_width": width,
        "train.batch_size": batch_size, "train.seed": seed,
        "train.keep_epochs": False, "train.ckpt_minutes": 1e6, "train.log_every": 25,
        "train.eval_every": 0.0,  # the race scores its own points
        **(overrides or {}),
    })


def _recipe(cfg: Config) -> dict:
    """Everything that changes a run once the length is fixed (epochs do not, at a fixed budget)."""
    flat = cfg.flat()
    flat.pop("train.epochs")
    return flat


def fid_model(inception_weights: Optional[str], device):
    """The Inception network for FID: the given weights, else the cached real ones, else ``random:0`` (a proxy)."""
    from ..scoring import inception

    return inception.load_inception_or_proxy(inception_weights, device, "race")


def race(
    data_dir: Union[str, Path],
    work: Union[str, Path],
    presets: Sequence[str] = PRESETS,
    kimg: float = DEFAULT_KIMG,
    points: int = DEFAULT_POINTS,
    resolution: int = DEFAULT_RESOLUTION,
    width: int = DEFAULT_WIDTH,
    batch_size: int = 64,
    seed: int = 2022,
    count: int = DEFAULT_COUNT,
    fid_count: int = DEFAULT_FID_COUNT,
    ref_count: int = DEFAULT_REF_COUNT,
    inception_weights: Optional[str] = None,
    detector=None,
    device: str = "auto",
    overrides: Optional[Dict[str, str]] = None,
    fid_cache: Optional[Path] = None,
    progress: bool = True,
) -> "pd.DataFrame":  # noqa: F821
    """Train, generate and score every preset at ``points`` even fractions of ``kimg`` thousand images.

    At every point: AFD on ``count`` images and FID on the first ``fid_count``
    of them (``fid_small``, comparable along the curve); at the last point also
    the FID of all ``count`` (``fid``) and its half-sample standard deviation
    (``fid_sd``, :func:`kaggle_gan.scoring.fid.half_sample_sd`). Presets whose recipe
    is the same at a fixed budget (medium is baseline trained longer) are
    trained once and reported with ``same_as``. ``overrides`` apply to every preset (for
    ablations: ``{"train.augment": ""}``). The FID reference statistics are
    cached in ``fid_cache`` (default ``work/cache/fid``). Writes ``race.csv``
    and ``race.png`` in ``work``, prints the final table and returns the rows.
    """
    import pandas as pd

    from ..core.runtime import resolve_device
    from ..data.prepared import load_prepared
    from ..scoring import afd as afd_mod
    from ..scoring import fid as fid_mod
    from ..training.loop import train

    data_dir, work = Path(data_dir), Path(work)
    if kimg <= 0 or points < 1 or count < 2 or not 2 <= fid_count <= count:
        raise UserError("race needs kimg > 0, points >= 1, count >= 2 and 2 <= fid-count <= count")
    prepared = load_prepared(data_dir)
    entries = [Entry(p, race_config(p, resolution, width, batch_size, seed, overrides)) for p in presets]
    total_steps = max(1, round(kimg * 1000 / batch_size))
    marks = sorted({max(1, round(total_steps * (i + 1) / points)) for i in range(points)})
    det = afd_mod.make_detector(detector)
    check_settings(work, {"kimg": kimg, "points": points, "resolution": resolution, "width": width,
                          "batch_size": batch_size, "seed": seed, "overrides": dict(overrides or {})})
    dev = resolve_device(device)
    model = fid_model(inception_weights, dev)
    label = model.label
    print(f"race: {len(presets)} presets x {total_steps} steps of {batch_size} "
          f"({total_steps * batch_size / 1000:.1f}k images shown to the critic), {resolution}px, width {width}, "
          f"scored at {', '.join(str(m) for m in marks)} steps; {label}")
    ref = race_reference(prepared, model, Path(fid_cache) if fid_cache else work / "cache" / "fid", ref_count,
                         resolution)

    rows: List[dict] = []
    raced: Dict[str, str] = {}  # recipe -> the preset that ran it
    started = time.perf_counter()
    for e in entries:
        key = repr(sorted(_recipe(e.cfg).items()))
        if key in raced:
            twin = raced[key]
            print(f"race: {e.preset} has the same recipe as {twin} at a fixed budget (they differ only in "
                  f"train.epochs): its rows are {twin}'s")
            rows += [{**r, "preset": e.preset, "same_as": twin} for r in rows if r["preset"] == twin]
            continue
        raced[key] = e.preset
        run = work / "runs" / e.preset
        for point, steps in enumerate(marks, 1):
            # the whole budget is the run's plan (a preset's schedules anneal over it); this segment stops at steps
            cfg = resolve(e.preset, {**e.cfg.flat(), "train.max_steps": total_steps})
            t0 = time.perf_counter()
            snapshot = run / f"generator-{steps:07d}.pt"  # the EMA generator at this point, kept for a re-run
            if not snapshot.is_file():
                train(cfg, data_dir, run, device=device, progress=progress, until=steps)
                with atomic_path(snapshot, suffix=".pt") as tmp:
                    shutil.copyfile(run / "generator.pt", tmp)
            scored = run / f"point-{steps:07d}.json"  # this point's scores, reused while the scoring is the same
            how = {"count": count, "fid_count": fid_count, "fid_key": f"{model.weights.identity}|{ref.key}",
                   "detector": det.describe(), "last": steps == marks[-1], "fid_sd_rounds": fid_mod.SD_ROUNDS}
            cached = read_json(scored) if scored.is_file() else None
            if cached is not None and cached.get("how") == json.loads(json.dumps(how)):
                scores = {k: cached[k] for k in SCORES}
            else:
                scores = score_point(snapshot, run / "images", count, fid_count, how["last"], prepared, det, model,
                                     ref, device, desc=f"{e.preset} @ {steps} steps")
                write_json(scored, {"how": how, **scores})
            rate, small, full, full_sd = (scores[k] for k in SCORES[:4])
            seconds = _train_seconds(run, steps)
            rows.append({
                "preset": e.preset, "same_as": "", "point": point, "kimg": steps * batch_size / 1000, "steps": steps,
                "g_steps": steps // cfg.loss.n_critic, "train_s": seconds, **scores,
                "n_images": count, "fid_small_images": fid_count, "fid_label": label,
            })
            fid_text = f", FID {plus_minus(full, full_sd)}" if full is not None else ""
            print(f"race: {e.preset} {steps * batch_size / 1000:.1f}k images, {seconds:.0f} s of training: "
                  f"AFD {rate:.3f}, {label} on {fid_count} {small:.3g}{fid_text}, KID x1000 "
                  f"{scores['kid'] * 1000:.3g}, precision {scores['precision']:.3f}, recall {scores['recall']:.3f} "
                  f"(point took {time.perf_counter() - t0:.0f} s)")
    table = pd.DataFrame(rows, columns=COLUMNS)
    csv_path, png_path = work / "race.csv", work / "race.png"
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    plot_race(table, png_path)
    final = final_table(table)
    print(f"\nrace: {total_steps * batch_size / 1000:.1f}k images shown per preset, {resolution}px, width {width}; "
          f"{(time.perf_counter() - started) / 60:.1f} min after the reference statistics")
    print(final.to_string(index=False))
    floor = plus_minus(ref.floor, ref.floor_sd)
    print(f"for scale: {ref.holdout} held-out real images score {label} {floor} against the same reference")
    print("+-: AFD's binomial standard error; the FID's spread over halves of the generated images (reference "
          "fixed). Gaps under about twice the +- do not rank two presets; the reference's own sample adds more")
    if model.weights.is_random:
        print(f"note: {label} uses randomly initialised Inception weights: a proxy, comparable only within one "
              "race (same weights, same reference statistics), never with published FIDs")
    print(f"race: wrote {csv_path} and {png_path}")
    return table


def draw_images(snapshot: Path, out: Path, count: int, seed: int, prepared, detector, device: str):
    """One point's images and their AFD: ``count`` images drawn from ``snapshot`` the way ``kaggle-gan generate``
    does (64x64 JPEGs in ``out``), read back like ``score`` reads a folder, at the prepared data's size."""
    from ..sampling.generate import generate
    from ..scoring import afd as afd_mod
    from ..scoring.score import load_image_folder

    folder = generate(snapshot, out, n=count, seed=seed, size=64, device=device)
    names, images, _ = load_image_folder(folder, int(prepared.images.shape[1]), prepared.meta.get("resample", "bilinear"))
    return images, afd_mod.detection_rate(images, detector, names, progress=False).rate


def score_point(snapshot: Path, out: Path, count: int, fid_count: int, last: bool, prepared, detector, model, ref,
                device: str, desc: str) -> dict:
    """One point's scores (the keys of ``SCORES``): AFD on ``count`` images drawn by :func:`draw_images` (seed 0);
    FID, KID and precision/recall of the first ``fid_count`` against ``ref`` (comparable along the curve); at
    the ``last`` point also the FID of all and its :func:`kaggle_gan.scoring.fid.half_sample_sd` (None elsewhere)."""
    from ..scoring import fid as fid_mod
    from ..scoring import metrics

    images, rate = draw_images(snapshot, out, count, 0, prepared, detector, device)
    feats = fid_mod.activations(images if last else images[:fid_count], model, desc=desc)
    measured = ref.real is not None and fid_count > metrics.DC_K  # the k-NN metrics need more than k images
    kid, kid_sd = metrics.kid(feats[:fid_count], ref.real) if measured else (math.nan, math.nan)
    pr = (metrics.precision_recall_density_coverage(feats[:fid_count], ref.real) if measured
          else {"precision": math.nan, "recall": math.nan})
    return {
        "afd": rate,
        "fid_small": fid_mod.frechet_distance_to_features(feats[:fid_count], ref.mu, ref.sigma),
        "fid": fid_mod.frechet_distance_to_features(feats, ref.mu, ref.sigma) if last else None,
        "fid_sd": fid_mod.half_sample_sd(feats, ref.mu, ref.sigma) if last else None,
        "kid": kid, "kid_sd": kid_sd, "precision": pr["precision"], "recall": pr["recall"],
    }


def race_reference(prepared, model, cache: Path, ref_count: int, resolution: int):
    """The race's FID reference statistics (cached): ``ref_count`` training images seen through
    :func:`reference_view`, as the ``resolution``-px models see them."""
    from ..scoring import fid as fid_mod

    return fid_mod.reference_stats(prepared.images, prepared.meta["images_sha256"], model, cache, ref_count,
                                   view=reference_view(resolution, int(prepared.images.shape[1])))


def reference_view(resolution: int, size: int):
    """The race's FID reference view: None, or (name, function) when the models train below the data's size.

    The models draw ``resolution``-px images that generation scales up to ``size``: the reference is the
    training images seen the same way (down, then up), so FID compares what the models learned, not the blur
    they all share.
    """
    if resolution >= size:
        return None
    from ..data.pictures import resize_images

    return f"{resolution}px-and-back", lambda x: resize_images(resize_images(x, resolution), size)


def _train_seconds(run: Path, steps: int) -> float:
    """Training time the run's log recorded up to ``steps`` (excludes generating and scoring)."""
    import pandas as pd

    log = pd.read_csv(run / "log.csv")
    log = log[log.step <= steps]
    return float(log.seconds.iloc[-1]) if len(log) else 0.0


def check_settings(work: Path, settings: dict, file: str = "race.json", what: str = "a race") -> None:
    """A race folder holds one race: refuse to mix points of another budget or scale into it (the settings
    are written to ``file`` by the first race in the folder)."""
    path = work / file
    if path.is_file():
        old = read_json(path)
        if old != settings:
            diff = ", ".join(f"{k}={old.get(k)!r} (now {v!r})" for k, v in settings.items() if old.get(k) != v)
            raise UserError(f"{work} holds {what} with {diff}; pass another --out (its runs are kept as they are)")
    else:
        write_json(path, settings)


def race_over_seeds(data_dir: Union[str, Path], work: Union[str, Path], seeds: Sequence[int], **kw) -> "pd.DataFrame":  # noqa: F821
    """:func:`race` at every seed, one after another, each in ``work/seed-S``; prints each preset's median and
    spread (min-max) over the seeds at the last point and writes them to ``work/seeds.csv``."""
    import pandas as pd

    from .race_tables import seed_summary

    tables = []
    for seed in seeds:
        table = race(data_dir, Path(work) / f"seed-{seed}", seed=seed, **kw)
        last = table[(table.point == table.point.max()) & (table.same_as.fillna("") == "")]
        tables.append(last.assign(seed=seed))
    final = pd.concat(tables, ignore_index=True)
    with atomic_path(Path(work) / "seeds.csv") as tmp:
        final.to_csv(tmp, index=False)
    print(f"\nrace: {len(seeds)} seeds at {final.kimg.iloc[0]:.1f}k images each")
    print(seed_summary(final).to_string(index=False))
    return final
