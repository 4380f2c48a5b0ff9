"""Datasets and domain readers: importing this package registers them."""
from datasets import mofer  # noqa: F401
from datasets import readers  # noqa: F401
