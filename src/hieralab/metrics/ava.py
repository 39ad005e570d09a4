"""AVA frame-level action detection: the file formats and the metric (frame AP at IoU 0.5), as pure functions.

The metric follows the ActivityNet AVA evaluation (``Evaluation/get_ava_performance.py`` with the TF Object Detection
API's ``per_image_evaluation`` / ``object_detection_evaluation`` / ``metrics`` it ships, as of 2019, the version with
an excluded-timestamps file that SlowFast, MViT and Hiera report with), step by step:

1. Rows whose action id is not in the label map are left out (the official "class whitelist"); ground truth and
   detections of excluded keyframes are left out.
2. Each keyframe keeps at most ``top_k`` detections (the official script keeps 50: :data:`OFFICIAL_TOP_K`), the
   highest scores, over all classes together; a score that only ties the lowest kept one does not replace it. The
   kept ones are put in descending score order, ties in the order the official heap leaves them (reproduced here
   with the same ``heapq`` calls on the same tuples).
3. Per keyframe and class, detections in that order are matched greedily (Pascal VOC): each takes the ground-truth
   box of its class it overlaps most (the first of equal overlaps); it is a true positive when that IoU is at least
   0.5 and the box is not taken yet, else a false positive. So duplicate detections of one box are one true positive
   and false positives, and detections on a keyframe without ground truth are all false positives.
4. Per class, the detections of all keyframes (keyframes in order of first appearance among the detections) are
   ranked by score: the official ``np.argsort(scores)[::-1]``, with the sort made stable, so among equal scores the
   later detection ranks first. (The official call uses NumPy's default sort, which is not stable: with ties its AP
   depends on the NumPy build and CPU, e.g. its vectorised x86 sorts. With the stable sort put into the official
   code, this module gives the official numbers to 1e-9 on 600 random cases with ties, caps and exclusions.)
5. AP is the area under the precision / recall curve with precision made non-increasing (VOC all-point
   interpolation). A class with ground truth but no detection has AP 0.
6. A class of the label map with no ground-truth box has no AP: the official code gives NaN and leaves it out of the
   mean (``np.nanmean``). Here its AP is ``None`` (JSON ``null``) and it is left out of the mean the same way; it is
   listed under ``scored["classes_without_gt"]``. mAP is the mean over the classes that have ground truth.

Results are in percent. Where this module differs from the official script, on purpose: keyframes are keyed by
``(video_id, timestamp)`` with the timestamp to the microsecond (the 2019 script truncated it to whole seconds, which
all AVA timestamps are); rows the official script would stop on (wrong column count, not numbers) or silently
keep (boxes outside [0, 1]) are skipped, counted and named by the readers (:class:`Skipped`).

File formats (no header; ``#`` comment lines and blank lines are ignored):

* annotations: ``video_id, timestamp, x1, y1, x2, y2, action_id, person_id`` (boxes normalised to [0, 1]; the
  person id may be missing). A row of only ``video_id, timestamp`` names a keyframe without actions (the 2020 files).
* detections / results: ``video_id, timestamp, x1, y1, x2, y2, action_id, score`` (a missing score is 1.0, as the
  official reader has it).
* person boxes: as detections, the action column may be empty.
* excluded timestamps: ``video_id, timestamp``.
* label maps: ActivityNet's ``label { name: "..." label_id: N label_type: ... }`` or the TF Object Detection API's
  ``item { name: "..." id: N display_name: "..." }``.
"""

from __future__ import annotations

import csv
import heapq
import io
import logging
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import DataError

log = logging.getLogger(__name__)
OFFICIAL_TOP_K = 50  # detections kept per keyframe by the official script
IOU_THRESHOLD = 0.5
BOX_TOLERANCE = 1e-3  # a coordinate this far outside [0, 1] is rounding, clipped; further is a bad box
KINDS = ("annotations", "detections", "boxes")

MALFORMED = "malformed rows"
OUTSIDE = "boxes outside [0, 1]"
ZERO_AREA = "zero-area boxes"
UNKNOWN_ACTION = "unknown action ids"

