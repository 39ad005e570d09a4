"""WebDataset tar shards: written by ``hieralab shards``, read as a data source (``data.source`` a shard pattern,
``path/shard-{000000..000099}.tar``).

A shard holds samples as tar members named ``<key>.<ext>``: the image file's own bytes (``.jpg``, ``.png``, ...) or
the clip's (``.mp4``, ...), and ``<key>.cls`` (the class index). ``shards.json`` beside them lists each shard's
sample count and the class names; shards without it (written by other tools) are counted once by reading their
tar headers.

Training streams them (:class:`ShardStream`): each epoch the shard order is shuffled (seeded by the run's seed
and the epoch), shards are dealt to every (process, loader worker) reader, each reader passes its samples through
a shuffle buffer (seeded by seed, epoch and reader) and decodes only what it trains on. Every sample keeps its own
seeded draws, keyed by its global index in the shard set (crop, flip, clip start, mask: as for a folder), and each
reader makes a fixed number of batches per epoch (its shards read again from the start when they run short), so
every process steps the same number of times. A resume inside an epoch replays the readers' streams up to the
step it stopped at (reading, not decoding, the samples it skips): the run continues exactly as the uninterrupted
one, provided ``data.num_workers`` and the number of processes are the ones the run started with (a change of
either deals the shards differently; the resumed run then sees the rest of that epoch in another order).

The shard set is also an indexed dataset (:class:`ShardSet`, for validation, reconstructions and the first-sample
check): a sample is read by seeking to its members, found from the shard's tar headers.
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
import logging
import os
import random
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from braceexpand import braceexpand
from torchvision.datasets.folder import IMG_EXTENSIONS

from .. import files, seeds
from ..errors import DataError
from .images import Unreadable, to_8bit
from .video import VIDEO_EXTENSIONS, VideoClips

log = logging.getLogger(__name__)
INDEX = "shards.json"
IMAGE_EXTS = tuple(e.lstrip(".") for e in IMG_EXTENSIONS)  # member extensions: the files a folder source reads
CLIP_EXTS = tuple(e.lstrip(".") for e in VIDEO_EXTENSIONS)
_PATTERN = re.compile(r"\.tar(\.gz)?$|\{\d+\.\.\d+\}")


def is_shard_source(source: str) -> bool:
    """Whether ``data.source`` names tar shards (a ``.tar`` file, or a brace pattern of them; also one tar file
    named without the extension, which would otherwise be taken for a missing image folder)."""
    if _PATTERN.search(str(source)):
        return True
    path = Path(str(source)).expanduser()
    return path.suffix == "" and path.is_file() and tarfile.is_tarfile(path)


class Member(bytes):
    """A clip's bytes from a shard, with the name it is reported under (``shard.tar:key``)."""

    name: str

    def __new__(cls, data: bytes, name: str) -> Member:
        self = super().__new__(cls, data)
        self.name = name
        return self

    def __str__(self) -> str:
        return self.name


# ---------------------------------------------------------------- reading
def _members(path: Path, odd: list[str] | None = None) -> dict[str, dict[str, tuple[int, int]]]:
    """``{key: {ext: (offset, size)}}`` of a tar shard, in file order, from its headers; the names of files without
    an extension (which no sample can use) are added to ``odd``."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            if "." not in Path(info.name).name:
                if odd is not None:
                    odd.append(info.name)
                continue
            key, ext = _split_key(info.name)
            out.setdefault(key, {})[ext.lower()] = (info.offset_data, info.size)
    return out


def _split_key(name: str) -> tuple[str, str]:
    """A member's sample key and extension as WebDataset splits them: ``dir/a.b.c`` -> ``("dir/a", "b.c")``."""
    folder, slash, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return folder + slash + stem, ext


