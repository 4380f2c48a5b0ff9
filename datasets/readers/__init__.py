from datasets.readers.base import DOMAIN_REGISTRY, DomainReader, DomainSplits, build_domain_reader
from datasets.readers.folder import FolderDomain
from datasets.readers import synthetic  # noqa: F401  (registers the synthetic domains)
from datasets.readers import affectnet, ferplus, oulu, rafdb  # noqa: F401  (register the real FER domains)

__all__ = ["DOMAIN_REGISTRY", "DomainReader", "DomainSplits", "FolderDomain", "build_domain_reader"]
