"""Trainers: importing this package registers them (one import line per trainer)."""
from trainers import baseline  # noqa: F401
from trainers import coop  # noqa: F401
from trainers import duml  # noqa: F401
from trainers import lacmfer  # noqa: F401
from trainers import lacmfer_clip  # noqa: F401
from trainers import neno  # noqa: F401
from trainers import osfer  # noqa: F401
from trainers import promptemo  # noqa: F401
from trainers import zsclip  # noqa: F401