class ShardSet(torch.utils.data.Dataset):
    """The samples of a shard pattern: ``len``, ``classes``, ``kind`` (``"images"`` or ``"clips"``), each shard's
    count, and ``(image | clip bytes | Unreadable, label)`` by global index (a seek into the shard)."""

    def __init__(self, pattern: str):
        self.pattern = str(pattern)
        self.urls = [Path(u).expanduser() for u in braceexpand(self.pattern)]
        if any(u.name.endswith(".gz") for u in self.urls):
            raise DataError(f"data.source {pattern}: compressed shards (.tar.gz) cannot be read by seeking; their "
                            "JPEG / PNG / MP4 members compress little anyway: write plain .tar (hieralab shards)")
        missing = [u for u in self.urls if not u.is_file()]
        if missing:
            raise DataError(f"data.source {pattern}: {len(missing)} of {len(self.urls)} shards do not exist (e.g. "
                            f"{missing[0]}); check the pattern (e.g. out/shard-{{000000..000009}}.tar)")
        index = self._read_index()
        self.counts, self.kind, labels = [], index.get("kind"), index.get("classes")
        listed = {s["name"]: s["samples"] for s in index.get("shards", [])}
        self._tables: dict[int, list[tuple[str, dict[str, tuple[int, int]]]]] = {}
        for k, url in enumerate(self.urls):
            if url.name in listed:
                self.counts.append(int(listed[url.name]))
            else:  # no index: count it from its headers (once)
                self.counts.append(len(self._table(k)))
        self.starts = [0, *itertools.accumulate(self.counts)][:-1]  # global index of each shard's first sample
        if not sum(self.counts):
            raise DataError(f"data.source {pattern}: the shards hold no samples")
        if self.kind is None:
            exts = {e for _, m in self._table(0)[:8] for e in m}
            self.kind = "clips" if exts & set(CLIP_EXTS) else "images"
        self.classes = list(labels) if labels else self._classes_from_labels()

    def _read_index(self) -> dict[str, Any]:
        path = self.urls[0].parent / INDEX
        if not path.exists():
            log.info("%s: no %s beside the shards; counting their samples from the tar headers", self.pattern, INDEX)
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path} is unreadable ({e}); delete it (the shards are then counted) or rewrite the "
                            "shards with hieralab shards") from None

    def _table(self, k: int) -> list[tuple[str, dict[str, tuple[int, int]]]]:
        if k not in self._tables:
            odd: list[str] = []
            try:
                self._tables[k] = list(_members(self.urls[k], odd).items())
            except (tarfile.TarError, OSError) as e:
                raise DataError(f"{self.urls[k]} is not a readable tar shard ({e})") from None
            if odd:  # WebDataset names a sample's parts <key>.<ext>: a file without one belongs to no sample
                log.warning("%s: %d files without an extension skipped (%s); a shard member is <key>.<ext>, e.g. "
                            "000001.jpg and 000001.cls", self.urls[k], len(odd), ", ".join(odd[:3]))
        return self._tables[k]

    def _classes_from_labels(self) -> list[str]:
        labels = self.labels()
        return [str(i) for i in range(max(labels) + 1)] if labels and max(labels) >= 0 else []

    def __len__(self) -> int:
        return sum(self.counts)

    def locate(self, i: int) -> tuple[int, int]:
        """``(shard, position in it)`` of global index ``i``."""
        k = bisect.bisect_right(self.starts, i) - 1  # the last shard starting at or before i (empty ones skipped)
        return k, i - self.starts[k]

    def _read(self, k: int, spans: list[tuple[int, int]]) -> list[bytes]:
        """The bytes at ``spans`` (offset, size) of shard ``k``, in one opening of its file."""
        with open(self.urls[k], "rb") as f:
            out = []
            for offset, size in spans:
                f.seek(offset)
                out.append(f.read(size))
            return out

    def labels(self) -> list[int]:
        """Every sample's label, read from the ``.cls`` members (-1 where there is none)."""
        out = []
        for k in range(len(self.urls)):
            table = self._table(k)
            labels = iter(self._read(k, [m["cls"] for _, m in table if "cls" in m]))
            out += [int(next(labels).decode().strip()) if "cls" in m else -1 for _, m in table]
        return out

    def __getitem__(self, i: int) -> tuple[Any, int]:
        k, j = self.locate(i)
        key, members = self._table(k)[j]
        sample = dict(zip(members, self._read(k, list(members.values()))))
        return decode(sample, f"{self.urls[k].name}:{key}", self.kind)


def decode(sample: dict[str, bytes], name: str, kind: str) -> tuple[Any, int]:
    """``(PIL image | clip bytes | Unreadable, label)`` of one shard sample (its members by extension)."""
    label = int(sample["cls"].decode().strip()) if "cls" in sample else -1
    exts = CLIP_EXTS if kind == "clips" else IMAGE_EXTS
    ext = next((e for e in exts if e in sample), None)
    if ext is None:
        return Unreadable(name, f"no .{' / .'.join(exts[:3])} member"), label
    if kind == "clips":
        return Member(sample[ext], name), label
    try:
        from PIL import Image

        with Image.open(io.BytesIO(sample[ext])) as img:
            img.load()
            return to_8bit(img, name), label
    except Exception as e:  # a corrupt member: skipped, counted and named like a corrupt file
        return Unreadable.of(name, e), label


