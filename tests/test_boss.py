"""The boss recipe's pieces: augmentation, ResNet pair, spectral norm, R1, and the preset on the one loop."""
import dataclasses
import itertools

import pytest
import torch
from test_train import TINY
from torch import nn

from kaggle_gan.config import PRESETS, resolve
from kaggle_gan.core.io import UserError
from kaggle_gan.nets.models import ResNetDiscriminator, ResNetGenerator, build_models
from kaggle_gan.training.augment import AugmentedCritic, augment, color, cutout, parse_policy, translation
from kaggle_gan.training.checkpoint import load_latest
from kaggle_gan.training.loop import Trainer, train
from kaggle_gan.training.losses import HingeLoss, StepContext, WithR1, build_loss, r1_penalty


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_color_keeps_flat_images_flat_and_shifts_brightness_by_at_most_half():
    x = torch.full((32, 3, 8, 8), 0.2)
    y = color(x, gen())
    assert y.shape == x.shape
    flat = y.flatten(1)
    assert torch.allclose(flat.std(dim=1), torch.zeros(32), atol=1e-6)  # saturation and contrast keep a flat image flat
    assert ((flat[:, 0] - 0.2).abs() <= 0.5 + 1e-6).all()


def test_translation_is_a_zero_filled_shift_of_at_most_an_eighth():
    x = torch.arange(1, 1 + 3 * 16 * 16, dtype=torch.float32).view(1, 3, 16, 16).repeat(20, 1, 1, 1)
    y = translation(x, gen())
    shifts = set()
    for img_in, img_out in zip(x, y):
        for dy, dx in itertools.product(range(-2, 3), repeat=2):
            shifted = torch.zeros_like(img_in)
            src = img_in[:, max(0, -dy): 16 - max(0, dy), max(0, -dx): 16 - max(0, dx)]
            shifted[:, max(0, dy): 16 - max(0, -dy), max(0, dx): 16 - max(0, -dx)] = src
            if torch.equal(shifted, img_out):
                shifts.add((dy, dx))
                break
        else:
            pytest.fail("output is not a shift of the input by at most 2 pixels")
    assert len(shifts) > 1  # shifts differ between images


def test_cutout_zeroes_one_square_of_half_the_side():
    x = torch.ones(64, 3, 8, 8)
    y = cutout(x, gen())
    zeros = (y[:, 0] == 0).flatten(1).sum(dim=1)
    assert (zeros <= 16).all() and (zeros >= 4).all()  # a 4x4 square, possibly overhanging the border
    assert (zeros == 16).any()
    assert torch.equal(y[:, 0] == 0, y[:, 2] == 0)  # the same hole in every channel


def test_augmentation_is_differentiable_and_deterministic_given_the_generator():
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    a = augment(x, "color,translation,cutout", gen(3))
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(a, augment(x, "color,translation,cutout", gen(3)))
    assert parse_policy(" color, cutout ") == ["color", "cutout"] and parse_policy("") == []


def test_an_unknown_augmentation_is_a_one_line_user_error():
    with pytest.raises(UserError, match="train.augment: unknown augmentation colour"):
        resolve("boss-resnet", {"train.augment": "colour,translation"})


def test_augmented_critic_adds_no_state_and_scores_the_augmented_images():
    D = ResNetDiscriminator(8, 32)
    wrapped = AugmentedCritic(D, "translation", gen())
    assert sum(p.numel() for p in wrapped.parameters()) == sum(p.numel() for p in D.parameters())
    assert set(wrapped.state_dict()) == {f"critic.{k}" for k in D.state_dict()}
    x = torch.randn(2, 3, 32, 32)
    shifted = translation(x, gen())  # the same draw the wrapper makes from an equally seeded generator
    D.eval()  # spectral norm's vectors stay put, so D is one fixed function below
    scores = wrapped(x)
    assert torch.allclose(scores, D(shifted)) and not torch.allclose(scores, D(x))


@pytest.mark.parametrize("resolution", [32, 64])
def test_resnet_pair_shapes_and_range(resolution):
    G, D = ResNetGenerator(16, 8, resolution), ResNetDiscriminator(8, resolution)
    x = G(torch.randn(3, 16))
    assert x.shape == (3, 3, resolution, resolution) and x.abs().max() <= 1
    assert D(x).shape == (3,)


