"""Train or evaluate a trainer of this project on a dataset of this project (Dassl/CoOp's ``train.py``).

    python train.py --root DATA --dataset-config-file configs/datasets/mofer.yaml \
        --config-file configs/trainers/PromptEmo/vit_b32.yaml --trainer PromptEmo \
        --source-domains ferplus affectnet oulu --target-domains rafdb \
        --output-dir output/run1 --seed 1 DATASET.UNSEEN_CLASSES fear

The flags, the merge order and the exit codes are the engine's command line (``engine/cli.py``).
"""
import sys

import datasets  # noqa: F401  (registers the datasets and domain readers)
import trainers  # noqa: F401  (registers the trainers)
from engine.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
