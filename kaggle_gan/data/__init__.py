"""Stage 1, data: images in (a zip, a folder, a URL) -> the prepared folder -> what the training loop draws.

``prepare`` decodes and resizes once (``imagefiles`` reads one file, ``labels`` the labels of conditional
data); ``prepared`` is the folder's format, written by prepare and read by training, scoring and the
neighbour search; ``sources`` serves it to the loop as batches on the device; ``pictures`` converts image
arrays and tensors (resizing, generator output to uint8, grids).
"""
