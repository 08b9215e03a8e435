"""Stages 3 and 5, sampling and submission: per-image seeds, truncation and paths through the noise
(``noise``); images from a trained run (``generate``), optionally the best of a pool (``curate``);
interpolation GIFs (``interpolate``); the archive the judge takes (``submit``)."""
