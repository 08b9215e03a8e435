import pytest
import torch
from torch import nn

from kaggle_gan.config import resolve
from kaggle_gan.nets.models import DCGANDiscriminator, DCGANGenerator, build_models


def sample_generator():
    """The HW6 sample generator written out layer by layer, as HW6.md describes it."""
    def up(i, o):
        return [nn.ConvTranspose2d(i, o, 5, 2, padding=2, output_padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(nn.Linear(100, 8192, bias=False), nn.BatchNorm1d(8192), nn.ReLU(),
                         *up(512, 256), *up(256, 128), *up(128, 64),
                         nn.ConvTranspose2d(64, 3, 5, 2, padding=2, output_padding=1, bias=False), nn.Tanh())


def sample_discriminator():
    def down(i, o):
        return [nn.Conv2d(i, o, 4, 2, 1), nn.BatchNorm2d(o), nn.LeakyReLU(0.2)]
    return nn.Sequential(nn.Conv2d(3, 64, 4, 2, 1), nn.LeakyReLU(0.2), *down(64, 128), *down(128, 256),
                         *down(256, 512), nn.Conv2d(512, 1, 4), nn.Sigmoid())


def count(m):
    return sum(p.numel() for p in m.parameters())


def shapes(m):
    return [tuple(p.shape) for p in m.parameters()]


def test_baseline_models_are_the_sample_code():
    G, D = build_models(resolve("baseline").model)
    assert shapes(G) == shapes(sample_generator())
    assert shapes(D) == shapes(sample_discriminator())
    assert count(G) == 5_142_080 == count(sample_generator())
    assert count(D) == 2_766_529 == count(sample_discriminator())


@pytest.mark.parametrize("res", [32, 64, 96, 128])
def test_shapes_at_every_resolution(res):
    G = DCGANGenerator(z_dim=16, width=8, resolution=res)
    D = DCGANDiscriminator(width=8, resolution=res, norm="instance")
    x = G(torch.randn(3, 16))
    assert x.shape == (3, 3, res, res)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (3,)


def test_unknown_resolution_is_rejected():
    with pytest.raises(ValueError, match="resolution"):
        DCGANGenerator(resolution=48)


def test_wgan_gp_critic_has_no_batch_norm():
    _, D = build_models(resolve("strong").model)
    kinds = {type(m).__name__ for m in D.modules()}
    assert "BatchNorm2d" not in kinds and "InstanceNorm2d" in kinds
    assert "Sigmoid" not in kinds


def test_init_follows_the_sample():
    torch.manual_seed(0)
    G, D = build_models(resolve("baseline").model)
    conv = D.body[0].weight
    assert abs(conv.std().item() - 0.02) < 0.003
    bn = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)][0]
    assert abs(bn.weight.mean().item() - 1) < 0.01 and bn.bias.abs().max() == 0
