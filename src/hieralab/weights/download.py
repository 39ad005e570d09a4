"""Getting catalog weights onto the disk, once and intact.

- Direct URLs go to ``<cache>/downloads/<host>/<path>``, ``<cache>`` being ``$HIERALAB_CACHE`` or the platform's
  cache folder (``$XDG_CACHE_HOME/hieralab``, ``~/.cache/hieralab``; ``~/Library/Caches/hieralab`` on macOS,
  ``%LOCALAPPDATA%\\hieralab\\cache`` on Windows). The bytes land in a hidden ``.<name>.part`` beside the final name
  and are renamed onto it only when whole and checked, so an interrupted download never leaves a file under the
  final name; the next try resumes the part with an HTTP ``Range`` request. A file lock makes two processes asking
  for the same file download it once. The sha256 is checked against the catalog's when it has one, else recorded at
  the first download (``<file>.sha256``) and checked at every later use.
- Hub files go through ``huggingface_hub`` into its own cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub``): no second copy.
  Its blobs of weights are named by their sha256, which is checked at every use.
- ``HIERALAB_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``): the caches only; what is missing is named. ``HIERALAB_MIRROR=<base
  URL>`` replaces the scheme and host of every catalog URL (and is the hub endpoint for hub files).

Every failure a user can meet (no network, 404, a truncated body, an HTML page, a changed file) is one line: a
:class:`~hieralab.errors.CheckpointError`. Nothing here unpickles anything: files are read by ``hieralab.models``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from .. import files
from ..errors import CheckpointError
from .catalog import HUB_PREFIX, Weights, find

log = logging.getLogger(__name__)

ENV_CACHE, ENV_OFFLINE, ENV_MIRROR = "HIERALAB_CACHE", "HIERALAB_OFFLINE", "HIERALAB_MIRROR"
CHUNK = 1 << 20
TIMEOUT_S = 30.0  # per socket operation, not for the whole file
ATTEMPTS = 3  # a dropped connection is resumed this many times in one call
RETRY_WAIT_S = 1.0
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what a hub repo keeps its weights in, preferred first


# ---------------------------------------------------------------- where, and whether the network may be used
def cache_dir() -> Path:
    """``$HIERALAB_CACHE``, else the platform's cache folder for hieralab."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "hieralab" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "hieralab"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hieralab"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (``HF_HUB_CACHE``, ``HF_HOME``), as the hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    """Whether ``HIERALAB_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in (ENV_OFFLINE, "HF_HUB_OFFLINE"))


def mirrored(url: str) -> str:
    """``url`` with its scheme and host replaced by ``$HIERALAB_MIRROR`` (whose own path is kept as a prefix)."""
    base = os.environ.get(ENV_MIRROR, "").strip()
    if not base:
        return url
    parts = urllib.parse.urlsplit(url)
    return base.rstrip("/") + urllib.parse.urlunsplit(("", "", parts.path, parts.query, ""))


def url_cache_path(url: str) -> Path:
    """Where a direct download of ``url`` is kept: ``<cache>/downloads/<host>/<path>`` (the original URL's, so a
    mirror fills the same cache)."""
    parts = urllib.parse.urlsplit(url)
    rel = [p for p in parts.path.split("/") if p not in ("", ".", "..")]
    if not rel:
        raise CheckpointError(f"{url} names no file")
    return cache_dir().joinpath("downloads", parts.netloc.replace(":", "_"), *rel)


_OFFLINE_HINT = "downloads are off (HIERALAB_OFFLINE / HF_HUB_OFFLINE); fetch it where there is network"


# ---------------------------------------------------------------- integrity
def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _check_cached(path: Path, name: str, expected: str) -> Path:
    """A cached download whose sha256 is the catalog's (or the one recorded at its download); a file that changed
    since is refused. A file found without a record (put there by hand) gets one."""
    record = _record_path(path)
    want = expected or (record.read_text().split()[0] if record.exists() else "")
    got = sha256_file(path)
    if not want:
        try:  # a read-only cache is used as it is
            files.write_text(record, got + "\n")
        except OSError:
            pass
        return path
    if got != want.lower():
        source = "the catalog's" if expected else "the one recorded at its download"
        raise CheckpointError(f"{path} no longer matches its sha256 (now {got[:16]}..., {source} {want[:16]}...); "
                              f"delete it and fetch it again: hieralab weights download {name}")
    return path


