"""Generate the synthetic MO-FER domains under --root (and optionally a preview grid).

    python scripts/make_synthetic.py --root data --preview synthetic_preview.png

train.py generates missing synthetic domains by itself; this is for looking at them or preparing
them ahead of time. Options: see datasets/synthetic/cli.py or --help.
"""
from datasets.synthetic import main

if __name__ == "__main__":
    main()
