import pytest

from kaggle_gan.config import PRESETS, Config, parse_set, resolve
from kaggle_gan.core.io import UserError


def test_presets_state_their_differences():
    base, medium, wgan, strong = (resolve(p) for p in ("baseline", "medium", "wgan", "strong"))
    assert (base.train.epochs, base.train.batch_size, base.optim.lr_g, base.optim.beta1, base.model.z_dim,
            base.train.seed, base.loss.name) == (1, 64, 1e-4, 0.5, 100, 2022, "bce")
    assert medium.train.epochs > base.train.epochs and medium.loss == base.loss
    assert (wgan.loss.name, wgan.optim.name, wgan.loss.n_critic) == ("wgan", "rmsprop", 5)
    assert (strong.loss.name, strong.model.d_norm, strong.loss.gp_lambda, strong.loss.n_critic) == ("wgan-gp", "instance", 10.0, 2)
    for p in PRESETS.values():
        assert all(reason for _, _, reason in p.changes), p.name


def test_overrides_are_typed():
    cfg = resolve("strong", parse_set(["train.epochs=3 optim.lr_d=2e-4", "train.compile=true"]))
    assert cfg.train.epochs == 3 and cfg.optim.lr_d == 2e-4 and cfg.train.compile is True
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("item, message", [
    ("train.epoch=3", "unknown config key 'train.epoch'"),
    ("nope.x=1", "unknown config key"),
    ("train.epochs=three", "train.epochs must be int"),
    ("train.batch_size=-4", "train.batch_size must be positive"),
    ("model.resolution=48", "model.resolution=48 is not one of"),
    ("model.d_norm=batch", "wgan-gp needs a critic without batch norm"),
    ("train.compile=maybe", "train.compile must be bool"),
    ("train.eval_images=7", "an evaluation needs at least 8 images"),
    ("train.select=lpips", "train.select='lpips' is not one of"),
    ("train.eval_every=-1", "train.eval_every must not be negative"),
])
def test_bad_overrides_fail_with_one_line(item, message):
    with pytest.raises(UserError, match=message) as err:
        resolve("strong", parse_set([item]))
    assert "\n" not in str(err.value)


def test_malformed_set_and_unknown_preset():
    with pytest.raises(UserError, match="key=value"):
        parse_set(["train.epochs"])
    with pytest.raises(UserError, match="unknown preset"):
        resolve("boss-of-bosses")


def test_importing_the_command_line_loads_no_experiment_and_nothing_heavy():
    import json
    import subprocess
    import sys

    code = ("import json, sys, kaggle_gan.cli; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('kaggle_gan', 'torch', 'numpy', 'pandas')))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert not [m for m in loaded if m.startswith("kaggle_gan.experiments")]
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "numpy", "pandas")]
    assert "kaggle_gan.cli" in loaded
