"""Experiments built on the one training loop: the race of presets, the 2-D mixture toy, the class-conditional
GAN, and multi-object conditional generation (i-CLEVR).

Each module here is imported only by the command that runs it (``kaggle-gan
race``, ``toy``, ``cgan``, ``iclevr``): the core package never depends on them.
Beside them: ``grader`` (the grading classifier cgan and iclevr share) and
``iclevr_scenes`` (the scene renderer).
"""
