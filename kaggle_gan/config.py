"""Configuration: frozen dataclasses, presets as differences, typed ``key=value`` overrides.

Each preset names its parent and lists only what it changes, each change
with its reason, so ``kaggle-gan presets`` reads as the recipe's history.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .core.io import UserError


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "dcgan"  # dcgan | resnet | mlp (2-D points, kaggle_gan.experiments.toy)
    resolution: int = 64  # 32, 64, 96 or 128; prepared data of another size is resized once on load
    z_dim: int = 100
    g_width: int = 64  # the sample's feature_dim
    d_width: int = 64
    d_norm: str = "batch"  # batch | instance | layer | none
    spectral_norm: bool = False  # spectral normalisation on every critic layer
    classes: int = 0  # class-conditional pair for labelled data (kaggle_gan.experiments.cgan); 0 = unconditional
    cond_input: str = "embed"  # how the label joins z at G's input: embed | onehot | none (CBN conditions G anyway)


@dataclass(frozen=True)
class LossConfig:
    name: str = "bce"  # bce | wgan | wgan-gp | hinge | rpgan (relativistic pairing, R3GAN)
    n_critic: int = 1  # critic steps per generator step
    clip: float = 0.01  # wgan only
    gp_lambda: float = 10.0  # wgan-gp only
    r1_gamma: float = 0.0  # R1 penalty gamma/2 * E||grad D(real)||^2 added to any critic loss; 0 = off
    aux_weight: float = 0.0  # conditional runs: weight of an auxiliary classifier's cross-entropy (AC-GAN); 0 = off
    gamma: float = 0.0  # rpgan: R1 on real and R2 on fake, gamma/2 * E||grad D||^2 each (R3GAN)
    gamma_final: float = 0.0  # gamma at the end of the run, reached by a cosine over its planned length; 0 = constant


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"  # adam | rmsprop
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    # schedules over the run's planned length (train.epochs, train.max_steps or train.minutes), cosine:
    lr_final: float = 1.0  # both learning rates at the end, as a share of their start; 1 = constant
    beta2_final: float = 0.0  # Adam's beta2 at the end; 0 = constant (R3GAN: 0.9 -> 0.99)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    max_steps: int = 0  # critic steps (batches); 0 = epochs * batches per epoch
    # a time budget: stop cleanly after this many minutes of training (evaluation not counted), the schedules
    # fitted to the steps it allows at the measured speed; 0 = none. With epochs/max_steps, the first reached ends
    minutes: float = 0.0
    batch_size: int = 64
    seed: int = 2022
    ema_decay: float = 0.999  # EMA generator used for sampling; 0 disables averaging
    # > 0: the EMA's half-life in thousand images instead of ema_decay, ramped up over the first tenth of the run
    ema_halflife_kimg: float = 0.0
    amp: str = "auto"  # auto (bf16 or fp16 on CUDA, off on CPU) | off | bf16 | fp16
    compile: bool = False  # torch.compile, falling back to eager when unavailable
    fast: bool = True  # channels_last, foreach optimisers, no per-step host sync
    log_every: int = 50  # steps between reading losses back from the device
    sample_every: int = 0  # steps between sample grids; 0 = once per epoch
    ckpt_minutes: float = 10.0  # wall-clock minutes between checkpoints (plus one per epoch)
    keep_epochs: bool = True  # keep a checkpoint per epoch besides last.pt
    augment: str = ""  # differentiable augmentation of real and fake before the critic, e.g. "color,translation,cutout"
    flip: bool = True  # random horizontal flips of real images (off for digits and text)
    # real and fake in one critic pass when the critic has no batch norm (DiffAugment's BigGAN code): boss-resnet 1.36x
    # and strong 1.13x the images/s on an H200, the same within noise on 2 CPU cores (README, Speed)
    joint_critic: bool = True
    # quality along the run (kaggle_gan.training.evaluate): every eval_every thousand images shown (0 = off), eval_images
    # drawn from the EMA generator, scored (AFD; KID, FID, precision/recall with eval_features), best.pt kept by
    # `select`; eval_features auto = Inception on a GPU, none on a CPU (about 2 min per 1000 images on 2 cores)
    eval_every: float = 0.0
    eval_minutes: float = 0.0  # > 0: evaluate every this many minutes of training instead (a race at equal minutes)
    eval_images: int = 1000
    eval_features: str = "auto"  # auto | inception | none
    eval_ref: int = 10_000  # reference images for KID/FID: score's default, so the two share one cache
    select: str = "afd"  # afd | kid | fid: what chooses best.pt (kaggle_gan.training.selection)
    tensorboard: bool = True  # TensorBoard events beside log.csv when tensorboard is installed


@dataclass(frozen=True)
class RaceScale:
    """The default scale of the race (:mod:`kaggle_gan.experiments.race`), kept here so the command line
    shows it without importing the experiment.

    CPU scale: 32x32 at width 32 with batch 64. On 2 quiet cores DCGAN trains at ~1,400 img/s, WGAN-GP
    ~1,000, boss (DCGAN layout, spectral norm, hinge) ~700 and boss-resnet ~160. 128k is where boss-resnet's
    faces appear (a sweep on a GPU at this scale: AFD 0.02 at 64k, 0.4 at 96k, 0.86 at 192k).
    """

    kimg: float = 128.0
    resolution: int = 32
    width: int = 32
    points: int = 3
    # images per point for AFD (+-1.6% at a rate of 0.5), and the last point's FID with its +-
    # (fid.half_sample_sd): a submission's count; the README measures how far the proxy FID moves between draws
    count: int = 1000
    fid_count: int = 250  # of them, scored by FID at every point (the curve)
    ref_count: int = 1000  # reference images, plus 1000 held out for the floor: ~2.5 min of Inception on 2 cores


RACE = RaceScale()


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Dict[str, Any]]) -> "Config":
        return apply_overrides(cls(), {f"{g}.{k}": v for g, kv in d.items() for k, v in kv.items()})

    def flat(self) -> Dict[str, Any]:
        return {f"{g}.{k}": v for g, kv in self.to_dict().items() for k, v in kv.items()}


CHOICES = {
    "model.arch": ("dcgan", "resnet", "mlp"),
    "model.resolution": (32, 64, 96, 128),
    "model.d_norm": ("batch", "instance", "layer", "none"),
    "model.cond_input": ("embed", "onehot", "none"),
    "loss.name": ("bce", "wgan", "wgan-gp", "hinge", "rpgan"),
    "optim.name": ("adam", "rmsprop"),
    "train.eval_features": ("auto", "inception", "none"),
    "train.select": ("afd", "kid", "fid"),
    "train.amp": ("auto", "off", "bf16", "fp16"),
}
POSITIVE = {"model.z_dim", "model.g_width", "model.d_width", "loss.n_critic", "optim.lr_g", "optim.lr_d",
            "train.epochs", "train.batch_size", "train.log_every"}
NON_NEGATIVE = {"model.classes", "loss.aux_weight", "loss.clip", "loss.gp_lambda", "loss.r1_gamma", "train.max_steps",
                "train.sample_every", "train.ckpt_minutes", "train.eval_every", "optim.beta1", "optim.beta2",
                "train.ema_decay", "train.seed", "loss.gamma", "loss.gamma_final", "optim.lr_final",
                "optim.beta2_final", "train.minutes", "train.ema_halflife_kimg", "train.eval_minutes"}


def _field_type(group: str, key: str) -> type:
    cls = type(getattr(Config(), group))
    return {f.name: type(getattr(cls(), f.name)) for f in fields(cls)}[key]


def _parse(value: Any, typ: type, key: str) -> Any:
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if typ is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if typ is int:
                return int(text)
            if typ is float:
                return float(text)
            return text
        except ValueError:
            pass
    raise UserError(f"{key} must be {typ.__name__}, got {value!r}")


def apply_overrides(cfg: Config, overrides: Dict[str, Any]) -> Config:
    """Return ``cfg`` with ``{"group.key": value}`` applied; values may be strings (typed here)."""
    groups: Dict[str, Dict[str, Any]] = {}
    for dotted, raw in overrides.items():
        group, _, key = dotted.partition(".")
        sub = getattr(cfg, group, None) if group in {f.name for f in fields(Config)} else None
        if sub is None or key not in {f.name for f in fields(type(sub))}:
            raise UserError(f"unknown config key {dotted!r}; see `kaggle-gan config` for the valid keys")
        groups.setdefault(group, {})[key] = _parse(raw, _field_type(group, key), dotted)
    cfg = replace(cfg, **{g: replace(getattr(cfg, g), **kv) for g, kv in groups.items()})
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Reject values no run could use, before any work starts."""
    flat = cfg.flat()
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise UserError(f"{key}={flat[key]!r} is not one of {', '.join(map(str, allowed))}")
    for key in POSITIVE:
        if not flat[key] > 0:
            raise UserError(f"{key} must be positive, got {flat[key]!r}")
    for key in NON_NEGATIVE:
        if flat[key] < 0:
            raise UserError(f"{key} must not be negative, got {flat[key]!r}")
    if flat["train.ema_decay"] >= 1 or flat["optim.beta1"] >= 1 or flat["optim.beta2"] >= 1 or flat["optim.beta2_final"] >= 1:
        raise UserError("train.ema_decay, optim.beta1, optim.beta2 and optim.beta2_final must be below 1")
    if cfg.loss.name == "rpgan" and cfg.model.d_norm == "batch":
        raise UserError("loss.name=rpgan penalises each image's gradient: set model.d_norm=none (or instance/layer)")
    if cfg.loss.name == "wgan-gp" and cfg.model.d_norm == "batch":
        raise UserError("loss.name=wgan-gp needs a critic without batch norm: set model.d_norm=instance (or layer/none)")
    if cfg.loss.r1_gamma > 0 and cfg.model.d_norm == "batch":
        raise UserError("loss.r1_gamma needs a critic without batch norm: set model.d_norm=none (or instance/layer)")
    if cfg.model.arch == "mlp" and cfg.model.d_norm != "none":
        raise UserError("model.arch=mlp has no normalisation layers in its critic: set model.d_norm=none")
    if cfg.model.classes and cfg.model.arch != "dcgan":
        raise UserError(f"model.classes needs model.arch=dcgan (the conditional pair), not {cfg.model.arch}; "
                        "or set model.classes=0")
    if cfg.model.classes == 1:
        raise UserError("model.classes=1 is one class: set model.classes=0 for an unconditional run")
    if cfg.loss.aux_weight > 0 and not cfg.model.classes:
        raise UserError("loss.aux_weight needs labels: set model.classes (a conditional run) or loss.aux_weight=0")
    if (cfg.train.eval_every or cfg.train.eval_minutes) and cfg.train.eval_images < 8:  # precision/recall: 3rd neighbours among them, KID: halves
        raise UserError(f"train.eval_images={cfg.train.eval_images}: an evaluation needs at least 8 images")
    if cfg.train.augment and cfg.model.arch == "mlp":
        raise UserError("train.augment transforms images; set train.augment= for model.arch=mlp")
    if cfg.train.augment:
        try:
            parse_policy(cfg.train.augment)
        except ValueError as err:
            raise UserError(f"train.augment: {err}") from None