def test_spectral_norm_makes_every_critic_layer_1_lipschitz():
    torch.manual_seed(0)
    cfg = resolve("boss-resnet", {"model.resolution": 32, "model.d_width": 8})
    _, D = build_models(cfg.model)
    D.train()
    with torch.no_grad():
        # power iterations run once per training forward pass; 30 left sigma up to 0.018 from 1 on some seeds
        for _ in range(100):
            D(torch.randn(2, 3, 32, 32))
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(hasattr(m, "parametrizations") for m in layers)
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.02)


def test_r1_of_a_linear_critic_is_its_squared_weight_norm():
    a = torch.tensor([1.0, -2.0, 0.5, 3.0])
    D = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False), nn.Flatten(0))
    with torch.no_grad():
        D[1].weight.copy_(a)
    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    ctx = StepContext(gen())
    assert r1_penalty(D, real, ctx).item() == pytest.approx(float(a @ a))
    loss, stats = WithR1(HingeLoss(), gamma=2.0).critic_loss(D, real, fake, ctx)
    r, f = real.flatten(1) @ a, fake.flatten(1) @ a  # the linear critic's scores
    hinge = torch.relu(1 - r).mean() + torch.relu(1 + f).mean()
    assert loss.item() == pytest.approx(hinge.item() + float(a @ a))  # gamma / 2 * ||a||^2 with gamma = 2
    assert stats["r1"].item() == pytest.approx(float(a @ a))


def test_r1_is_configuration_and_needs_a_critic_without_batch_norm():
    cfg = resolve("boss-resnet", {"loss.r1_gamma": 0.1})
    loss = build_loss(cfg.loss)
    assert isinstance(loss, WithR1) and loss.name == "hinge" and loss.double_backward
    assert not isinstance(build_loss(resolve("boss-resnet").loss), WithR1)
    with pytest.raises(UserError, match="r1_gamma needs a critic without batch norm"):
        resolve("baseline", {"loss.r1_gamma": 1.0})


def test_boss_preset_states_its_ingredients():
    cfg = resolve("boss-resnet")
    assert (cfg.model.arch, cfg.model.spectral_norm, cfg.loss.name, cfg.loss.n_critic) == ("resnet", True, "hinge", 1)
    assert cfg.optim.lr_d > cfg.optim.lr_g and cfg.train.augment == "translation"
    assert PRESETS["boss-resnet"].parent == "strong" and all(why for _, _, why in PRESETS["boss-resnet"].changes)


def test_boss_is_the_race_winner_boss_resnet_on_the_dcgan_layout():
    """The race at equal minutes made the DCGAN layout `boss`: everything else is boss-resnet's, key for key."""
    boss, resnet = resolve("boss"), resolve("boss-resnet")
    assert boss.model == dataclasses.replace(resnet.model, arch="dcgan")
    assert (boss.loss, boss.optim, boss.train) == (resnet.loss, resnet.optim, resnet.train)
    assert [key for key, _, why in PRESETS["boss"].changes if why] == ["model.arch"]
    assert {"boss", "boss-resnet", "boss-fast", "r3gan"} <= set(PRESETS)


def test_boss_trains_on_the_one_loop_and_resumes_exactly(prepared, tmp_path):
    """Augmentation draws from the loop's generator: 3 + 3 resumed steps equal 6 in one go."""
    over = {**TINY, "train.max_steps": 6, "loss.r1_gamma": 0.1, "train.augment": "color,translation,cutout"}
    full = train(resolve("boss-resnet", over), prepared, tmp_path / "a", device="cpu", progress=False)
    train(resolve("boss-resnet", {**over, "train.max_steps": 3}), prepared, tmp_path / "b", device="cpu", progress=False)
    resumed = train(resolve("boss-resnet", over), prepared, tmp_path / "b", device="cpu", progress=False)
    a, b = torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)
    for k in a["G"]:
        assert torch.equal(a["G"][k], b["G"][k]), k
        assert torch.isfinite(a["G"][k].float()).all()
    sa, sb = load_latest(tmp_path / "a" / "checkpoints"), load_latest(tmp_path / "b" / "checkpoints")
    assert not any(k.startswith("critic.") for k in sa["D"])  # checkpoints hold the plain critic
    for k in sa["D"]:
        assert torch.equal(sa["D"][k], sb["D"][k]), k