# ---------------------------------------------------------------- direct downloads
class _Dropped(Exception):
    """The connection ended before the whole file came: worth resuming."""


def download_url(url: str, dest: str | os.PathLike, *, name: str, sha256: str = "") -> Path:
    """``url`` (through the mirror, if any) at ``dest``: checked if already there, else downloaded once (a lock
    against other processes), resumed over dropped connections, checked, and renamed into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        return _check_cached(dest, name, sha256)
    with FileLock(str(dest.parent / f".{dest.name}.lock")):
        if dest.exists():  # another process finished it while we waited
            return _check_cached(dest, name, sha256)
        if offline():
            raise CheckpointError(f"{name} is not in the cache ({dest}) and {_OFFLINE_HINT}: "
                                  f"hieralab weights download {name}")
        part = dest.parent / f".{dest.name}.part"
        source = mirrored(url)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                _get(source, part, name)
                break
            except _Dropped as e:
                if attempt == ATTEMPTS:
                    raise CheckpointError(f"download of {name} from {source} {e} ({ATTEMPTS} tries); the part is "
                                          f"kept at {part}: run `hieralab weights download {name}` again to resume"
                                          ) from None
                log.warning("download of %s %s; resuming (try %d of %d)", name, e, attempt + 1, ATTEMPTS)
                time.sleep(RETRY_WAIT_S * attempt)
        got = sha256_file(part)
        if sha256 and got != sha256.lower():
            part.unlink(missing_ok=True)
            raise CheckpointError(f"{name} from {source} does not match its published sha256 (got {got[:16]}..., "
                                  f"expected {sha256[:16]}...); the file was changed or corrupted on the way")
        files.chmod_like_open(part)
        os.replace(part, dest)
        files.fsync_dir(dest.parent)
        if not sha256:
            files.write_text(_record_path(dest), got + "\n")
        log.info("%s: saved %s (%s, sha256 %s)", name, dest, _human(dest.stat().st_size), got[:16])
        return dest


def _looks_like_html(first: bytes, content_type: str) -> bool:
    head = first.lstrip()[:64].lower()
    return content_type == "text/html" or head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml"))


def _get(url: str, part: Path, name: str) -> None:
    """Fetch ``url`` into ``part``, resuming what is there with a ``Range`` request; :class:`_Dropped` when the
    body ends short, a one-line :class:`CheckpointError` for what retrying cannot fix."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "hieralab"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part is no prefix of the file any more: start again
            part.unlink()
            raise _Dropped("could not resume its partial file") from None
        hint = ("the file is not there (a wrong URL, or a mirror without it)" if e.code in (404, 410)
                else "the server refused or failed")
        raise CheckpointError(f"{name}: {url} answered HTTP {e.code} {e.reason}: {hint}") from None
    except urllib.error.URLError as e:
        reason = e.reason if isinstance(e.reason, str) else (e.reason.strerror or type(e.reason).__name__)
        raise CheckpointError(f"{name}: cannot reach {urllib.parse.urlsplit(url).netloc} ({reason}): no network? "
                              f"Set {ENV_MIRROR}=<a reachable copy>, or download {url} elsewhere and pass its path"
                              ) from None
    except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException) as e:
        raise _Dropped(f"failed to start ({type(e).__name__})") from None
    with resp:
        start = 0
        if have and resp.status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            start = int(m[1]) if m else -1
        if start != have:  # a full body (the server ignored the range) or an unexpected one: start over
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        log.info("downloading %s (%s) from %s%s", name, _human(total) if total else "size unknown", url,
                 f", resuming at {_human(have)}" if have else "")
        bar = _progress(total, have, name)
        try:
            with open(part, "ab" if have else "wb") as f:
                first = not have
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (http.client.IncompleteRead, ConnectionError, TimeoutError, socket.timeout) as e:
                        raise _Dropped(f"dropped mid-file ({type(e).__name__})") from None
                    if not chunk:
                        break
                    if first and _looks_like_html(chunk, resp.headers.get_content_type()):
                        f.close()
                        part.unlink(missing_ok=True)
                        raise CheckpointError(f"{name}: {url} sent an HTML page, not weights (a login, error or "
                                              "redirect page); check the URL or the mirror")
                    first = False
                    f.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        finally:
            if bar is not None:
                bar.close()
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Dropped(f"stopped at {_human(size)} of {_human(total)} (the connection dropped)")
    if size == 0:
        part.unlink(missing_ok=True)
        raise CheckpointError(f"{name}: {url} sent an empty file")