Key = tuple[str, float]  # a keyframe: (video_id, timestamp in seconds)


class Row(NamedTuple):
    """One box-action row: ``value`` is the person id in annotations (-1 when the file has none), the score in
    detections and person boxes; ``action_id`` is -1 in person boxes without an action."""

    video_id: str
    timestamp: float
    x1: float
    y1: float
    x2: float
    y2: float
    action_id: int
    value: float = -1

    @property
    def key(self) -> Key:
        return (self.video_id, self.timestamp)

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


@dataclass
class Skipped:
    """What a reader left out: a count per reason and the first few rows of each, named ``file:line``."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    keep: int = 3

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        named = self.examples.setdefault(reason, [])
        if len(named) < self.keep:
            named.append(where)

    def update(self, other: Skipped) -> Skipped:
        for reason, n in other.counts.items():
            self.counts[reason] += n
            named = self.examples.setdefault(reason, [])
            named += other.examples.get(reason, [])[: self.keep - len(named)]
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{reason: {"count": n, "first": ["file:line", ...]}}``."""
        return {r: {"count": n, "first": list(self.examples.get(r, []))} for r, n in sorted(self.counts.items())}

    def summary(self) -> str:
        """One line: ``"2 boxes outside [0, 1] (a.csv:3, a.csv:9), 1 malformed rows (a.csv:1)"``."""
        def named(reason: str, n: int) -> str:
            first = self.examples.get(reason, [])
            return ", ".join(first) + (", ..." if n > len(first) else "")
        return ", ".join(f"{n} {r} ({named(r, n)})" for r, n in sorted(self.counts.items()))


def timestamp_key(text: str | float) -> float:
    """A keyframe's timestamp as the key: seconds, to the microsecond (``"0902"``, ``"902.0"`` and ``902`` agree)."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"timestamp {text!r} is not a non-negative number of seconds")
    return round(value, 6)


def format_timestamp(timestamp: float) -> str:
    """A timestamp as written in AVA files: an integer when whole (``"902"``), else to the microsecond."""
    return str(int(timestamp)) if float(timestamp).is_integer() else f"{timestamp:.6f}".rstrip("0")


# ---------------------------------------------------------------------------------------------------------- readers


@dataclass
class AvaCsv:
    """An AVA CSV read: its usable ``rows``, every keyframe it names (with boxes or as a two-column row) in order of
    first appearance, and what was ``skipped``."""

    rows: list[Row]
    keyframes: list[Key]
    skipped: Skipped


def _text(source: str | os.PathLike | io.TextIOBase) -> tuple[str, str]:
    """``(name, text)`` of a path or an open text file; a one-line error for a missing or binary file."""
    if hasattr(source, "read"):
        return getattr(source, "name", "<stream>"), source.read()
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return path.name, path.read_text()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text file (an AVA CSV or label map)") from None


def read_csv(source: str | os.PathLike | io.TextIOBase, *, kind: str = "annotations",
             class_ids: Collection[int] | None = None) -> AvaCsv:
    """The rows of an AVA annotation (``kind="annotations"``), detection / result (``"detections"``) or person-box
    (``"boxes"``) CSV; ``class_ids`` (a label map's ids) drops the rows of other actions. Bad rows are skipped and
    counted, never raised: wrong column counts and fields that are not numbers, boxes outside [0, 1] (beyond
    :data:`BOX_TOLERANCE`, which is clipped), boxes of zero area, unknown action ids."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: use one of {', '.join(KINDS)}")
    name, text = _text(source)
    known = None if class_ids is None else set(class_ids)
    rows: list[Row] = []
    keyframes: dict[Key, None] = {}
    skipped = Skipped()
    for n, fields in enumerate(csv.reader(io.StringIO(text)), 1):
        fields = [f.strip() for f in fields]
        if not any(fields) or fields[0].startswith("#"):
            continue
        where = f"{name}:{n}"
        if len(fields) not in (2, 7, 8):
            skipped.add(MALFORMED, where)
            continue
        try:
            key = (fields[0], timestamp_key(fields[1]))
            if not fields[0]:
                raise ValueError("no video id")
            if len(fields) == 2:
                keyframes.setdefault(key)
                continue
            x1, y1, x2, y2 = (float(v) for v in fields[2:6])
            if kind == "boxes" and fields[6] in ("", "-1"):
                action = -1
            else:
                action = int(fields[6])
            if kind == "annotations":
                value = float(fields[7]) if len(fields) == 8 and fields[7] else -1.0
            else:
                value = float(fields[7]) if len(fields) == 8 and fields[7] else 1.0
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2, value)):
                raise ValueError("not finite")
        except ValueError:
            skipped.add(MALFORMED, where)
            continue
        keyframes.setdefault(key)
        if min(x1, y1, x2, y2) < -BOX_TOLERANCE or max(x1, y1, x2, y2) > 1 + BOX_TOLERANCE:
            skipped.add(OUTSIDE, where)
            continue
        x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2))
        if x2 <= x1 or y2 <= y1:
            skipped.add(ZERO_AREA, where)
            continue
        if known is not None and action not in known and not (kind == "boxes" and action == -1):
            skipped.add(UNKNOWN_ACTION, where)
            continue
        rows.append(Row(key[0], key[1], x1, y1, x2, y2, action, value))
    return AvaCsv(rows, list(keyframes), skipped)


