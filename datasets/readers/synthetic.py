"""Reader for the synthetic domains: generate them under ``DATASET.ROOT`` when missing (or made
with other ``DATASET.SYNTHETIC`` parameters), then read them as ordinary folder domains."""
from __future__ import annotations

from datasets import synthetic
from datasets.readers.base import DOMAIN_REGISTRY, DomainSplits
from datasets.readers.folder import FolderDomain
from engine.config import Bounds, CfgNode, check_config_values, register_config_hook, register_value_rules
from engine.utils.errors import UserError


@register_config_hook
def add_synthetic_config(cfg: CfgNode) -> None:
    """``DATASET.SYNTHETIC.*``: how the synthetic domains are generated (shared by all four)."""
    cfg.DATASET.SYNTHETIC = CfgNode()
    cfg.DATASET.SYNTHETIC.N_TRAIN_PER_CLASS = 40
    cfg.DATASET.SYNTHETIC.N_TEST_PER_CLASS = 20
    cfg.DATASET.SYNTHETIC.SIZE = 64  # image side in pixels
    cfg.DATASET.SYNTHETIC.SEED = 0


SYNTHETIC_RANGES = {"DATASET.SYNTHETIC.N_TRAIN_PER_CLASS": Bounds(low=1, integer=True),
                    "DATASET.SYNTHETIC.N_TEST_PER_CLASS": Bounds(low=1, integer=True),
                    "DATASET.SYNTHETIC.SIZE": Bounds(low=8, integer=True)}  # the generator's smallest face
register_value_rules(SYNTHETIC_RANGES)


class SyntheticDomain(FolderDomain):
    """One of :data:`datasets.synthetic.DOMAIN_STYLES`, generated on first use."""

    def read(self) -> DomainSplits:
        s = self.cfg.DATASET.SYNTHETIC
        check_config_values(self.cfg, SYNTHETIC_RANGES)
        try:
            synthetic.ensure_domains(self.root, [self.name], n_train_per_class=s.N_TRAIN_PER_CLASS,
                                     n_test_per_class=s.N_TEST_PER_CLASS, size=s.SIZE, seed=s.SEED)
        except FileExistsError as e:
            raise UserError(str(e)) from None
        return super().read()


for _name in synthetic.DOMAIN_STYLES:
    DOMAIN_REGISTRY.register(SyntheticDomain, name=_name)
