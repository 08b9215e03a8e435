"""kaggle_gan: anime-face GANs for NTU ML 2022 HW6 and Kaggle-style image generation.

Importing the package does no work: submodules are imported where used
(``kaggle_gan.data``, ``kaggle_gan.train``, ``kaggle_gan.score``, ...).
"""

__version__ = "0.1.0"