def read_excluded(source: str | os.PathLike | io.TextIOBase) -> tuple[set[Key], Skipped]:
    """The keyframes of an excluded-timestamps CSV (``video_id, timestamp``), and the rows skipped."""
    name, text = _text(source)
    keys: set[Key] = set()
    skipped = Skipped()
    for n, fields in enumerate(csv.reader(io.StringIO(text)), 1):
        fields = [f.strip() for f in fields]
        if not any(fields) or fields[0].startswith("#"):
            continue
        try:
            if len(fields) != 2 or not fields[0]:
                raise ValueError
            keys.add((fields[0], timestamp_key(fields[1])))
        except ValueError:
            skipped.add(MALFORMED, f"{name}:{n}")
    return keys, skipped


_TOKEN = re.compile(r"""\s*(?:(?P<comment>\#[^\n]*)|(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
                       |(?P<word>[-+.\w]+)|(?P<punct>[{}:;,<>\[\]]))""", re.VERBOSE)


def _tokens(text: str, name: str) -> list[tuple[str, str, int]]:
    """``(kind, text, line)`` tokens of protobuf text format; a one-line error at the first character it cannot
    read."""
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            line = text.count("\n", 0, pos) + 1
            raise DataError(f"{name}:{line}: {text[pos:].strip().splitlines()[0][:40]!r} is not protobuf text (a "
                            "label map holds label { name: \"...\" label_id: N } or item { name: \"...\" id: N })")
        kind = m.lastgroup
        if kind != "comment":
            out.append((kind, m.group(kind), text.count("\n", 0, m.start(kind)) + 1))
        pos = m.end()
    return out


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def _block(tokens: list[tuple[str, str, int]], i: int, name: str, close: str = "") -> tuple[dict[str, Any], int]:
    """The fields of a message from ``tokens[i]`` up to its ``close`` (``}`` or ``>``; the end at the top level):
    ``{key: [values]}`` with nested messages as dicts. No evaluation: strings are unquoted, the rest stays text."""
    fields: dict[str, list[Any]] = defaultdict(list)
    while i < len(tokens):
        kind, text, line = tokens[i]
        if kind == "punct" and text in "}>":
            if text != close:
                raise DataError(f"{name}:{line}: {text!r} closes nothing")
            return fields, i + 1
        if kind == "punct" and text in ";,":
            i += 1
            continue
        if kind != "word":
            raise DataError(f"{name}:{line}: expected a field name, found {text!r}")
        i += 1
        if i < len(tokens) and tokens[i][1] == ":":
            i += 1
        if i >= len(tokens):
            raise DataError(f"{name}:{line}: field {text!r} has no value")
        vkind, value, _ = tokens[i]
        if vkind == "punct" and value in "{<":
            sub, i = _block(tokens, i + 1, name, "}" if value == "{" else ">")
            fields[text].append(sub)
        elif vkind in ("string", "word"):
            fields[text].append(_unquote(value) if vkind == "string" else value)
            i += 1
        else:
            raise DataError(f"{name}:{line}: field {text!r} has no value")
    if close:
        raise DataError(f"{name}: a message is never closed (no {close!r})")
    return fields, i


