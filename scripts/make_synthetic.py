"""Generate the synthetic MO-FER domains under --root (and optionally a preview grid).

    python scripts/make_synthetic.py --root data --preview synthetic_preview.png

train.py generates missing synthetic domains by itself; this is for looking at them or preparing
them ahead of time. Options: see datasets/synthetic.py or --help.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.synthetic import main  # noqa: E402

if __name__ == "__main__":
    main()
