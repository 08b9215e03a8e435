"""Multi-object conditional generation: the i-CLEVR lab, graded by the lab's accuracy.

Each image holds 1 to 3 of 24 objects (8 colours x 3 shapes); the generator
gets the set as a multi-hot condition and must draw exactly those objects.
The pair is the class-conditional one (:mod:`kaggle_gan.nets.conditional`: a set
embedding into conditional batch norm, a projection critic on the set, an
auxiliary multi-label head read from the critic's own pass), trained by the
one :class:`~kaggle_gan.training.loop.Trainer` for ``train.minutes``.

Grading follows the lab: a multi-label classifier reads each generated
image; its top-k objects (k = objects asked for) are hits when asked for;
accuracy = hits / objects asked for. Two classifiers, both trained from
scratch on the real (rendered) images (:mod:`.iclevr_grading`), grade the
same images; the lower decides. The files graded: our validation sets
(``val_test.json``, ``val_new_test.json``, drawn like the lab's: recipes are
chosen on these), the lab's own ``test.json`` and ``new_test.json`` (shipped
with the package; a real lab folder's own), and any ``--tests`` file.

Outputs under ``out`` (``WORK/iclevr`` from the CLI)::

    scenes-N-S/             the rendered layout (N scenes, seed S), when no real folder is given
    data/                   the prepared images and (N, 24) multi-hot labels
    run/                    the training run (config, checkpoints, samples: a row per set)
    val_*.json              our validation sets
    FILE.png                the lab's picture for each graded file: one image per set, 8 a row
    accuracy.json           every grader's accuracy per file, by set size and binding; ceilings, timings
    cache/grader/           the graders, keyed by the data's sha256
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

from ..config import Config, Preset, describe_presets, resolve
from ..core.io import RunLock, UserError, read_json, sha256_file, write_json
from .iclevr_grading import (
    DRAWS,
    GRADER_EPOCHS,
    chance,
    draw_sets,
    format_table,
    grade_file,
    lowest,
    strictness,
    train_graders,
)
from .iclevr_scenes import LAB_TESTS as TESTS
from .iclevr_scenes import VALIDATION, validation_sets, write_layout

SCENES = 18_000  # the lab's training set holds 18,009 images

ICLEVR_PRESETS: Dict[str, Preset] = {p.name: p for p in (
    Preset("iclevr", None, "conditional DCGAN-style pair at 64x64 for CPU: set embedding into CBN, projection "
           "critic, auxiliary multi-label head", (
        ("model.resolution", 64, "the lab's image side"),
        ("model.z_dim", 64, "small networks and a short run; the layout is what the noise must carry"),
        ("model.g_width", 16, "a quarter of the sample's width: 2.8x the images/s of width 32 on 2 CPU cores, "
         "and more accurate in 20 minutes (README)"),
        ("model.d_width", 16, "same"),
        ("model.d_norm", "none", "spectral norm bounds the critic instead"),
        ("model.spectral_norm", True, "SN-GAN's critic, as the report's recipe"),
        ("model.classes", 24, "8 colours x 3 shapes"),
        ("loss.name", "hinge", "the projection-discriminator paper's loss; no double backward on CPU"),
        ("loss.aux_weight", 1.0, "the auxiliary multi-label head of the report's recipe"),
        ("optim.lr_g", 2e-4, "Adam (0, 0.9) at 2e-4, as SN-GAN"),
        ("optim.lr_d", 2e-4, "same"),
        ("optim.beta1", 0.0, "SN-GAN"),
        ("optim.beta2", 0.9, "SN-GAN"),
        ("train.batch_size", 32, "twice the updates of batch 64 at the same images/s: faster to 0.7 (README)"),
        ("train.flip", False, "the light comes from the left: a mirrored scene is lit from the right"),
        ("train.minutes", 20.0, "20 minutes of training, as many steps as the machine gives (a GPU: many more)"),
        ("train.max_steps", 200_000, "a cap the time budget reaches first on any machine we know"),
        ("train.keep_epochs", False, "last.pt is enough"),
        ("train.ema_decay", 0.995, "a short run: an average over the last ~200 steps, not 1000"),
        ("train.log_every", 200, "a log row every 200 steps"),
        ("train.sample_every", 1000, "a grid every 1000 steps"),
    )),
)}


def iclevr_config(overrides: Optional[Dict[str, str]] = None) -> Config:
    return resolve("iclevr", dict(overrides or {}), table=ICLEVR_PRESETS)


def layout(out: Path, data: Optional[str], scenes: int, seed: int, progress: bool) -> Path:
    """The lab's folder: ``data`` when given (a real i-CLEVR folder), else our scenes, rendered once."""
    if data:
        folder = Path(data).expanduser()
        missing = [f for f in ("objects.json", "train.json", *TESTS) if not (folder / f).is_file()]
        if missing:
            raise UserError(f"{folder} has no {', '.join(missing)}; ICLEVR_DATA must be the lab's folder "
                            "(objects.json, train.json, test.json, new_test.json, images/)")
        return folder
    folder = out / f"scenes-{scenes}-{seed}"
    if not (folder / "train.json").is_file():  # written last: an interrupted render draws only what is missing
        print(f"iclevr: rendering {scenes} scenes into {folder}")
        write_layout(folder, scenes, seed, progress=progress)
    return folder


# --- graders ---------------------------------------------------------------------------

