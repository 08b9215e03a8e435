"""Stage 2, training: the one loop (``loop``) for every preset, the GAN step it schedules (``step``), the
losses (``losses``), DiffAugment (``augment``), the EMA generator (``ema``), precision and optimisers
(``precision``), several GPUs (``distributed``), checkpoints (``checkpoint``), the run's log (``runlog``)
and the evaluation that keeps ``best.pt`` (``evaluate``)."""
