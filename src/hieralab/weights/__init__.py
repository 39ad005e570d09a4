"""Public weights by name: the catalog (``model.tag`` -> source, format, licence, accuracy) and the downloads.

``resolve("hiera_base_224.mae_in1k")`` gives the local file (downloading it once, checked); ``hieralab.create_model(
"hiera_base_224", pretrained=True)`` and ``from_pretrained("hf-hub:ORG/REPO")`` call into here. This package sits
below ``hieralab.models``: it knows names and files, the models read them.
"""

from .catalog import HUB_PREFIX, Weights, catalog_markdown, entries, find, lookup, register, split_name, unregister
from .download import (HubRepo, cache_dir, cached, fetch, hub_repo, offline, resolve, sha256_file,
                       transformers_arguments)

__all__ = [
    "HUB_PREFIX", "HubRepo", "Weights", "cache_dir", "cached", "catalog_markdown", "entries", "fetch", "find",
    "hub_repo", "lookup", "offline", "register", "resolve", "sha256_file", "split_name", "transformers_arguments",
    "unregister",
]
