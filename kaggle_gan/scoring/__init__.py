"""Stage 4, scoring: how good the images are and whether they copy the training set.

``fid`` (statistics, the Frechet distance, the cached reference) with its network in ``inception`` and
other feature networks in ``backbones``; ``metrics`` (KID, MiFID, precision/recall, density/coverage);
``afd`` (the anime-face detector and its rate); ``homework`` (the levels a score is judged against);
``score`` (the report), ``leaderboard`` (every scored folder); ``neighbours`` (nearest training images)
with its picture in ``sheet``.
"""