def _progress(total: int | None, initial: int, name: str):
    """A tqdm bar on a terminal; None otherwise (the log lines say what happens)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ---------------------------------------------------------------- the Hugging Face hub
def hub_file(repo: str, filename: str, *, name: str, sha256: str = "", revision: str | None = None) -> Path:
    """``filename`` of hub ``repo``, through ``huggingface_hub`` and its cache (offline: the cache only); its
    content checked against the hub's sha256 (the blob's name) and the catalog's, if any."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"{repo}/{filename}"
    kwargs: dict[str, Any] = {"cache_dir": hub_cache_dir(), "revision": revision, "local_files_only": offline()}
    if os.environ.get(ENV_MIRROR, "").strip():
        kwargs["endpoint"] = os.environ[ENV_MIRROR].strip().rstrip("/")
    try:
        path = Path(hf_hub_download(repo, filename, **kwargs))
    except LocalEntryNotFoundError:
        why = _OFFLINE_HINT if offline() else "the hub cannot be reached (no network?)"
        raise CheckpointError(f"{name}: {where} is not in the Hugging Face cache ({hub_cache_dir()}) and {why}: "
                              f"hieralab weights download {name}") from None
    except GatedRepoError:
        raise CheckpointError(f"{name}: hub repo {repo} is gated; accept its terms on the hub and log in "
                              "(hf auth login)") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{name}: no hub repo {repo} (or it is private)") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{name}: hub repo {repo} has no revision {revision}") from None
    except EntryNotFoundError:
        raise CheckpointError(f"{name}: hub repo {repo} has no file {filename}") from None
    except (HfHubHTTPError, OSError) as e:
        line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{name}: could not get {where} from the hub ({line})") from None
    return _check_blob(path, name, sha256)


def _check_blob(path: Path, name: str, expected: str) -> Path:
    """A hub file whose content still has the sha256 its blob is named by (LFS files) and the catalog's."""
    blob = path.resolve()
    named = blob.name if re.fullmatch(r"[0-9a-f]{64}", blob.name) else ""
    if named or expected:
        got = sha256_file(blob)
        for want, whose in ((named, "the hub's"), (expected.lower(), "the catalog's")):
            if want and got != want:
                raise CheckpointError(f"{path} (hub cache blob {blob}) no longer matches {whose} sha256 (now "
                                      f"{got[:16]}..., expected {want[:16]}...); delete the blob and fetch it again: "
                                      f"hieralab weights download {name}")
    return path


def _hub_cached(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir())
    return Path(found) if isinstance(found, str) else None


@dataclass(frozen=True)
class HubRepo:
    """A hub repo holding one model: its layout (``hieralab``, ``timm``, ``transformers``), the local snapshot folder,
    its ``config.json`` and the local weights file."""

    spec: str
    kind: str
    folder: Path
    config: dict[str, Any]
    weights: Path


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """``"hf-hub:ORG/REPO[@REVISION]"`` -> ``("ORG/REPO", REVISION)``."""
    body = spec.removeprefix(HUB_PREFIX)
    repo, _, revision = body.partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise CheckpointError(f"{spec!r} is not a hub name: write hf-hub:ORG/REPO (optionally @REVISION)")
    return repo, revision or None