# ---------------------------------------------------------------- streaming for training
class ShardStream(torch.utils.data.IterableDataset):
    """One epoch of training batches from a :class:`ShardSet` for one process (see the module docstring).

    ``sample(item, epoch, index)`` turns a decoded ``(image, label)`` into a training sample with the draws of
    global index ``index`` (``SeededSamples.sample``); ``collate`` batches them. Batches ``start..stop`` of this
    process's epoch are made; loader worker ``w`` makes those ``t`` with ``(t - start) % workers == w``, so the
    DataLoader's round-robin over workers returns them in order.
    """

    def __init__(self, shards: ShardSet, sample: Callable[[tuple[Any, int], int, int], Any],
                 collate: Callable[[list[Any]], dict[str, Any]], *, seed: int, epoch: int, rank: int, world: int,
                 workers: int, batch_size: int, start: int, stop: int, buffer: int):
        super().__init__()
        self.shards, self.sample, self.collate = shards, sample, collate
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world
        self.workers, self.batch_size, self.start, self.stop, self.buffer = workers, batch_size, start, stop, buffer
        readers = world * workers
        if len(shards.urls) < readers:
            raise DataError(f"{len(shards.urls)} shards for {world} processes x {workers} loader workers: every "
                            f"reader needs a shard; write more, smaller shards (hieralab shards --shard-size) or "
                            f"lower data.num_workers")

    def reader_shards(self, role: int) -> list[int]:
        order = torch.randperm(len(self.shards.urls), generator=seeds.generator(self.seed, "shards", self.epoch))
        return order[self.rank * self.workers + role:: self.world * self.workers].tolist()

    def _pass(self, role: int) -> Iterator[tuple[dict[str, bytes], int, str]]:
        """``(members, global index, name)`` of one read of this reader's shards, in order."""
        import webdataset as wds

        for k in self.reader_shards(role):
            url, first = self.shards.urls[k], self.shards.starts[k]
            for j, s in enumerate(wds.tarfile_samples([{"url": str(url)}])):
                members = {key: v for key, v in s.items() if not key.startswith("__")}
                yield members, first + j, f"{url.name}:{s['__key__']}"

    def _shuffled(self, role: int) -> Iterator[tuple[dict[str, bytes], int, str]]:
        """Passes over this reader's shards, each through the shuffle buffer (emptied at the end of a pass, so a
        sample comes again only once all have come); further passes only when the quota needs them."""
        import webdataset as wds

        for n in itertools.count():
            rng = random.Random(seeds.seed_int(self.seed, "shuffle_buffer", self.epoch, self.rank, role, n))
            empty = True
            for item in wds.filters.shuffle(self.buffer, min(self.buffer, 100), rng=rng)(self._pass(role)):
                empty = False
                yield item
            if empty:
                raise DataError(f"the shards of reader {role} hold no samples")

    def _batches(self, role: int) -> Iterator[dict[str, Any]]:
        stream = self._shuffled(role)
        mine = [t for t in range(self.stop) if t % self.workers == role]  # this reader's batches of the epoch
        for t in mine:
            group = [next(stream) for _ in range(self.batch_size)]
            if t < self.start:  # made before the resume: read past, not decoded
                continue
            yield self.collate([self.sample(decode(m, name, self.shards.kind), self.epoch, i)
                                for m, i, name in group])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        w = info.id if info is not None else 0
        role = (w + self.start) % self.workers  # after a resume at batch `start`, worker 0 makes batch `start`
        return self._batches(role)

    def __len__(self) -> int:
        return self.stop - self.start


