"""AVA-format spatio-temporal action data: keyframes with their people and actions, and the clips around them.

AVA (Gu et al. 2018) labels one keyframe a second: each person's box at that instant and the actions they do there,
several at once (multi-label). Files (see :mod:`hieralab.metrics.ava`, where the readers live so that the metric and
the data read them the same way): annotation CSVs ``video_id, timestamp, x1, y1, x2, y2, action_id, person_id``
(boxes normalised to [0, 1], one row per person and action), person-box / detection CSVs with a score last,
excluded-timestamps CSVs, and ``.pbtxt`` label maps. Bad rows are skipped, counted by reason and the first few
named (:class:`~hieralab.metrics.ava.Skipped`), never a traceback.

A clip is ``num_frames`` frames ``stride`` apart centred on the keyframe's frame (SlowFast's AVA sampling: frame
``centre + stride * (i - num_frames // 2)``), the indices before the first frame or past the last taken as the
edge frame (padding by repetition). Which frame a timestamp is comes from a :class:`FrameRule`: AVA's frame folders
are 30 fps and start at second 900 (``AVA_FRAMES``: second ``s`` is frame ``(s - 900) * 30``); other data count
plain seconds into the video (``SECONDS``, at the video's own frame rate). Frames come from AVA-layout folders
(:class:`FrameFolders`, ``{video_id}/{video_id}_{n:06d}.jpg`` numbered from 1) or from video files decoded around the
keyframe (:class:`VideoFiles`, with :mod:`hieralab.data.video`'s decoders). Keyframes whose video is missing or
unreadable, or whose timestamp lies before the start or past the end of it, are skipped, counted and named when the
dataset is built; a clip that fails to decode later comes back as :class:`~hieralab.data.images.Unreadable`.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from PIL import Image

from ..metrics.ava import (AvaCsv, Key, Row, Skipped, format_rows, format_timestamp, read_csv, read_excluded,
                           read_label_map, timestamp_key, write_label_map)
from .images import Unreadable
from .video import VIDEO_EXTENSIONS, decode_frames, video_frame_count

log = logging.getLogger(__name__)
__all__ = ["AVA_FRAMES", "SECONDS", "AvaClips", "AvaCsv", "FrameFolders", "FrameRule", "Key", "Keyframe", "Person",
           "Row", "Skipped", "VideoFiles", "clip_frame_indices", "format_rows", "format_timestamp", "group_keyframes",
           "multi_hot", "read_annotations", "read_csv", "read_excluded", "read_label_map", "read_person_boxes",
           "timestamp_key", "video_fps", "write_label_map"]

Box = tuple[float, float, float, float]  # x1, y1, x2, y2, normalised to [0, 1]


class Person(NamedTuple):
    """One person at a keyframe: the box and every action they do there (ids in increasing order)."""

    box: Box
    actions: tuple[int, ...]
    person_id: int = -1


class Keyframe(NamedTuple):
    video_id: str
    timestamp: float
    persons: tuple[Person, ...]

    @property
    def key(self) -> Key:
        return (self.video_id, self.timestamp)


def group_keyframes(rows: Iterable[Row]) -> list[Keyframe]:
    """Rows (one per person and action) as keyframes of people with multi-label actions, in order of first
    appearance. A person is their person id, or their box where the file has no ids; repeated actions count once."""
    frames: dict[Key, dict[Any, tuple[Box, set[int], int]]] = {}
    for r in rows:
        people = frames.setdefault(r.key, {})
        who = ("id", int(r.value)) if r.value >= 0 else ("box", r.box)
        _, actions, _ = people.setdefault(who, (r.box, set(), int(r.value) if r.value >= 0 else -1))
        actions.add(r.action_id)
    return [Keyframe(v, t, tuple(Person(box, tuple(sorted(a)), pid) for box, a, pid in people.values()))
            for (v, t), people in frames.items()]


def read_annotations(path: str | os.PathLike, labels: Collection[int] | None = None, *,
                     excluded: Collection[Key] = ()) -> tuple[list[Keyframe], Skipped]:
    """The keyframes of an annotation CSV with at least one person, and what was skipped: bad rows, actions not in
    ``labels`` (a label map or its ids), and ``excluded`` keyframes (counted once each)."""
    table = read_csv(path, kind="annotations", class_ids=labels)
    skipped = table.skipped
    excluded = set(excluded)
    for key in dict.fromkeys(r.key for r in table.rows if r.key in excluded):
        skipped.add("excluded keyframes", f"{key[0]},{format_timestamp(key[1])}")
    return group_keyframes(r for r in table.rows if r.key not in excluded), skipped


def read_person_boxes(path: str | os.PathLike) -> tuple[dict[Key, list[tuple[Box, float]]], Skipped]:
    """``{keyframe: [(box, score), ...]}`` of a person-box CSV (a detector's people, the action column empty or an
    action id, the score last), each keyframe's boxes in descending score, and what was skipped."""
    table = read_csv(path, kind="boxes")
    boxes: dict[Key, list[tuple[Box, float]]] = {}
    for r in table.rows:
        if (r.box, r.value) not in boxes.setdefault(r.key, []):  # a detections file repeats a box per action
            boxes[r.key].append((r.box, r.value))
    return {k: sorted(v, key=lambda b: -b[1]) for k, v in boxes.items()}, table.skipped