# DiffAugment's transforms by name (kaggle_gan.training.augment implements each); a policy lists some of them
AUGMENTATIONS = ("color", "translation", "cutout")


def parse_policy(policy: str) -> List[str]:
    """``"color,translation"`` -> ``["color", "translation"]``; ``""`` -> ``[]``. Unknown names raise ValueError."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in names if p not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)}")
    return names


def parse_set(items: Iterable[str]) -> Dict[str, str]:
    """``["a.b=1", "c.d=x"]`` -> dict; each item must hold one ``=``."""
    out: Dict[str, str] = {}
    for item in items:
        for token in item.split():
            if "=" not in token:
                raise UserError(f"override {token!r} must look like key=value, e.g. train.epochs=5")
            key, value = token.split("=", 1)
            out[key.strip()] = value
    return out


# --- presets -------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    name: str
    parent: Optional[str]
    summary: str
    changes: Tuple[Tuple[str, Any, str], ...] = ()  # (key, value, reason)


PRESETS: Dict[str, Preset] = {p.name: p for p in (
    Preset("baseline", None, "the course's sample code: DCGAN, BCE, 1 epoch, batch 64, Adam 1e-4 (0.5, 0.999), seed 2022", (
        ("train.eval_every", 200.0, "not in the sample: AFD (on a GPU also KID, FID, precision/recall) of 1000 EMA "
                                    "images every 200k images shown and at the end; best.pt keeps the best point"),
    )),
    Preset("medium", "baseline", "DCGAN trained longer (the slides' medium hint)", (
        ("train.epochs", 20, "public runs: DCGAN at 10 epochs already reaches AFD ~0.6; 20 leaves margin, ~1 h on a T4"),
    )),
    Preset("wgan", "medium", "WGAN with weight clipping, as in the sample's comments", (
        ("loss.name", "wgan", "Wasserstein critic: no sigmoid, loss E[D(fake)] - E[D(real)]"),
        ("loss.n_critic", 5, "the WGAN paper trains the critic 5 times per generator step"),
        ("optim.name", "rmsprop", "momentum destabilises a clipped critic (WGAN paper)"),
        ("optim.lr_g", 5e-5, "the WGAN paper's learning rate; 1e-5 with clip 0.005 fails to train (HW6.md)"),
        ("optim.lr_d", 5e-5, "same"),
    )),
    Preset("strong", "wgan", "WGAN-GP: gradient penalty instead of clipping", (
        ("loss.name", "wgan-gp", "penalty on ||grad D|| at per-image mixes of real and fake; no clipping"),
        ("model.d_norm", "instance", "batch norm couples images and breaks the per-image penalty"),
        ("optim.name", "adam", "the WGAN-GP paper's optimiser"),
        ("loss.n_critic", 2, "the paper's 5 starves G at a fixed budget: at the race's 128k images 5 gave AFD 0.12, "
                             "2 (with 2e-4) 0.60, above baseline (README)"),
        ("optim.lr_g", 2e-4, "the paper's 1e-4 doubled, with the critic steps cut to 2 (race sweep)"),
        ("optim.lr_d", 2e-4, "same"),
        ("optim.beta1", 0.0, "WGAN-GP paper: no first-moment momentum"),
        ("optim.beta2", 0.9, "WGAN-GP paper"),
        ("train.epochs", 30, "2 critic steps per generator step: 30 epochs = 17k generator steps"),
    )),
    Preset("boss-resnet", "strong", "SN-ResNet + hinge + DiffAugment: boss until the race at equal minutes, a late starter on "
           "a CPU (median AFD 0.254 after 10 min there; docs/boss-and-race.md)", (
        ("model.arch", "resnet", "residual blocks (SN-GAN, BigGAN): better images per parameter than DCGAN"),
        ("model.d_norm", "none", "spectral norm bounds the critic instead; no per-image coupling"),
        ("model.spectral_norm", True, "a ~1-Lipschitz critic with one power iteration a layer, no penalty pass (Miyato 2018)"),
        ("loss.name", "hinge", "the SN-GAN/BigGAN loss: the critic stops pushing on images it already separates"),
        ("loss.n_critic", 1, "spectral norm keeps the critic stable without 5 critic steps per generator step"),
        ("optim.lr_g", 2e-4, "two time-scale rule (Heusel 2017): the generator at half the critic's rate; "
                             "with 1e-4 (SAGAN's 1:4) faces came later in the race sweep (README)"),
        ("optim.lr_d", 4e-4, "the fast critic of the two time-scale rule"),
        ("train.augment", "translation", "DiffAugment (Zhao 2020): the critic sees shifted real and fake alike; "
                                         "adding colour and cutout slowed the race sweep's faces (README)"),
        ("train.epochs", 40, "2.8M images of 71k faces: about 50 min at the 937 img/s measured on an H100 (README)"),
    )),
    Preset("boss", "boss-resnet", "boss-resnet on the DCGAN layout: the same loss, critic bound and augmentation, "
           "an eighth of the arithmetic; the race at equal minutes' winner", (
        ("model.arch", "dcgan", "race at equal minutes (10 min, 32 px, 3 seeds): median AFD 0.779 against "
                                "boss-resnet's 0.254 (docs/boss-and-race.md)"),
    )),
    Preset("boss-fast", "boss", "boss annealed and with DiffAugment's full policy, for the many epochs a fast pair "
           "sees in a time budget: median AFD 0.719 against boss's 0.779 at equal minutes", (
        ("optim.lr_final", 0.1, "both learning rates fall by a cosine to a tenth over the run: one seed of boss "
                                "peaked at 4 of 10 minutes (over 3 seeds it holds 0.75-0.80 from 4 minutes on)"),
        ("train.augment", "color,translation,cutout", "10 minutes show the critic each dev face about 40 times: "
                                                       "DiffAugment's policy for limited data (Zhao 2020)"),
    )),
    Preset("r3gan", "strong", "R3GAN's recipe (Huang et al. 2024) on the DCGAN layout: a relativistic loss whose critic "
           "cannot go flat, R1 and R2, schedules over the run's length; median AFD 0.694 at equal minutes", (
        ("loss.name", "rpgan", "relativistic pairing: each real image is scored against a fake, so the critic is judged "
                               "by a gap and never sits at a flat fixed point"),
        ("loss.n_critic", 1, "the penalties keep the critic smooth without extra critic steps"),
        ("loss.gamma", 1.0, "R1 on real and R2 on fake, gamma/2 each; 1 at 32-64 px and batch 64 (race sweep)"),
        ("loss.gamma_final", 0.1, "decayed tenfold by a cosine over the run, as R3GAN does"),
        ("model.d_norm", "none", "no normalisation layers in the critic: the penalties bound it"),
        ("optim.lr_final", 0.25, "both learning rates decay by a cosine to a quarter over the run (R3GAN)"),
        ("optim.beta2_final", 0.99, "Adam's beta2 from 0.9 to 0.99 over the run (R3GAN)"),
        ("train.ema_halflife_kimg", 10.0, "an EMA half-life of 10k images, ramped up over the first tenth of the run"),
        ("train.augment", "translation", "light augmentation: DiffAugment's shifts, as boss"),
        ("train.epochs", 40, "as boss: 2.8M images of 71k faces"),
    )),
    Preset("smoke", "baseline", "a tiny end-to-end check, minutes on a CPU", (
        ("model.g_width", 16, "a quarter of the sample's width: fast on CPU"),
        ("model.d_width", 16, "same"),
        ("train.batch_size", 32, "smaller steps on CPU"),
        ("train.max_steps", 60, "enough to exercise logging, checkpoints and sampling"),
        ("train.log_every", 10, "several log rows in a short run"),
        ("train.sample_every", 30, "two sample grids"),
        ("train.eval_every", 1.0, "an evaluation half-way and one at the end"),
        ("train.eval_images", 64, "enough to exercise it"),
        ("train.eval_ref", 64, "a small reference, when features are measured"),
    )),
)}


def preset_chain(name: str, table: Optional[Dict[str, Preset]] = None) -> List[Preset]:
    table = PRESETS if table is None else table
    if name not in table:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(table)}")
    chain = []
    while name is not None:
        chain.append(table[name])
        name = table[name].parent
    return chain[::-1]


def resolve(preset: str = "baseline", overrides: Optional[Dict[str, Any]] = None,
            table: Optional[Dict[str, Preset]] = None) -> Config:
    """The preset's configuration with user overrides applied last.

    ``table`` is another preset table (the toy's and the conditional GAN's live beside their
    commands, so ``kaggle-gan presets`` lists only what ``train`` can run); default :data:`PRESETS`.
    """
    cfg = Config()
    for p in preset_chain(preset, table):
        cfg = apply_overrides(cfg, {k: v for k, v, _ in p.changes})
    return apply_overrides(cfg, overrides or {})


def describe_presets(table: Optional[Dict[str, Preset]] = None) -> str:
    lines = []
    for p in (PRESETS if table is None else table).values():
        lines.append(f"{p.name}" + (f" (= {p.parent} +)" if p.parent else "") + f": {p.summary}")
        for key, value, why in p.changes:
            lines.append(f"    {key}={value}  # {why}")
    return "\n".join(lines)