def read_label_map(source: str | os.PathLike | io.TextIOBase) -> tuple[dict[int, str], Skipped]:
    """``({action id: name}, skipped)`` of a label map, ids in increasing order: ActivityNet's ``label { name
    label_id label_type }`` entries or the TF Object Detection API's ``item { name id display_name }`` (the
    ``display_name`` when there is one). Parsed as protobuf text by a small tokenizer (nothing is evaluated); other
    fields and messages are ignored; entries without an integer id, or repeating one, are skipped and counted."""
    name, text = _text(source)
    fields, _ = _block(_tokens(text, name), 0, name)
    labels: dict[int, str] = {}
    skipped = Skipped()
    for n, entry in enumerate([*fields.get("label", []), *fields.get("item", [])], 1):
        if not isinstance(entry, dict):
            skipped.add("label map entries that are not messages", f"{name} entry {n}")
            continue
        ids = entry.get("label_id") or entry.get("id") or []
        try:
            label_id = int(ids[0])
        except (IndexError, ValueError, TypeError):
            skipped.add("label map entries without an integer id", f"{name} entry {n}")
            continue
        if label_id in labels:
            skipped.add("label map entries repeating an id", f"{name} entry {n} (id {label_id})")
            continue
        names = entry.get("display_name") or entry.get("name") or [str(label_id)]
        labels[label_id] = str(names[0])
    if not labels:
        raise DataError(f"{name} holds no label map entries (label {{ name: \"...\" label_id: N }} or "
                        "item { name: \"...\" id: N })")
    return dict(sorted(labels.items())), skipped


