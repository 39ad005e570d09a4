"""``hieralab weights [PATTERN]`` and ``hieralab weights download NAME``: what the command line prints.

Both return the exit status; a problem the user can fix (an unknown name or tag, no network, a changed file) is
raised as a one-line :class:`~hieralab.errors.CheckpointError`, which the command line prints as it is.
"""

from __future__ import annotations

from ..errors import CheckpointError
from . import catalog, download


def list_command(pattern: str | None = None) -> int:
    """Print the catalog entries matching ``pattern`` (a glob, or a word matched anywhere in ``model.tag``): name
    (``*`` marks a model's default tag), source, size when known, whether it is cached. 1 when nothing matches."""
    rows = []
    for e in catalog.entries(pattern):
        path = download.cached(e)
        size = path.stat().st_size if path is not None and path.exists() else e.size
        rows.append((("* " if e.default else "  ") + e.name, e.source, download._human(size) if size else "?",
                     "cached" if path is not None else "-"))
    if not rows:
        print(f"no weights match {pattern!r}; `hieralab weights` lists them all")
        return 1
    header = ("  name", "source", "size", "cache")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"{len(rows)} weights ({sum(r[3] == 'cached' for r in rows)} cached; * = the model's default tag); "
          f"cache: {download.cache_dir()} and the Hugging Face cache {download.hub_cache_dir()}")
    return 0


def download_command(name: str) -> int:
    """Fetch ``name`` (``model.tag``, a model's name for its default tag, or ``hf-hub:ORG/REPO``) into the cache,
    check it, and print its local path."""
    path = download.resolve(name)
    if path is None:
        raise CheckpointError(f"{name!r} is not a catalog name (model.tag) nor hf-hub:ORG/REPO; "
                              "`hieralab weights` lists the names")
    print(path)
    return 0
