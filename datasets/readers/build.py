"""Which reader reads a domain name: the one registered under it, else the generic folder reader."""
from __future__ import annotations

import os.path as osp

from datasets.readers.base import DOMAIN_REGISTRY, DomainReader
from datasets.readers.folder import FolderDomain
from engine.config import check_config_values
from engine.utils.errors import UserError


def build_domain_reader(cfg, name: str) -> DomainReader:
    """The reader registered under ``name``, else the folder reader for ``<ROOT>/<name>``; its numeric
    settings are checked against their ranges (also for a config that ``engine.cli`` did not build)."""
    root = cfg.DATASET.ROOT
    if name in DOMAIN_REGISTRY:
        reader = DOMAIN_REGISTRY.get(name)
        check_config_values(cfg, reader.option_ranges(name))
        return reader(cfg, name, root)
    if osp.isdir(osp.join(root, name)):
        return FolderDomain(cfg, name, root)
    raise UserError(f"unknown domain '{name}': no reader is registered under that name "
                    f"({', '.join(DOMAIN_REGISTRY.registered_names())}) and there is no folder {osp.join(root, name)}")
