"""The conditional pair: a generator and a projection critic that take a condition ``y``.

``y`` is either one class per image, (B,) long (the class-conditional GAN,
:mod:`kaggle_gan.experiments.cgan`), or a set of objects per image, (B, K)
float multi-hot (i-CLEVR, :mod:`kaggle_gan.experiments.iclevr`). Every
layer reads a condition through :func:`embed_condition`: one embedding row
per class, and for a set the rows of its members combined. For a one-hot
set that is exactly the class's row, so one set of weights serves both.

How a set is combined (our choice, the same rule wherever it applies):

* the generator takes the **mean** of its members' rows (conditional batch
  norm's gains start at 1 and stay near 1 for one object or three; a sum
  would triple a three-object scene's gain before training begins);
* the projection critic takes the **sum**: its score is
  psi(h) + sum over asked objects of <e_o, h>, so each object asked for adds
  its own evidence, and asking for a second object does not halve the first's.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .layers import norm2d, plan, widths


def embed_condition(table: nn.Embedding, y: torch.Tensor, mean: bool) -> torch.Tensor:
    """Rows of ``table`` for ``y``: (B,) long -> table[y]; (B, K) multi-hot -> the sum (or ``mean``) of its rows."""
    if not y.is_floating_point():
        return table(y)
    out = y.to(table.weight.dtype) @ table.weight
    return out / y.sum(1, keepdim=True).clamp_min(1).to(out.dtype) if mean else out


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose gain and bias are looked up per class: x (B, C, H, W), y -> (B, C, H, W).

    The normalisation is shared; each class owns a (gain, bias) pair,
    starting at (1, 0), so the label steers every layer of the generator
    (de Vries et al. 2017; Miyato & Koyama 2018). A set's pair is its members' mean.
    """

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(classes, channels)
        self.bias = nn.Embedding(classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gain, bias = embed_condition(self.gain, y, mean=True), embed_condition(self.bias, y, mean=True)
        return self.norm(x) * gain[:, :, None, None] + bias[:, :, None, None]


class ConditionalGenerator(nn.Module):
    """z (B, z_dim), condition y -> images (B, 3, R, R) in [-1, 1].

    The DCGAN generator's layout with every batch norm made conditional;
    ``cond_input`` also joins the condition to z at the input: a learned code
    (``embed``) or the one-hot (multi-hot) vector (``onehot``), both ``classes``
    wide, or nothing (``none``: the norms alone carry the condition).
    """

    def __init__(self, z_dim: int, width: int, resolution: int, classes: int, cond_input: str = "embed"):
        super().__init__()
        base, steps = plan(resolution)
        ch = widths(width, steps)
        self.z_dim, self.base, self.top, self.classes = z_dim, base, ch[0], classes
        self.cond_input = cond_input
        self.embed = nn.Embedding(classes, classes) if cond_input == "embed" else None
        n_in = z_dim + (classes if cond_input != "none" else 0)
        self.project = nn.Linear(n_in, ch[0] * base * base, bias=False)
        self.norms = nn.ModuleList([ConditionalBatchNorm2d(c, classes) for c in ch])
        self.convs = nn.ModuleList([nn.ConvTranspose2d(a, b, 5, 2, padding=2, output_padding=1, bias=False)
                                    for a, b in zip(ch[:-1], ch[1:])])
        self.to_rgb = nn.ConvTranspose2d(ch[-1], 3, 5, 2, padding=2, output_padding=1, bias=False)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.cond_input == "embed":
            z = torch.cat([z, embed_condition(self.embed, y, mean=True)], 1)
        elif self.cond_input == "onehot":
            code = y.to(z.dtype) if y.is_floating_point() else F.one_hot(y, self.classes).to(z.dtype)
            z = torch.cat([z, code], 1)
        x = self.project(z).view(z.shape[0], self.top, self.base, self.base)
        x = torch.relu(self.norms[0](x, y))
        for conv, norm in zip(self.convs, self.norms[1:]):
            x = torch.relu(norm(conv(x), y))
        return torch.tanh(self.to_rgb(x))


class ProjectionCritic(nn.Module):
    """images (B, 3, R, R), condition y -> scores (B,); with ``logits=True`` also class logits (B, classes).

    The DCGAN critic's convolutions give features h (summed over positions);
    the score is psi(h) + <embed(y), h> (the projection discriminator of
    Miyato & Koyama 2018; for a set, the sum over its members). ``aux_classifier``
    adds a linear head on the same h that predicts the class, or each
    object's presence (AC-GAN, Odena et al. 2017).
    """

    def __init__(self, width: int, resolution: int, norm: str, classes: int, aux_classifier: bool = False):
        super().__init__()
        _base, steps = plan(resolution)
        ch = widths(width, steps)[::-1]
        layers: List[nn.Module] = [nn.Conv2d(3, ch[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), norm2d(norm, c_out), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.psi = nn.Linear(ch[-1], 1)
        self.embed = nn.Embedding(classes, ch[-1])
        self.classify = nn.Linear(ch[-1], classes) if aux_classifier else None

    def forward(self, x: torch.Tensor, y: torch.Tensor, logits: bool = False):
        h = self.body(x).sum(dim=(2, 3))
        score = self.psi(h).flatten() + (embed_condition(self.embed, y, mean=False) * h).sum(1)
        if not logits:
            return score
        if self.classify is None:
            raise ValueError("this critic has no auxiliary classifier (loss.aux_weight=0)")
        return score, self.classify(h)


def class_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The auxiliary head's loss: cross-entropy for (B,) classes; for (B, K) sets, each object's
    binary cross-entropy (present or not), summed over the K objects and averaged over the batch."""
    if not y.is_floating_point():
        return F.cross_entropy(logits.float(), y)
    return F.binary_cross_entropy_with_logits(logits.float(), y.float(), reduction="sum") / len(y)


class Bound(nn.Module):
    """``net(x, y)`` seen as ``net(x)``, the condition ``y`` fixed for one step.

    The loop hands a conditional critic to the loss objects through this, so
    every loss (and the gradient penalty, whose mixed images share the real
    batch's labels) works unchanged. A batch of twice ``y``'s rows is a joint
    pass over real and fake (the fakes take the real batch's conditions), so
    ``y`` is repeated for it. With :meth:`keeping` on, each forward also keeps
    the auxiliary head's logits of the same pass, so the head's loss costs no
    second forward (:class:`kaggle_gan.training.losses.WithClassifier`).
    Holds no parameters of its own.
    """

    def __init__(self, net: nn.Module, y: torch.Tensor):
        super().__init__()
        self.net, self.y = net, y
        self.keep = False
        self.logits: List[torch.Tensor] = []  # the head's logits of each forward while keeping, in order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.y if len(x) == len(self.y) else self.y.repeat(len(x) // len(self.y), *[1] * (self.y.dim() - 1))
        if not self.keep:
            return self.net(x, y)
        score, logits = self.net(x, y, logits=True)
        self.logits.append(logits)
        return score

    def keeping(self) -> "Bound":
        """Keep the head's logits of every forward from now on (a fresh list)."""
        self.keep, self.logits = True, []
        return self

    def class_loss(self, x: torch.Tensor) -> torch.Tensor:
        """The critic's auxiliary head on ``x`` against the bound condition (:func:`class_loss`): a forward of its own."""
        _score, logits = self.net(x, self.y, logits=True)
        return class_loss(logits, self.y)

    def first_class_loss(self) -> torch.Tensor:
        """:func:`class_loss` of the first kept forward's first rows: the images the condition belongs to (the
        real batch of a critic step, the fakes of a generator step; a joint pass puts them first)."""
        if not self.logits:
            raise RuntimeError("no forward was kept: call keeping() before the loss runs the critic")
        return class_loss(self.logits[0][: len(self.y)], self.y)


def bind(net: nn.Module, y: Optional[torch.Tensor]) -> nn.Module:
    """``net`` itself for unlabelled data, else ``net`` with the condition ``y`` bound."""
    return net if y is None else Bound(net, y)