def multi_hot(actions: Sequence[Sequence[int]], class_ids: Sequence[int]) -> torch.Tensor:
    """``float [N, C]`` targets: 1 where person ``n`` does action ``class_ids[c]`` (ids outside ``class_ids`` are
    ignored)."""
    column = {c: k for k, c in enumerate(class_ids)}
    out = torch.zeros(len(actions), len(class_ids))
    for n, acts in enumerate(actions):
        for a in acts:
            if a in column:
                out[n, column[a]] = 1.0
    return out


@dataclass(frozen=True)
class FrameRule:
    """The 0-based frame of a keyframe: ``round((timestamp - offset) * fps)``; ``fps=None`` takes the video's own
    frame rate."""

    fps: float | None = 30.0
    offset: float = 900.0

    def frame(self, timestamp: float, fps: float | None = None) -> int:
        rate = self.fps or fps
        if not rate:
            raise ValueError("FrameRule(fps=None) needs the video's frame rate")
        return int(round((float(timestamp) - self.offset) * rate))


AVA_FRAMES = FrameRule(fps=30.0, offset=900.0)  # AVA's frame folders: 30 fps from second 900 (15 min) on
SECONDS = FrameRule(fps=None, offset=0.0)  # plain seconds into the video, at its own rate


def clip_frame_indices(center: int, num_frames: int, stride: int, total: int) -> list[int]:
    """Frames ``center + stride * (i - num_frames // 2)`` for ``i < num_frames``, those before frame 0 or past
    ``total - 1`` taken as the edge frame (the keyframe is at position ``num_frames // 2``)."""
    if total < 1:
        raise ValueError("a clip needs a video with at least one frame")
    return [min(max(center + stride * (i - num_frames // 2), 0), total - 1) for i in range(num_frames)]


class FrameSource(Protocol):
    def frames(self, video_id: str) -> int: ...  # 0: missing; raises when unreadable
    def fps(self, video_id: str) -> float | None: ...
    def where(self, video_id: str) -> str: ...
    def read(self, video_id: str, indices: Sequence[int]) -> torch.Tensor: ...  # uint8 [T, H, W, 3]


class FrameFolders:
    """AVA's frame folders: ``root/{video_id}/{video_id}_{n:06d}.jpg`` with ``n`` = frame index + ``first``. A
    video has as many frames as its folder holds files of that pattern."""

    def __init__(self, root: str | os.PathLike, *, first: int = 1, suffix: str = ".jpg"):
        self.root, self.first, self.suffix = Path(root).expanduser(), first, suffix
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such frame folder (AVA layout: {{video_id}}/{{video_id}}_"
                                    f"000001{suffix})")

    def where(self, video_id: str) -> str:
        return str(self.root / video_id)

    def frames(self, video_id: str) -> int:
        folder = self.root / video_id
        return sum(1 for _ in folder.glob(f"{glob.escape(video_id)}_*{self.suffix}")) if folder.is_dir() else 0

    def fps(self, video_id: str) -> float | None:
        return None

    def path(self, video_id: str, index: int) -> Path:
        return self.root / video_id / f"{video_id}_{index + self.first:06d}{self.suffix}"

    def read(self, video_id: str, indices: Sequence[int]) -> torch.Tensor:
        loaded: dict[int, torch.Tensor] = {}
        for i in dict.fromkeys(indices):
            with Image.open(self.path(video_id, i)) as img:
                loaded[i] = torch.from_numpy(np.asarray(img.convert("RGB")).copy())
        return torch.stack([loaded[i] for i in indices])  # [T, H, W, 3]


class VideoFiles:
    """Videos ``root/{video_id}.<ext>`` (any of :data:`~hieralab.data.video.VIDEO_EXTENSIONS`), decoded around the
    keyframe with ``decoder`` (``"auto"``, ``"torchcodec"``, ``"pyav"``)."""

    def __init__(self, root: str | os.PathLike, *, decoder: str = "auto"):
        self.root, self.decoder = Path(root).expanduser(), decoder
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such video folder")
        self._paths = {p.stem: p for p in sorted(self.root.iterdir())
                       if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()}

    def where(self, video_id: str) -> str:
        return str(self._paths.get(video_id, self.root / f"{video_id}.mp4"))

    def frames(self, video_id: str) -> int:
        path = self._paths.get(video_id)
        return 0 if path is None else video_frame_count(path, self.decoder)

    def fps(self, video_id: str) -> float | None:
        path = self._paths.get(video_id)
        return None if path is None else video_fps(path)

    def read(self, video_id: str, indices: Sequence[int]) -> torch.Tensor:
        return decode_frames(self._paths[video_id], indices, self.decoder)  # [T, H, W, 3]


def video_fps(path: str | os.PathLike) -> float:
    """The average frame rate of a video's first stream (PyAV; :mod:`hieralab.data.video` has no such helper)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise ValueError(f"{path}: the video does not say its frame rate")
        return float(rate)


class AvaClips(torch.utils.data.Dataset):
    """One item per usable keyframe: ``{"clip": uint8 [T, H, W, 3], "boxes": float [N, 4] (x1, y1, x2, y2 in
    [0, 1]), "actions": [tuple of ids per person], "person_ids": [N], "key": (video_id, timestamp), "frame": the
    keyframe's index}``, and with ``proposals`` (``{key: [(box, score), ...]}``, e.g. :func:`read_person_boxes`)
    ``"proposals": float [P, 5]`` (box, score); a clip that cannot be read is :class:`Unreadable`.

    Keyframes whose video is missing or unreadable, or whose frame lies before its first or past its last frame, are
    left out when the dataset is built: counted and named in :attr:`skipped`."""

    def __init__(self, keyframes: Iterable[Keyframe], source: FrameFolders | VideoFiles, *, num_frames: int = 16,
                 stride: int = 1, rule: FrameRule = AVA_FRAMES,
                 proposals: Mapping[Key, Sequence[tuple[Box, float]]] | None = None):
        if num_frames < 1 or stride < 1:
            raise ValueError(f"num_frames={num_frames}, stride={stride}: both must be at least 1")
        if rule.fps is None and isinstance(source, FrameFolders):
            raise ValueError("frame folders do not say their frame rate: give the FrameRule an fps (AVA's: 30)")
        self.source, self.num_frames, self.stride, self.rule = source, num_frames, stride, rule
        self.proposals = proposals
        self.skipped = Skipped()
        self.items: list[tuple[Keyframe, int, int]] = []  # (keyframe, its frame, the video's frame count)
        videos: dict[str, tuple[int, float | None] | Unreadable] = {}  # each video opened once
        for kf in keyframes:
            where = f"{kf.video_id},{format_timestamp(kf.timestamp)}"
            if kf.video_id not in videos:
                try:
                    total = source.frames(kf.video_id)
                    videos[kf.video_id] = (total, source.fps(kf.video_id) if rule.fps is None and total else None)
                except Exception as e:  # an unreadable video
                    videos[kf.video_id] = Unreadable.of(source.where(kf.video_id), e)
            video = videos[kf.video_id]
            if isinstance(video, Unreadable):
                self.skipped.add("keyframes of unreadable videos", f"{video.path} ({video.reason})")
                continue
            total, fps = video
            center = rule.frame(kf.timestamp, fps) if total else -1
            if total == 0:
                self.skipped.add("keyframes of missing videos", source.where(kf.video_id))
            elif center < 0:
                self.skipped.add("keyframes before their video's start", where)
            elif center >= total:
                self.skipped.add("keyframes past their video's end", f"{where} (frame {center} of {total})")
            else:
                self.items.append((kf, center, total))
        if self.skipped:
            log.warning("AVA clips: skipped %s", self.skipped.summary())

    def __len__(self) -> int:
        return len(self.items)

    def indices(self, i: int) -> list[int]:
        """The frame indices of item ``i``'s clip."""
        _, center, total = self.items[i]
        return clip_frame_indices(center, self.num_frames, self.stride, total)

    def __getitem__(self, i: int) -> dict[str, Any] | Unreadable:
        kf, center, _ = self.items[i]
        try:
            clip = self.source.read(kf.video_id, self.indices(i))  # [T, H, W, 3]
        except Exception as e:  # a frame file missing or corrupt, a video that stops decoding
            return Unreadable.of(self.source.where(kf.video_id), e)
        item = {"clip": clip, "key": kf.key, "frame": center,
                "boxes": torch.tensor([p.box for p in kf.persons], dtype=torch.float32).reshape(-1, 4),  # [N, 4]
                "actions": [p.actions for p in kf.persons], "person_ids": [p.person_id for p in kf.persons]}
        if self.proposals is not None:
            found = self.proposals.get(kf.key, [])
            item["proposals"] = torch.tensor([(*b, s) for b, s in found], dtype=torch.float32).reshape(-1, 5)
        return item
