"""kaggle_gan: anime-face GANs for NTU ML 2022 HW6 and Kaggle-style image generation.

The folders are the pipeline's stages, each importing only those below it
(checked by ``lint-imports``; see ``docs/where-things-go.md``)::

    cli.py          the command line: parses and delegates
    experiments/    studies on the one loop: the race, the 2-D toy, the conditional GANs
    sampling/       generate images, curate a pool, interpolate, pack the submission
    training/       the loop, the GAN step, losses, EMA, checkpoints, the evaluation
    scoring/ nets/  how good the images are (FID, KID, AFD, neighbours) | the networks
    data/           prepare the images once, serve them to the loop
    config.py       configurations and presets
    core/           files, locks, downloads, devices, weights

One short import per stage, loaded on first use, so ``import kaggle_gan``
loads nothing heavy and touches no network::

    from kaggle_gan import prepare, resolve, train, generate, score, pack
"""
from .core.version import __version__

# name -> (module under kaggle_gan, attribute): the stages' entry points
_API = {
    "prepare": ("data.prepare", "prepare"),
    "resolve": ("config", "resolve"),
    "train": ("training.loop", "train"),
    "generate": ("sampling.generate", "generate"),
    "interpolate": ("sampling.interpolate", "interpolate"),
    "pack": ("sampling.submit", "pack"),
    "score": ("scoring.score", "score"),
    "neighbours": ("scoring.neighbours", "neighbours"),
    "leaderboard": ("scoring.leaderboard", "leaderboard"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'kaggle_gan' has no attribute {name!r}")
    import importlib

    module, attr = _API[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted([*globals(), *_API])
