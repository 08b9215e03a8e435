"""The measuring stick: a training loop written the way the homework's sample code works.

Everything that costs time is done the sample's way: a ``Dataset`` that opens
one JPEG per item with PIL and runs torchvision transforms on it (resize to
the model's size, ``ToTensor``, ``Normalize``), a ``DataLoader`` with 2 worker
processes, noise drawn on the host and copied over, the generated batch kept
with its graph and fed to the critic undetached (the sample's
``f_logit = self.D(f_imgs)``), so the critic's backward also runs back through
the generator, whose gradients are then zeroed before its own step (for
WGAN-GP the penalty is the sample's ``gp`` on the undetached fake batch, so
its backward reaches the generator too), default optimiser settings,
default memory format, fp32, and both losses read back with ``.item()`` every
step for the progress bar.

What is *not* the sample's is deliberate, so that a ratio against this loop
measures the pipeline alone: the networks come from
:func:`kaggle_gan.nets.models.build_models` and the loss math from
:func:`kaggle_gan.training.losses.build_loss`, exactly as our loop uses them. For the
``strong`` preset it is the same loop style with the WGAN-GP loss and
``n_critic`` critic steps per generator step, as the sample's comments suggest.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import torch

from kaggle_gan.config import Config
from kaggle_gan.nets.models import build_models
from kaggle_gan.training.losses import StepContext, build_loss


class JpegFaces(torch.utils.data.Dataset):
    """The sample's ``CrypkoDataset``: item i -> (3, R, R) float32 in [-1, 1], decoded on every access."""

    def __init__(self, files: Sequence[Path], resolution: int):
        import torchvision.transforms as T

        self.files = list(files)
        self.transform = T.Compose([
            T.Resize((resolution, resolution)),
            T.ToTensor(),
            T.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        ])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB"))


def _sample_optimizer(params, cfg: Config, lr: float) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(o.beta1, o.beta2))
    return torch.optim.RMSprop(params, lr=lr)


class ReferenceLoop:
    """The sample's ``TrainerGAN.train`` inner loop, one ``step()`` per batch."""

    def __init__(self, cfg: Config, files: Sequence[Path], device: torch.device, workers: int = 2, seed: int = 2022):
        torch.manual_seed(seed)
        self.cfg, self.device = cfg, device
        self.G, self.D = build_models(cfg.model)
        self.G.to(device).train()
        self.D.to(device).train()
        self.loss = build_loss(cfg.loss)
        self.ctx = StepContext()  # fp32, global RNG, no scaling
        self.opt_G = _sample_optimizer(self.G.parameters(), cfg, cfg.optim.lr_g)
        self.opt_D = _sample_optimizer(self.D.parameters(), cfg, cfg.optim.lr_d)
        self.loader = torch.utils.data.DataLoader(
            JpegFaces(files, cfg.model.resolution), batch_size=cfg.train.batch_size, shuffle=True,
            num_workers=workers, drop_last=True,
        )
        self._batches = self._forever()
        self.steps = 0
        self.last: Dict[str, float] = {}

    def _forever(self) -> Iterator[torch.Tensor]:
        while True:
            yield from self.loader

    def step(self) -> Dict[str, float]:
        """One critic step (and a generator step every ``n_critic``); returns the losses as floats."""
        B, z_dim = self.cfg.train.batch_size, self.cfg.model.z_dim
        imgs = next(self._batches).to(self.device)
        z = torch.randn(B, z_dim).to(self.device)
        f_imgs = self.G(z)
        if self.cfg.loss.name == "wgan-gp":  # the sample's WGAN-GP comment: its own self.gp(r_imgs, f_imgs)
            r_logit, f_logit = self.D(imgs), self.D(f_imgs)
            loss_D = -r_logit.mean() + f_logit.mean() + self.cfg.loss.gp_lambda * sample_gp(self.D, imgs, f_imgs)
        else:
            loss_D, _ = self.loss.critic_loss(self.D, imgs, f_imgs, self.ctx)  # not detached: as the sample
        self.D.zero_grad()
        loss_D.backward()
        self.opt_D.step()
        self.loss.after_critic_step(self.D)
        if self.steps % self.cfg.loss.n_critic == 0:
            z = torch.randn(B, z_dim).to(self.device)
            f_imgs = self.G(z)
            loss_G = self.loss.generator_loss(self.D, f_imgs, self.ctx)
            self.G.zero_grad()
            loss_G.backward()
            self.opt_G.step()
            self.last["g_loss"] = loss_G.item()
        self.last["d_loss"] = loss_D.item()  # the sample's progress_bar.set_postfix, every step
        self.steps += 1
        return self.last

    def close(self) -> None:
        self._batches.close()  # ends the loader's iterator, so its worker processes exit


def sample_gp(D: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The gradient penalty as students wrote the sample's ``gp``: one mixing weight per image
    drawn on the host, and ``fake`` not detached, so the penalty's backward also reaches G.

    Same value as :func:`kaggle_gan.training.losses.gradient_penalty`; only the wasted work differs.
    """
    alpha = torch.rand(real.size(0), 1, 1, 1).to(real.device)
    interpolates = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = D(interpolates)
    (grad,) = torch.autograd.grad(out, interpolates, grad_outputs=torch.ones_like(out), create_graph=True,
                                  retain_graph=True)
    return ((grad.view(grad.size(0), -1).norm(2, dim=1) - 1) ** 2).mean()


@torch.no_grad()
def reference_generate(G: torch.nn.Module, out: Path, n: int, z_dim: int, device: torch.device) -> List[Path]:
    """The sample's ``inference``: all ``n`` images in one forward pass, then one ``save_image`` per file."""
    import torchvision

    G.eval()
    out.mkdir(parents=True, exist_ok=True)
    z = torch.randn(n, z_dim).to(device)
    imgs = (G(z).data + 1) / 2.0
    paths = []
    for i in range(n):
        paths.append(out / f"{i + 1}.jpg")
        torchvision.utils.save_image(imgs[i], paths[-1])
    return paths
