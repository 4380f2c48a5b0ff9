"""Domain readers: importing this package registers them (one import line per reader module)."""
from datasets.readers.base import DOMAIN_REGISTRY, DomainReader, DomainSplits, Item
from datasets.readers.build import build_domain_reader
from datasets.readers.folder import FolderDomain
from datasets.readers import synthetic  # noqa: F401  (registers the synthetic domains)
from datasets.readers import affectnet, ferplus, oulu, rafdb  # noqa: F401  (register the real FER domains)

__all__ = ["DOMAIN_REGISTRY", "DomainReader", "DomainSplits", "FolderDomain", "Item", "build_domain_reader"]