# ---------------------------------------------------------------- writing
def write_shards(items: Sequence[tuple[Callable[[], tuple[bytes, str]], int]], out: Path, *, shard_size: int,
                 classes: Sequence[str], kind: str, source: str, progress: Callable[[int], None] | None = None) -> dict:
    """Write ``items`` (``(read() -> (bytes, ext), label)``) as ``out/shard-NNNNNN.tar`` of ``shard_size`` samples
    each, plus ``shards.json``; each shard is written under a temporary name and renamed when complete."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    count = (len(items) + shard_size - 1) // shard_size
    digits = max(6, len(str(count - 1)))
    listed = []
    for k in range(count):
        name = f"shard-{k:0{digits}d}.tar"
        tmp = out / f".{name}.tmp"
        chunk = items[k * shard_size:(k + 1) * shard_size]
        try:
            with open(tmp, "wb") as f, wds.TarWriter(f, encoder=False) as sink:
                for j, (read, label) in enumerate(chunk):
                    data, ext = read()
                    sink.write({"__key__": f"{k * shard_size + j:09d}", ext: data, "cls": str(label).encode()})
                    if progress:
                        progress(1)
            files.chmod_like_open(tmp)
            os.replace(tmp, out / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        listed.append({"name": name, "samples": len(chunk)})
    index = {"format": "hieralab-shards/1", "kind": kind, "classes": list(classes), "source": source,
             "samples": len(items), "shards": listed,
             "pattern": str(out / f"shard-{{{0:0{digits}d}..{count - 1:0{digits}d}}}.tar")}
    files.write_json(out / INDEX, index)
    return index


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path`` (which may not exist yet) is ``folder`` or inside it, links resolved."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _kinds(folder: Path) -> tuple[int, int]:
    """``(images, clips)``: how many files of each a folder holds at any depth (hidden ones aside)."""
    images = clips = 0
    for p in folder.rglob("*"):
        if p.name.startswith(".") or not p.is_file():
            continue
        images += p.suffix.lower() in IMG_EXTENSIONS
        clips += p.suffix.lower() in VIDEO_EXTENSIONS
    return images, clips


def _listed_clips(listing: Path, items: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
    """The clips a ``.csv`` / ``.json`` list names, checked before anything is written: a file without a clip
    extension is refused (a shard member is named by its extension, and read back by it); missing files are
    skipped, counted and the first few named."""
    odd = [p for p, _ in items if p.suffix.lower() not in VIDEO_EXTENSIONS]
    if odd:
        raise DataError(f"{listing} names {len(odd)} files without a clip extension ({', '.join(VIDEO_EXTENSIONS)}),"
                        f" e.g. {odd[0]}: a shard member is named and read back by its file's extension; rename "
                        f"those files (e.g. {odd[0].name}.mp4) and list them under their new names")
    missing = [p for p, _ in items if not p.is_file()]
    if missing:
        if len(missing) == len(items):
            raise DataError(f"none of the {len(items)} clips {listing} names exists (e.g. {missing[0]}); relative "
                            f"paths are read from {listing.parent}")
        log.warning("%s: %d listed clips do not exist and are skipped (%s)", listing, len(missing),
                    ", ".join(str(p) for p in missing[:3]))
    return [(p, label) for p, label in items if p.is_file()]


def shard_source(source: str, out: str | os.PathLike, *, shard_size: int = 1000) -> dict:
    """Write ``source`` as shards in ``out``: ``"fashion-mnist"`` (PNG-encoded, the training split), an image
    folder (each file's own bytes, its class subfolder's index as label) or a folder / ``.csv`` / ``.json`` list of
    clips. ``out`` must be new or empty: nothing is overwritten. Returns the ``shards.json`` index."""
    from ..progress import bar as tqdm

    target = Path(out).expanduser()
    src = Path(source).expanduser()
    if source != "fashion-mnist" and src.is_dir() and _within(target, src):
        raise DataError(f"the shard folder {target} is inside the source {src}: the shards would be written into "
                        f"the data they are made of; give a folder outside {src}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        names = [p.name for p in target.iterdir()] if target.is_dir() else []
        if any(re.fullmatch(r"\.shard-\d+\.tar\.tmp", n) for n in names) and "shards.json" not in names:
            raise DataError(f"{target} holds the shards of a write that did not finish (no shards.json); remove the "
                            "folder and run again, or give a new one")
        raise DataError(f"{target} exists and is not empty; give a new folder for the shards (nothing is "
                        "overwritten)")
    if shard_size < 1:
        raise DataError(f"--shard-size {shard_size}: must be at least 1")

    def file_item(path: Path) -> Callable[[], tuple[bytes, str]]:
        return lambda: (path.read_bytes(), path.suffix.lower().lstrip("."))

    if source == "fashion-mnist":
        from . import fashion_mnist

        ds = fashion_mnist.FashionMNIST("train")

        def png(i: int) -> Callable[[], tuple[bytes, str]]:
            def read() -> tuple[bytes, str]:
                buf = io.BytesIO()
                ds[i][0].save(buf, format="PNG")
                return buf.getvalue(), "png"
            return read
        items, classes, kind = [(png(i), int(ds.targets[i])) for i in range(len(ds))], list(ds.classes), "images"
    elif not src.exists():
        raise DataError(f"shard source {src} does not exist; give an image folder, a folder / list of clips or "
                        "fashion-mnist")
    elif src.is_file() and src.suffix.lower() in (".csv", ".json"):
        clips = VideoClips(src)
        listed = _listed_clips(src, [(Path(p), label) for p, label in clips.items])
        items, classes, kind = [(file_item(p), label) for p, label in listed], clips.classes, "clips"
    elif src.is_dir() and _kinds(src)[1]:
        n_images, n_clips = _kinds(src)  # read again only for a folder that holds clips
        if n_images:
            raise DataError(f"{src} holds {n_images} images and {n_clips} clips; a shard set holds one kind: move "
                            f"the images (or the clips) into a folder of their own and write each as its own shards")
        clips = VideoClips(src)
        items, classes, kind = [(file_item(Path(p)), label) for p, label in clips.items], clips.classes, "clips"
    else:
        from .images import ImageFiles

        images = ImageFiles(src)
        items, classes, kind = [(file_item(p), label) for p, label in images.samples], images.classes, "images"
    with tqdm(total=len(items), desc="shards", unit=kind[:-1]) as bar:
        return write_shards(items, target, shard_size=shard_size, classes=classes, kind=kind, source=str(source),
                            progress=bar.update)
