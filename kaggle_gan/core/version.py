"""The package's version, in one place: pyproject.toml reads it, every checkpoint and report records it."""

__version__ = "0.1.0"