def test_a_boss_step_changes_both_networks(prepared, tmp_path):
    t = Trainer(resolve("boss-resnet", TINY), prepared, tmp_path / "s", device="cpu", progress=False)
    before = [p.detach().clone() for p in itertools.chain(t.gan.G.parameters(), t.gan.D.parameters())]
    t.train_step(t._batch(torch.randperm(len(t.data)), 0))
    after = list(itertools.chain(t.gan.G.parameters(), t.gan.D.parameters()))
    assert sum(not torch.equal(x, y) for x, y in zip(before, after)) > len(before) // 2


def test_resnet_generator_convolutions_that_feed_a_batch_norm_have_no_bias():
    G = ResNetGenerator(16, 8, 32)
    blocks = list(G.blocks)
    assert blocks and all(b.main[3].bias is None and isinstance(b.main[4], nn.BatchNorm2d) for b in blocks)
    assert all(b.main[6].bias is not None for b in blocks)  # it feeds the residual sum, not a batch norm


def _with_legacy_biases(G: ResNetGenerator) -> ResNetGenerator:
    """G as earlier versions built it: the first convolution of each block with a (random) bias."""
    for b in G.blocks:
        conv = b.main[3]
        old = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1)
        with torch.no_grad():
            old.weight.copy_(conv.weight)
            old.bias.normal_(0, 0.5)
        b.main[3] = old
    return G


def test_an_older_generator_checkpoint_loads_and_draws_the_same_images():
    torch.manual_seed(0)
    old = _with_legacy_biases(ResNetGenerator(16, 8, 32))
    for _ in range(3):  # running statistics that include the biases
        old(torch.randn(8, 16))
    z = torch.randn(5, 16)
    want = old.eval()(z)
    G = ResNetGenerator(16, 8, 32)
    G.load_state_dict(old.state_dict())  # strict: the biases are folded into the running means
    assert torch.allclose(G.eval()(z), want, atol=1e-5)
    shifted = ResNetGenerator(16, 8, 32)  # without the fold, the outputs would differ
    state = {k: v for k, v in old.state_dict().items() if not k.endswith("main.3.bias")}
    shifted.load_state_dict(state)
    assert not torch.allclose(shifted.eval()(z), want, atol=1e-3)


def test_an_older_boss_checkpoint_resumes_with_its_adam_moments(prepared, tmp_path):
    t = Trainer(resolve("boss-resnet", TINY), prepared, tmp_path / "s", device="cpu", progress=False)
    for i in range(2):
        t.train_step(t._batch(torch.arange(len(t.data)), i))
    state = t.gan.state_dict()
    # the same state as an older version wrote it: a bias after each block's first conv weight, with Adam moments
    names = [n for n, _ in t.gan.G.named_parameters()]
    old_names, old_G, old_opt = [], {}, {}
    for k, v in state["G"].items():
        old_G[k] = v
        if k in names:
            old_names.append(k)
        if k.endswith("main.3.weight"):
            bias = k[: -len("weight")] + "bias"
            old_G[bias] = torch.full((v.shape[0],), 7.0)
            old_names.append(bias)
    for i, n in enumerate(old_names):
        old_opt[i] = ({"step": torch.tensor(2.0), "exp_avg": torch.full((old_G[n].shape[0],), 9.0),
                       "exp_avg_sq": torch.ones(old_G[n].shape[0])} if n.endswith("main.3.bias")
                      else state["opt_G"]["state"][names.index(n)])
    group = {**state["opt_G"]["param_groups"][0], "params": list(range(len(old_names)))}
    old = {**state, "G": old_G, "opt_G": {"state": old_opt, "param_groups": [group]}}
    fresh = Trainer(resolve("boss-resnet", TINY), prepared, tmp_path / "r", device="cpu", progress=False)
    fresh.gan.load_state_dict(old)
    for p, q in zip(fresh.gan.G.parameters(), t.gan.G.parameters()):
        assert torch.equal(p, q)
        mine, theirs = fresh.gan.opt_G.state[p], t.gan.opt_G.state[q]
        assert torch.equal(mine["exp_avg"], theirs["exp_avg"]) and torch.equal(mine["exp_avg_sq"], theirs["exp_avg_sq"])
    fresh.train_step(fresh._batch(torch.arange(len(fresh.data)), 2))  # and it trains on