def hub_repo(spec: str) -> HubRepo:
    """Fetch (or find in the cache) a hub repo's ``config.json`` and weights, and say whose layout they are in."""
    repo, revision = parse_hub_spec(spec)
    config_path = hub_file(repo, "config.json", name=spec, revision=revision)
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{spec}: its config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{spec}: its config.json is not a mapping")
    if isinstance(config.get("config"), dict) and "model_name" in config:
        kind = "hieralab"
    elif "architecture" in config:
        kind = "timm"
    elif config.get("model_type") == "hiera":
        kind = "transformers"
    else:
        raise CheckpointError(f"{spec} is neither a hieralab save_pretrained repo, nor timm's, nor a transformers "
                              f"Hiera (its config.json has model_type {config.get('model_type')!r})")
    candidates = WEIGHT_FILES[:1] if kind == "hieralab" else WEIGHT_FILES
    for i, filename in enumerate(candidates):
        try:
            weights = hub_file(repo, filename, name=spec, revision=revision)
            break
        except CheckpointError as e:
            if i == len(candidates) - 1 or "has no file" not in str(e):
                raise
    return HubRepo(spec, kind, config_path.parent, config, weights)


def transformers_arguments(config: dict[str, Any]) -> dict[str, Any]:
    """The Hiera constructor arguments of a transformers ``HieraConfig`` (images only), and ``num_classes``: the
    label count of a ``HieraForImageClassification``, 0 for a ``HieraModel``."""
    architectures = config.get("architectures") or []
    if "HieraForPreTraining" in architectures:
        raise CheckpointError("transformers' HieraForPreTraining (MAE) layout is not read by hieralab; take the "
                              "official MAE checkpoint instead (e.g. mae_hiera_base_224.mae_in1k)")
    try:
        return {"embed_dim": int(config["embed_dim"]), "num_heads": int(config["num_heads"][0]),
                "stages": tuple(config["depths"]), "input_size": tuple(config.get("image_size", (224, 224))),
                "q_pool": int(config.get("num_query_pool", 3)),
                "num_classes": len(config.get("id2label") or {}) if "HieraForImageClassification" in architectures
                else 0}
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CheckpointError(f"a transformers Hiera config without a usable {e} field") from None


# ---------------------------------------------------------------- catalog names
def fetch(entry: Weights) -> Path:
    """The local file of a catalog entry, downloaded (once) when missing."""
    if entry.hub:
        return hub_file(entry.hub, entry.filename, name=entry.name, sha256=entry.sha256)
    return download_url(entry.url, url_cache_path(entry.url), name=entry.name, sha256=entry.sha256)


def cached(entry: Weights) -> Path | None:
    """The entry's file if it is in a cache already (no network, no check)."""
    if entry.hub:
        return _hub_cached(entry.hub, entry.filename)
    path = url_cache_path(entry.url)
    return path if path.exists() else None


def resolve(spec: str) -> Path | None:
    """The local weights a name stands for, fetched if needed: a catalog name (``model.tag``, or a model's name for
    its default tag) -> its file; ``hf-hub:ORG/REPO`` -> the ``save_pretrained`` folder of a hieralab repo, the
    weights file of a timm or transformers one. ``None`` when ``spec`` is neither (an existing path, a model without
    catalog weights, anything with a slash); an unknown tag of a catalogued model is a one-line error."""
    spec = str(spec)
    if spec.startswith(HUB_PREFIX):
        repo = hub_repo(spec)
        return repo.folder if repo.kind == "hieralab" else repo.weights
    if "/" in spec or os.sep in spec or Path(spec).expanduser().exists():
        return None
    try:
        entry = find(spec)
    except CheckpointError as e:  # "hiera_base_224.pth": a file that is not there, or a tag that does not exist
        raise CheckpointError(f"{e}; nor is there a file {spec!r}") from None
    return None if entry is None else fetch(entry)
