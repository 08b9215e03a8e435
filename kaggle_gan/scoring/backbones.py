"""Feature networks chosen by name, for the neighbour search (and any metric that needs features).

``clip`` (timm's ``vit_base_patch16_clip_224.openai``, CLIP's own preprocessing),
``inception`` (the FID network of :mod:`kaggle_gan.scoring.fid`, no second download) or
any timm model name. Weights come through :mod:`kaggle_gan.core.weights`: the
user's Hugging Face / torch hub cache, a local file, or ``random:SEED`` (a
seeded untrained network, labelled a proxy everywhere). Nothing is ever downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np

from ..core.io import UserError
from ..core.weights import ResolvedWeights, WeightsMissing, WeightsSpec, resolve_weights, search_dirs

CLIP_MODEL = "vit_base_patch16_clip_224.openai"
DINOV2_MODEL = "vit_large_patch14_dinov2.lvd142m"  # FD_DINOv2's network (Stein et al. 2023), fed 224 px
ALIASES = {"clip": CLIP_MODEL, "dinov2": DINOV2_MODEL}
METRIC_NAMES = {DINOV2_MODEL: "FD_DINOv2", CLIP_MODEL: "FD_CLIP"}


@dataclass
class Backbone:
    """A feature network: ``(B, 3, H, W) uint8 in [0, 255]`` -> ``(B, dim)`` float32 (not normalised).

    ``preprocessing`` is everything between the uint8 pixels and the network
    (size, interpolation, crop, mean, std, mirror averaging); it is part of the index key.
    """

    name: str
    weights: ResolvedWeights
    preprocessing: dict
    device: "torch.device"  # noqa: F821
    forward: Callable = field(repr=False)

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        if self.preprocessing.get("mirror_average"):
            # Training flips faces at random, so a generator may reproduce a training face mirrored: the mean of
            # the features of an image and of its mirror image is the same for both, whatever the network.
            return (self.forward(x) + self.forward(x.flip(3))) / 2
        return self.forward(x)

    @property
    def label(self) -> str:
        """``NAME`` or ``NAME (random:SEED, untrained proxy)``: every output carries it."""
        return f"{self.name} (random:{self.weights.seed}, untrained proxy)" if self.weights.is_random else self.name


def canonical_name(name: str) -> str:
    """``clip`` -> the timm CLIP model; other names unchanged (lower case)."""
    name = name.strip()
    if name.lower() == "inception":
        return "inception"
    return ALIASES.get(name.lower(), name)


def _timm_cfg(name: str):
    import timm

    if not timm.is_model(name):
        raise UserError(
            f"unknown backbone {name!r}; use clip, inception or a timm model name (python -c 'import timm; print(timm.list_models())')"
        )
    return timm.models.get_pretrained_cfg(name)


def timm_weights_spec(name: str) -> Tuple[WeightsSpec, List[Path]]:
    """What the weights file of timm model ``name`` is called and where the user's caches may hold it.

    Returns the spec (file name in the torch hub / kaggle_gan cache folders,
    download address) and the files already present in the Hugging Face hub
    cache (where ``timm.create_model(pretrained=True)`` leaves them), best first.
    """
    cfg = _timm_cfg(name)
    hub_files: List[Path] = []
    url = None
    if cfg is not None and cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # timm without the hub client: only local files
            try_to_load_from_cache = None
        wanted = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for fname in wanted:
            found = try_to_load_from_cache(cfg.hf_hub_id, fname) if try_to_load_from_cache else None
            if isinstance(found, str):  # a path; other return values mean "not cached"
                hub_files.append(Path(found))
        url = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{wanted[0]}"
        filename = f"{name}{Path(wanted[0]).suffix}"
    elif cfg is not None and cfg.url:
        url, filename = cfg.url, cfg.url.rsplit("/", 1)[-1]  # timm's own downloads keep this name in torch hub
    else:
        filename = f"{name}.pth"
    return WeightsSpec(name=f"timm {name}", filename=filename, url=url, sha256=None, option="--weights",
                      make_var="WEIGHTS"), hub_files


def resolve_backbone_weights(name: str, weights: Union[str, Path, None] = None) -> ResolvedWeights:
    """Weights of backbone ``name`` (canonical): a file from the caches or ``weights``, or ``random:SEED``.

    Raises :class:`WeightsMissing` naming both ways to supply them: put the
    file in a cache folder, or pass ``--weights PATH`` (``random:SEED`` for a proxy).
    """
    if name == "inception":
        from dataclasses import replace

        from .inception import FID_WEIGHTS

        return resolve_weights(replace(FID_WEIGHTS, option="--weights", make_var="WEIGHTS"), weights)
    spec, hub_files = timm_weights_spec(name)
    if weights is None and hub_files:
        return resolve_weights(spec, hub_files[0])
    if weights is not None:
        return resolve_weights(spec, weights)
    dirs = search_dirs()
    try:
        return resolve_weights(spec, None, dirs=dirs)
    except WeightsMissing:
        pass
    cfg = _timm_cfg(name)
    hub = f"the Hugging Face cache ({cfg.hf_hub_id}), " if cfg is not None and cfg.hf_hub_id else ""
    fetch = f"download {spec.url} and save it as {dirs[0] / spec.filename}" if spec.url else (
        f"save it as {dirs[0] / spec.filename}")
    raise WeightsMissing(
        f"{spec.name} weights not found (not in {hub}{', '.join(str(d) for d in dirs)}); either put them in a cache "
        f"(online once: timm.create_model('{name}', pretrained=True), or {fetch}) or pass --weights PATH "
        "(--weights random:SEED for an untrained proxy)"
    )


def default_backbone() -> str:
    """``clip`` when CLIP weights are already on this machine, else ``inception`` (shared with FID)."""
    try:
        resolve_backbone_weights(CLIP_MODEL)
    except WeightsMissing:
        return "inception"
    return "clip"


def _inception_backbone(weights: ResolvedWeights, device) -> Backbone:
    from . import inception

    source = f"random:{weights.seed}" if weights.is_random else str(weights.path)
    net = inception.load_inception(source, device, sha256=weights.sha256)
    pre = {"policy": inception.RESIZE_POLICY, "input_size": inception.INCEPTION_SIDE, "mirror_average": True}
    return Backbone("inception", weights, pre, net.device, net)


def _timm_backbone(name: str, weights: ResolvedWeights, device, input_size: Optional[int]) -> Backbone:
    import timm
    import torch
    import torch.nn.functional as F

    cfg = _timm_cfg(name)
    # CLIP's head is its image projection, the CLIP embedding proper; other models' heads are classifiers.
    kwargs: dict = {} if "clip" in name else {"num_classes": 0}
    if input_size and cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = input_size  # ViTs: timm resamples the position embeddings
    if weights.is_random:
        with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's RNG alone
            torch.manual_seed(weights.seed)
            model = timm.create_model(name, pretrained=False, **kwargs)
    else:
        try:
            # timm's own loader converts checkpoint formats (OpenAI / open_clip CLIP); source="" makes it read
            # the file rather than the hub, so this never downloads.
            model = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay={"file": str(weights.path), "source": ""}, **kwargs
            )
        except Exception as err:
            raise UserError(f"{weights.path} is not a {name} checkpoint ({type(err).__name__}: {err})"[:400]) from None
    data_cfg = timm.data.resolve_data_config({}, model=model)
    side = int(input_size or data_cfg["input_size"][-1])
    crop_pct = float(data_cfg.get("crop_pct") or 1.0)
    pre = {
        "input_size": side,
        "interpolation": data_cfg["interpolation"],
        "crop_pct": crop_pct,
        "mean": [float(v) for v in data_cfg["mean"]],
        "std": [float(v) for v in data_cfg["std"]],
        "mirror_average": True,
    }
    dev = torch.device(device)
    model = model.eval().requires_grad_(False).to(dev)
    mean = torch.tensor(pre["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"], device=dev).view(1, 3, 1, 1)
    # timm's eval transform resizes the short side to side / crop_pct, then centre-crops side x side.
    scaled = int(side / crop_pct)  # floor, as timm's transform
    mode = pre["interpolation"] if pre["interpolation"] in ("bilinear", "bicubic", "nearest") else "bilinear"

    def forward(x: "torch.Tensor") -> "torch.Tensor":
        with torch.inference_mode():
            x = x.to(dev).float().div_(255.0)
            down = scaled < x.shape[-1]
            x = F.interpolate(x, size=(scaled, scaled), mode=mode, align_corners=False if mode != "nearest" else None,
                              antialias=down and mode != "nearest")
            top = (scaled - side) // 2
            x = x[..., top : top + side, top : top + side]
            x = (x.clamp_(0.0, 1.0) - mean) / std
            return model(x).float().flatten(1)

    return Backbone(name, weights, pre, dev, forward)


def load_backbone(
    name: Optional[str] = None,
    weights: Union[str, Path, None] = None,
    device="cpu",
    input_size: Optional[int] = None,
) -> Backbone:
    """A feature network by name: ``clip``, ``inception``, any timm model; None picks :func:`default_backbone`.

    ``weights``: None (the user's caches), a file path, or ``random:SEED``.
    ``input_size``: side fed to a timm network (default its own, 224 for CLIP);
    the Inception network always sees 299 (the FID policy).
    """
    resolved: Optional[ResolvedWeights] = None
    if name:
        name = canonical_name(name)
    else:  # the default, resolved once: hashing a 600 MB CLIP file twice would double the start-up
        try:
            clip = resolve_backbone_weights(CLIP_MODEL)
            name, resolved = CLIP_MODEL, (clip if weights is None else None)
        except WeightsMissing:
            name = "inception"
    if name == "inception" and input_size:
        raise UserError("--input-size does not apply to the inception backbone (it always uses the FID policy, 299 px)")
    if input_size is not None and not 16 <= input_size <= 1024:
        raise UserError(f"--input-size must be between 16 and 1024, got {input_size}")
    if name != "inception":
        _timm_cfg(name)  # an unknown name is reported before the weights are looked for
    resolved = resolved or resolve_backbone_weights(name, weights)
    if name == "inception":
        return _inception_backbone(resolved, device)
    return _timm_backbone(name, resolved, device, input_size)


@dataclass(frozen=True)
class FeatureWeights:
    """A backbone's weights as the metrics see them: the identity also names the network and its preprocessing."""

    resolved: ResolvedWeights
    network: str

    @property
    def is_random(self) -> bool:
        return self.resolved.is_random

    @property
    def seed(self) -> Optional[int]:
        return self.resolved.seed

    @property
    def identity(self) -> str:
        return f"{self.network}|{self.resolved.identity}"

    def describe(self) -> dict:
        return {**self.resolved.describe(), "network": self.network}


class MetricFeatures:
    """A named backbone as the feature network of FD, KID and the other metrics (``score --features NAME``).

    Raw features (no unit length, no mirror averaging: the metrics' papers use
    neither), ``(B, 3, H, W) uint8 -> (B, D)``. The label is ``FD_DINOv2``,
    ``FD_CLIP`` or ``FD (NAME)``, with ``proxy`` and the seed for random weights.
    """

    def __init__(self, backbone: Backbone):
        import json

        self.backbone, self.device = backbone, backbone.device
        pre = {k: v for k, v in backbone.preprocessing.items() if k != "mirror_average"}
        self.weights = FeatureWeights(backbone.weights, f"{backbone.name} {json.dumps(pre, sort_keys=True)}")
        name = METRIC_NAMES.get(backbone.name, f"FD ({backbone.name})")
        self.label = f"proxy {name} (random:{self.weights.seed})" if self.weights.is_random else name
        self.resize_policy = f"{backbone.name}: {json.dumps(pre, sort_keys=True)}"  # the network's own input

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        return self.backbone.forward(x)


def metric_features(name: str, weights: Union[str, Path, None] = None, device="cpu") -> MetricFeatures:
    """``dinov2``, ``clip`` or a timm name as the metrics' feature network (DINOv2 at 224 px, as Stein et al.)."""
    name = canonical_name(name)
    if name == "inception":
        raise UserError("--features inception is the default FID network: leave --features out")
    return MetricFeatures(load_backbone(name, weights, device, input_size=224 if name == DINOV2_MODEL else None))


def embed(images: np.ndarray, backbone: Backbone, batch_size: int = 64, desc: str = "features") -> np.ndarray:
    """(N, H, W, 3) uint8 images -> (N, D) float32 rows of unit length, in batches with a progress bar."""
    import torch
    from tqdm.auto import tqdm

    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
    out: Optional[np.ndarray] = None
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
        chunk = np.array(images[start : start + batch_size])  # a writable copy: torch refuses read-only memory maps
        f = backbone(torch.from_numpy(chunk).permute(0, 3, 1, 2))
        f = torch.nn.functional.normalize(f.float(), dim=1).cpu().numpy()
        if out is None:
            out = np.empty((len(images), f.shape[1]), dtype=np.float32)
        out[start : start + len(chunk)] = f
    if out is None:
        raise ValueError("no images to embed")
    return out
