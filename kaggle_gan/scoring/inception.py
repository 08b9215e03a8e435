"""The FID feature network: pytorch-fid's Inception-v3, built without a download, its weights verified."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from ..core.weights import ResolvedWeights, WeightsSpec, resolve_weights

FEATURE_DIM = 2048


INCEPTION_SIDE = 299


# pytorch-fid's own policy, named so reports can state it: uint8 -> [0, 1] ->
# bilinear to 299x299 inside torch (align_corners=False, no antialias) -> [-1, 1].
RESIZE_POLICY = "pytorch-fid:bilinear-299"


FID_WEIGHTS = WeightsSpec(
    name="FID Inception-v3",
    filename="pt_inception-2015-12-05-6726825d.pth",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    sha256="6726825d",
    option="--inception-weights",
    make_var="INCEPTION",
)


def build_inception() -> "torch.nn.Module":  # noqa: F821
    """pytorch-fid's FID Inception-v3 structure with untouched initial weights (no download).

    Its ``state_dict`` keys are those of the published weights file.
    """
    import torchvision
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

    # init_weights=False: the weights are about to be replaced, their init is wasted time.
    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


def _seeded_init(net: "torch.nn.Module", seed: int) -> None:  # noqa: F821
    """Deterministic random weights from ``seed``, without disturbing the global RNG.

    He-normal convolutions keep activations of order one through the 90-odd
    layers (batch norms are identities in eval mode), so proxy features are
    neither vanishing nor overflowing.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(net.named_parameters()):
            if p.dim() == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p.shape[1]) ** 0.5)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.zero_()
            elif name.endswith("running_var"):
                b.fill_(1.0)


class InceptionFeatures:
    """Callable: (B, 3, H, W) uint8 in [0, 255] -> (B, 2048) float32 pool features."""

    def __init__(self, net: "torch.nn.Module", weights: ResolvedWeights, device):  # noqa: F821
        import torch

        self.device = torch.device(device)
        self.weights = weights
        # channels_last lets oneDNN pick its fastest convolutions: about 1.3x on CPU, same numbers.
        self.net = net.eval().requires_grad_(False).to(self.device, memory_format=torch.channels_last)

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        import torch
        import torch.nn.functional as F

        n = self.net
        with torch.inference_mode():
            x = x.to(self.device).float().div_(255.0)
            x = F.interpolate(x, size=(INCEPTION_SIDE, INCEPTION_SIDE), mode="bilinear", align_corners=False)
            x = x.mul_(2.0).sub_(1.0).contiguous(memory_format=torch.channels_last)
            for layer in (
                n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1,
                n.Conv2d_3b_1x1, n.Conv2d_4a_3x3, n.maxpool2,
                n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d, n.Mixed_6e,
                n.Mixed_7a, n.Mixed_7b, n.Mixed_7c, n.avgpool,
            ):
                x = layer(x)
            return x.flatten(1)

    @property
    def label(self) -> str:
        """``FID`` or ``proxy FID (random:SEED)``: every printed number carries it."""
        return f"proxy FID (random:{self.weights.seed})" if self.weights.is_random else "FID"


def load_inception(
    weights: Union[str, Path, None] = None,
    device="cpu",
    *,
    sha256: Optional[str] = None,
    dirs=None,
) -> InceptionFeatures:
    """The FID feature extractor, from verified weights or a seed.

    ``weights``: None (torch hub cache, then the kaggle_gan cache), a file
    path, or ``random:SEED``. ``sha256``: expected digest or prefix, default
    the published file's ``6726825d``. Raises
    :class:`kaggle_gan.core.weights.WeightsMissing` (one line: where to put the file)
    when absent, :class:`kaggle_gan.core.io.UserError` on a checksum mismatch.
    """
    import torch

    from ..core.io import UserError

    resolved = resolve_weights(FID_WEIGHTS, weights, sha256=sha256, dirs=dirs)
    net = build_inception()
    if resolved.is_random:
        _seeded_init(net, resolved.seed)
    else:
        try:
            state = torch.load(resolved.path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception as err:  # unpicklable, or keys of another network
            raise UserError(f"{resolved.path} is not an FID Inception-v3 state dict ({type(err).__name__}: {err})"[:400]) from None
    return InceptionFeatures(net, resolved, device)


def load_inception_or_proxy(weights: Optional[str], device, who: str) -> InceptionFeatures:
    """The given weights; with None the cached real ones, else ``random:0`` (a proxy), said in one line by ``who``."""
    from ..core.weights import WeightsMissing

    if weights is None:
        try:
            return load_inception(None, device)
        except WeightsMissing:
            print(f"{who}: no Inception weights found; using random:0. Its FID and KID are PROXIES, comparable "
                  "only with other random:0 scores of the same data")
            weights = "random:0"
    return load_inception(weights, device)
