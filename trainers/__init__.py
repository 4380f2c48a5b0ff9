"""Trainers: importing this package registers them (one import line per trainer)."""
from trainers import zsclip  # noqa: F401
