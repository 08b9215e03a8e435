"""The package's shape: files from earlier versions still load, one short import per stage, small rooms."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MAX_MODULE_LINES, MAX_CLASS_LINES = 400, 200


def test_a_generator_written_before_the_move_to_subpackages_draws_the_same_images(tmp_path):
    """generator-v0.1.0.pt was trained by the code before kaggle_gan/ became folders (its .json says how);
    today's code must load it and draw what that code drew, within float rounding."""
    from kaggle_gan.sampling.generate import generate
    from kaggle_gan.sampling.noise import noise
    from kaggle_gan.sampling.runs import load_generator

    expected = json.loads((FIXTURES / "generator-v0.1.0.json").read_text())
    G, cfg, step = load_generator(FIXTURES / "generator-v0.1.0.pt", torch.device("cpu"))
    assert (step, cfg.model.z_dim, cfg.model.resolution) == (expected["step"], 4, 32)
    with torch.no_grad():
        x = G(noise(expected["seeds"], cfg.model.z_dim))
    pooled = torch.nn.functional.avg_pool2d(x, 8).flatten().double()
    want = torch.tensor(expected["pooled_8x8"], dtype=torch.float64)
    assert torch.allclose(pooled, want, rtol=0, atol=1e-6), (pooled - want).abs().max()
    # a freshly initialised generator of the same shape draws something else: the comparison can fail
    from kaggle_gan.nets.models import build_models

    fresh, _ = build_models(cfg.model)
    with torch.no_grad():
        other = torch.nn.functional.avg_pool2d(fresh.eval()(noise(expected["seeds"], 4)), 8).flatten().double()
    assert (other - want).abs().max() > 1e-4

    out = generate(FIXTURES / "generator-v0.1.0.pt", tmp_path / "images", n=2, size=32)
    assert sorted(p.name for p in out.iterdir()) == [".kaggle_gan.json", "1.jpg", "2.jpg"]


def test_one_short_import_per_stage_loads_nothing_heavy_until_used():
    code = ("import json, sys, kaggle_gan\n"
            "heavy = lambda: sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'pandas'))\n"
            "before = heavy()\n"
            "from kaggle_gan import generate, pack, prepare, resolve, score, train\n"
            "print(json.dumps({'before': before, 'names': [f.__module__ + '.' + f.__name__ for f in "
            "(prepare, resolve, train, generate, score, pack)], 'version': kaggle_gan.__version__}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    cwd=REPO).stdout)
    assert out["before"] == []
    assert out["names"] == ["kaggle_gan.data.prepare.prepare", "kaggle_gan.config.resolve",
                            "kaggle_gan.training.loop.train", "kaggle_gan.sampling.generate.generate",
                            "kaggle_gan.scoring.score.score", "kaggle_gan.sampling.submit.pack"]
    assert out["version"] == "0.1.0"
    import kaggle_gan

    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        kaggle_gan.trian  # noqa: B018


def _python_files():
    return sorted((REPO / "kaggle_gan").rglob("*.py"))


def test_no_module_over_400_lines_and_no_class_over_200():
    long_modules = {str(p.relative_to(REPO)): n for p in _python_files()
                    if (n := p.read_text().count("\n")) > MAX_MODULE_LINES}
    long_classes = {}
    for p in _python_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                long_classes[f"{p.relative_to(REPO)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert not long_modules and not long_classes, (long_modules, long_classes)


def test_the_augmentations_config_accepts_are_the_ones_the_critic_applies():
    from kaggle_gan.config import AUGMENTATIONS
    from kaggle_gan.training.augment import TRANSFORMS

    assert tuple(TRANSFORMS) == AUGMENTATIONS