def write_label_map(labels: Mapping[int, str], types: Mapping[int, str] | None = None) -> str:
    """The text of an ActivityNet-style ``.pbtxt`` label map of ``{id: name}`` (``types``: ``{id: label_type}``,
    e.g. ``PERSON_MOVEMENT``, ``PERSON_INTERACTION``)."""
    def quoted(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    types = types or {}
    return "".join(f"label {{\n  name: {quoted(n)}\n  label_id: {i}\n"
                   + (f"  label_type: {types[i]}\n" if i in types else "") + "}\n"
                   for i, n in sorted(labels.items()))


# ----------------------------------------------------------------------------------------------------------- metric


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[N, M]`` of boxes ``a [N, 4]`` and ``b [M, 4]`` (x1, y1, x2, y2; no +1, as the official ``np_box_ops``)."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])  # [N, M, 2]
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)  # [N, M]
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)  # [N]
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)  # [M]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def match_detections(detections: np.ndarray, gt: np.ndarray, iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """True / false positive ``bool [N]`` of one keyframe's detections of one class ``[N, 4]``, in the order given
    (descending score), against its ground-truth boxes of that class ``[M, 4]``: each detection takes the box it
    overlaps most and is a true positive when the IoU reaches ``iou_threshold`` and the box is still free."""
    tp = np.zeros(len(detections), dtype=bool)
    if len(detections) == 0 or len(gt) == 0:
        return tp
    iou = box_iou(detections, gt)  # [N, M]
    best = np.argmax(iou, axis=1)  # [N], the first of equal overlaps
    taken = np.zeros(len(gt), dtype=bool)
    for i, j in enumerate(best):
        if iou[i, j] >= iou_threshold and not taken[j]:
            tp[i] = taken[j] = True
    return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float | None:
    """VOC all-point interpolated AP (0..1) of ranked detections, or None when ``num_gt`` is 0 (the official NaN).
    Ranking: the official ``argsort(scores)[::-1]`` with a stable sort (ties: the later detection first)."""
    if num_gt == 0:
        return None
    if len(scores) == 0:
        return 0.0
    order = np.argsort(np.asarray(scores, dtype=float), kind="stable")[::-1]
    hits = np.asarray(tp, dtype=float)[order]
    cum_tp, cum_fp = np.cumsum(hits), np.cumsum(1.0 - hits)
    precision = np.concatenate([[0.0], cum_tp / (cum_tp + cum_fp), [0.0]])
    recall = np.concatenate([[0.0], cum_tp / num_gt, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # non-increasing: the best precision at recall >= this
    steps = np.nonzero(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def evaluate(gt: Iterable[Row], detections: Iterable[Row], labels: Mapping[int, str] | Collection[int], *,
             excluded: Collection[Key] = (), top_k: int | None = None,
             iou_threshold: float = IOU_THRESHOLD) -> dict[str, Any]:
    """Frame AP per class and their mean, in percent, of ``detections`` (:class:`Row` or plain tuples ``(video_id,
    timestamp, x1, y1, x2, y2, action_id, score)``) against ``gt`` (the same, the last field ignored) over the
    classes of ``labels`` (a label map ``{id: name}``, or the ids), skipping ``excluded`` keyframes, keeping the
    ``top_k`` best detections per keyframe (``None``: all; the official script: 50). The semantics are the official
    AVA evaluation's, step by step in this module's docstring.

    Returns ``{"mAP": float | None, "AP": {class id: float | None}, "scored": {"keyframes", "gt_boxes",
    "detections", "excluded_keyframes", "keyframes_without_gt", "detections_over_top_k", "classes",
    "classes_without_gt", "skipped"}}``: ``keyframes`` are the non-excluded keyframes with ground truth,
    ``gt_boxes`` the ground-truth box-action pairs (a person doing three actions counts three), ``detections`` the
    detections scored (after ``top_k``), ``keyframes_without_gt`` the keyframes whose detections all count as false
    positives. ``AP`` is None for a class without ground truth (left out of the mean, as the official NaN is)."""
    classes = sorted(int(c) for c in labels)
    known = set(classes)
    excluded = {(str(v), timestamp_key(t)) for v, t in excluded}
    skipped = Skipped()
    seen_excluded: set[Key] = set()

    gt_boxes: dict[Key, dict[int, list[tuple[float, ...]]]] = defaultdict(lambda: defaultdict(list))
    num_gt: Counter = Counter()
    for n, r in enumerate(gt):
        r = Row(r[0], timestamp_key(r[1]), *r[2:])  # a Row or a plain tuple of its fields
        if r.action_id not in known:
            skipped.add("ground truth of unknown action ids", f"ground truth {n}")
            continue
        if r.key in excluded:
            seen_excluded.add(r.key)
            continue
        gt_boxes[r.key][r.action_id].append(r.box)
        num_gt[r.action_id] += 1

    # per keyframe, the official reader's capped heap of (score, action, y1, x1, y2, x2), keyframes in order of
    # first appearance
    heaps: dict[Key, list[tuple[float, int, float, float, float, float]]] = {}
    over_top_k = 0
    for n, r in enumerate(detections):
        r = Row(r[0], timestamp_key(r[1]), *r[2:])
        if r.action_id not in known:
            skipped.add("detections of unknown action ids", f"detection {n}")
            continue
        if not math.isfinite(r.value):
            skipped.add("detections without a finite score", f"detection {n}")
            continue
        item = (float(r.value), r.action_id, r.y1, r.x1, r.y2, r.x2)
        heap = heaps.setdefault(r.key, [])
        if not top_k or len(heap) < top_k:
            heapq.heappush(heap, item)
        else:
            over_top_k += 1
            if item[0] > heap[0][0]:
                heapq.heapreplace(heap, item)

    scores: dict[int, list[float]] = defaultdict(list)  # per class, keyframes in order, each in its ranked order
    hits: dict[int, list[bool]] = defaultdict(list)
    scored_detections = 0
    without_gt = 0
    for key, heap in heaps.items():
        if key in excluded:
            seen_excluded.add(key)
            continue
        ranked = sorted(heap, key=lambda t: -t[0])  # stable: the official per-keyframe order
        valid = [t for t in ranked if t[2] < t[4] and t[3] < t[5]]  # the official _remove_invalid_boxes
        for _ in range(len(ranked) - len(valid)):
            skipped.add("detections of zero-area boxes", f"{key[0]},{format_timestamp(key[1])}")
        if not valid:
            continue
        scored_detections += len(valid)
        without_gt += key not in gt_boxes
        per_class: dict[int, list[tuple[float, ...]]] = defaultdict(list)
        for t in valid:
            per_class[t[1]].append(t)
        truth = gt_boxes.get(key, {})
        for c, found in per_class.items():
            scores[c] += [t[0] for t in found]
            if c not in truth:  # nothing to match: all false positives
                hits[c] += [False] * len(found)
                continue
            box = np.array([(t[3], t[2], t[5], t[4]) for t in found], dtype=float)  # [N, 4] x1 y1 x2 y2
            hits[c] += match_detections(box, np.array(truth[c], dtype=float), iou_threshold).tolist()  # [M, 4] gt

    ap: dict[int, float | None] = {}
    for c in classes:
        value = average_precision(np.array(scores[c], dtype=float), np.array(hits[c], dtype=bool), num_gt[c])
        ap[c] = None if value is None else 100.0 * value
    evaluated = [v for v in ap.values() if v is not None]
    if skipped:
        log.warning("AVA evaluation skipped %s", skipped.summary())
    return {
        "mAP": float(np.mean(evaluated)) if evaluated else None,
        "AP": ap,
        "scored": {
            "keyframes": len(gt_boxes),
            "gt_boxes": int(sum(num_gt.values())),
            "detections": scored_detections,
            "excluded_keyframes": len(seen_excluded),
            "keyframes_without_gt": without_gt,
            "detections_over_top_k": over_top_k,
            "classes": len(evaluated),
            "classes_without_gt": [c for c in classes if ap[c] is None],
            "skipped": skipped.as_dict(),
        },
    }


def evaluate_files(gt: str | os.PathLike, detections: str | os.PathLike, labels: str | os.PathLike,
                   exclude: str | os.PathLike | None = None, top_k: int | None = None) -> dict[str, Any]:
    """:func:`evaluate` on files: an annotation CSV, a detection / result CSV, a label map (``.pbtxt``, either
    format) and optionally an excluded-timestamps CSV. What the readers skipped is counted and named under
    ``scored["skipped"]`` (``{"gt": ..., "detections": ..., "labels": ..., "exclude": ...}``) and logged in one line
    each. ``top_k=50`` is the official cap."""
    names, label_skips = read_label_map(labels)
    truth = read_csv(gt, kind="annotations", class_ids=names)
    found = read_csv(detections, kind="detections", class_ids=names)
    excluded, exclude_skips = read_excluded(exclude) if exclude is not None else (set(), Skipped())
    result = evaluate(truth.rows, found.rows, names, excluded=excluded, top_k=top_k)
    readers = {"labels": label_skips, "gt": truth.skipped, "detections": found.skipped, "exclude": exclude_skips}
    for what, skipped in readers.items():
        if skipped:
            log.warning("%s: skipped %s", what, skipped.summary())
    result["scored"]["skipped"] = {**{k: s.as_dict() for k, s in readers.items() if s},
                                   **({"evaluation": result["scored"]["skipped"]} if result["scored"]["skipped"]
                                      else {})}
    result["names"] = dict(names)
    return result


def format_rows(rows: Iterable[Row], kind: str = "annotations") -> str:
    """CSV text of rows as the AVA files hold them: the person id last for ``"annotations"``, the score for
    ``"detections"``, and for ``"boxes"`` the score with the action column empty when the row has none (-1)."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: use one of {', '.join(KINDS)}")
    lines = []
    for r in rows:
        action = "" if kind == "boxes" and r.action_id < 0 else str(r.action_id)
        last = str(int(r.value)) if kind == "annotations" else f"{r.value:.6f}"
        lines.append(f"{r.video_id},{format_timestamp(r.timestamp)},{r.x1:.4f},{r.y1:.4f},{r.x2:.4f},{r.y2:.4f},"
                     f"{action},{last}\n")
    return "".join(lines)
