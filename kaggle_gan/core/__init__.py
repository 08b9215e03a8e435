"""Plumbing every stage shares, and nothing else: files written atomically, locks, downloads and checksums
(``io``), device and threads (``runtime``), feature passes saved in chunks (``chunks``), pretrained weights
found and verified offline (``weights``). Imports nothing else of the package."""
