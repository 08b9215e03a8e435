"""Experiments built on the one training loop: the race of presets, the 2-D mixture toy, the class-conditional GAN.

Each module here is imported only by the command that runs it (``kaggle-gan
race``, ``toy``, ``cgan``): the core package never depends on them.
"""