def lab_evaluator(path: Union[str, Path]):
    """The lab's own evaluator: a torchvision ResNet-18 whose head is Linear(512, 24) + Sigmoid, its weights
    under ``model`` in the checkpoint (or the state dict itself). Reads (B, 3, 64, 64) in [-1, 1]."""
    import torch
    import torchvision
    from torch import nn

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"evaluator checkpoint not found: {path}; pass the lab's checkpoint.pth or drop --evaluator")
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Sequential(nn.Linear(512, 24), nn.Sigmoid())
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    except Exception as err:  # a pickle of something else, or other keys
        first = str(err).strip().splitlines()[0][:160]
        raise UserError(f"{path} is not the lab's evaluator (a ResNet-18 with a 24-way sigmoid head): {first}") from err
    return net.eval()


def iclevr(out: Union[str, Path], data: Optional[str] = None, overrides: Optional[Dict[str, str]] = None,
           scenes: int = SCENES, scene_seed: int = 0, evaluator: Optional[str] = None, device: str = "auto",
           cache: Optional[Path] = None, grader_epochs: int = GRADER_EPOCHS, progress: bool = True,
           tests: Sequence[Union[str, Path]] = ()) -> dict:
    """Render (once) or read the layout, prepare, train, and grade with both graders (and the lab's evaluator
    when given): our validation sets, the lab's ``test.json`` and ``new_test.json``, and any other condition
    files in ``tests``. Returns (and writes to ``accuracy.json``) the results."""
    from ..data.labels import multi_hot
    from ..data.pictures import save_grid
    from ..data.prepare import prepare
    from ..data.prepared import load_prepared
    from ..training.loop import Trainer

    out = Path(out)
    cfg = iclevr_config(overrides)
    folder = layout(out, data, scenes, scene_seed, progress)
    prepared = load_prepared(prepare(str(folder), out / "data", size=cfg.model.resolution, labels="iclevr").folder)
    if len(prepared.classes) != cfg.model.classes:
        raise UserError(f"{folder / 'objects.json'} lists {len(prepared.classes)} objects; "
                        f"pass --set model.classes={len(prepared.classes)}")
    sets = condition_files(out, folder, tests)
    index = {name: i for i, name in enumerate(prepared.classes)}
    try:
        conditions = {name: multi_hot(s, index) for name, s in sets.items()}
    except ValueError as err:
        raise UserError(f"{folder}: {err}") from err

    start = time.perf_counter()
    graders = train_graders(prepared, Path(cache) if cache else out / "cache" / "grader", grader_epochs, progress)
    if evaluator:
        graders["lab evaluator"] = (lab_evaluator(evaluator), None)
    grader_s = time.perf_counter() - start

    start = time.perf_counter()
    with RunLock(out / "run"):
        trainer = Trainer(cfg, prepared.folder, out / "run", device=device, progress=progress)
        trainer.run()
    train_s = time.perf_counter() - start

    G = trainer.gan.sampler().eval()
    models = {name: model for name, (model, _) in graders.items()}
    results: dict = {"steps": trainer.step, "train_s": round(train_s, 1), "grader_s": round(grader_s, 1),
                     "training_minutes": round(trainer.elapsed / 60, 2), "data": str(folder), "draws": DRAWS,
                     "graders": {name: {"ceiling": None if ceiling is None else round(ceiling, 4),
                                        "blobs": round(strictness(model, prepared), 4) if ceiling is not None else None}
                                 for name, (model, ceiling) in graders.items()},
                     "files": {}}
    if evaluator:
        results["evaluator_sha256"] = sha256_file(Path(evaluator).expanduser())
    for name, cond in conditions.items():
        graded = grade_file(G, models, sets[name], cond, cfg.model.z_dim, cfg.train.seed + 5, trainer.device)
        picture = out / (Path(name).stem + ".png")
        save_grid(draw_sets(G, __import__("torch").from_numpy(cond), cfg.model.z_dim, cfg.train.seed + 5,
                            trainer.device), picture, nrow=8, padding=2)  # the lab's picture: 8 sets a row
        results["files"][name] = {"graders": graded, "chance": round(chance(cond), 4), "sets": len(cond),
                                  "objects": int(cond.sum()), "grid": picture.name,
                                  "lowest": {k: lowest(graded, k) for k in ("accuracy", "mean_of_draws")}}
    results["config"] = cfg.to_dict()
    write_json(out / "accuracy.json", results)
    print(format_table(results))
    return results


def condition_files(out: Path, folder: Path, tests: Sequence[Union[str, Path]]) -> Dict[str, list]:
    """The condition files graded, in order: our validation sets (written to ``out``), the layout's
    ``test.json`` and ``new_test.json`` (the lab's own when rendered), then each of ``tests`` under its name."""
    files: Dict[str, list] = {}
    for name, (seed, sizes, binding) in VALIDATION.items():
        files[name] = validation_sets(seed, sizes, binding)
        write_json(out / name, files[name])
    for name in TESTS:
        files[name] = read_json(folder / name)
    for path in map(Path, tests):
        try:
            sets = read_json(path.expanduser())
        except (OSError, ValueError) as err:
            raise UserError(f"--tests {path}: cannot read it as JSON ({err})") from None
        if not isinstance(sets, list) or not sets or not all(isinstance(s, list) and s for s in sets):
            raise UserError(f"--tests {path}: must be a list of non-empty object-name lists, as the lab's test.json")
        if path.name in files:
            raise UserError(f"--tests {path}: a file named {path.name} is graded already; rename it")
        files[path.name] = sets
    return files


def describe() -> str:
    return describe_presets(ICLEVR_PRESETS)
