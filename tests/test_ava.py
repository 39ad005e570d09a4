"""AVA action detection: the frame-AP metric (cases worked out by hand, and a second computation on random data),
the file readers with the bad rows users' files hold, clip sampling around keyframes (frame folders and a video), and
the bundled Fashion-MNIST action clips."""

import io
import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from hieralab.data.ava import (AVA_FRAMES, SECONDS, AvaClips, FrameFolders, FrameRule, Row, VideoFiles,
                               clip_frame_indices, group_keyframes, multi_hot, read_annotations, read_csv,
                               read_excluded, read_label_map, read_person_boxes)
from hieralab.data.fashion_mnist import ROOT
from hieralab.data.images import Unreadable
from hieralab.errors import DataError
from hieralab.metrics.ava import average_precision, evaluate, evaluate_files, format_rows, write_label_map

needs_fmnist = pytest.mark.skipif(not (ROOT / "train-images-idx3-ubyte.gz").exists(),
                                  reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")

A = (0.1, 0.1, 0.4, 0.4)
B = (0.5, 0.5, 0.9, 0.9)
FAR = (0.0, 0.6, 0.2, 1.0)  # overlaps neither


def gt(video, t, box, action, person=0):
    return Row(video, t, *box, action, person)


def det(video, t, box, action, score):
    return Row(video, t, *box, action, score)


# ------------------------------------------------------------------------------------------- the metric, by hand

CASE_GT = [gt("v", 902, A, 1, 0), gt("v", 902, B, 1, 1), gt("v", 902, B, 2, 1),  # person 1 does actions 1 and 2
           gt("v", 903, A, 2, 0),  # a keyframe nobody detects anything on
           gt("v", 905, A, 1, 0)]  # an excluded keyframe
CASE_DET = [det("v", 902, A, 1, 0.9), det("v", 902, A, 1, 0.8),  # the same box twice: one TP, one FP
            det("v", 902, B, 1, 0.7),
            det("v", 902, B, 2, 0.6),
            det("v", 904, A, 2, 0.95),  # a keyframe without ground truth: a false positive
            det("v", 902, A, 3, 0.5),  # class 3 has no ground truth
            det("v", 905, A, 1, 0.99)]  # on the excluded keyframe


def test_frame_ap_worked_by_hand():
    r = evaluate(CASE_GT, CASE_DET, {1: "a", 2: "b", 3: "c"}, excluded=[("v", 905)])
    # class 1: ranked TP .9, FP .8 (the duplicate), TP .7 over 2 boxes: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1;
    # made non-increasing: 1 up to recall 1/2, 2/3 to 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert r["AP"][1] == pytest.approx(100 * 5 / 6)
    # class 2: FP .95 (keyframe 904 has no ground truth), TP .6; the box at 903 is never found:
    # precision 0, 1/2 at recall 0, 1/2 -> AP = 1/2 * 1/2
    assert r["AP"][2] == pytest.approx(25.0)
    # class 3: no ground truth: no AP (the official NaN), left out of the mean
    assert r["AP"][3] is None
    assert r["mAP"] == pytest.approx((100 * 5 / 6 + 25) / 2)
    s = r["scored"]
    assert (s["keyframes"], s["gt_boxes"], s["detections"], s["excluded_keyframes"]) == (2, 4, 6, 1)
    assert (s["keyframes_without_gt"], s["classes"], s["classes_without_gt"]) == (1, 2, [3])


def test_an_excluded_keyframe_counts_when_not_excluded():
    r = evaluate([tuple(row) for row in CASE_GT], [tuple(row) for row in CASE_DET], [1, 2, 3])  # plain tuples too
    # class 1 gains the box at 905 and its detection at .99: TP TP FP TP over 3 boxes ->
    # precision 1, 1, 2/3, 3/4 at recall 1/3, 2/3, 2/3, 1 -> AP = 1/3 + 1/3 + 1/3 * 3/4
    assert r["AP"][1] == pytest.approx(100 * (2 / 3 + 1 / 4))
    assert r["mAP"] == pytest.approx((100 * 11 / 12 + 25) / 2)
    assert r["scored"]["excluded_keyframes"] == 0


def test_ties_in_score_rank_the_later_detection_first():
    """The official ``argsort(scores)[::-1]`` with a stable sort: of equal scores, the one met later (keyframes in
    order of first appearance in the detections) ranks first."""
    truth = [gt("a", 1, A, 1), gt("b", 1, B, 1)]
    fp_b, tp_a, tp_b = det("b", 1, FAR, 1, 0.5), det("a", 1, A, 1, 0.5), det("b", 1, B, 1, 0.4)
    # a first: ranked FP(b) .5, TP(a) .5, TP(b) .4 -> precision 0, 1/2, 2/3 -> AP = 1/2 * 2/3 + 1/2 * 2/3
    assert evaluate(truth, [tp_a, fp_b, tp_b], [1])["mAP"] == pytest.approx(100 * 2 / 3)
    # b first: TP(a) .5 ranks first -> precision 1, 1/2, 2/3 -> AP = 1/2 * 1 + 1/2 * 2/3
    assert evaluate(truth, [fp_b, tp_b, tp_a], [1])["mAP"] == pytest.approx(100 * 5 / 6)


def test_duplicates_of_one_box_are_one_true_positive_and_the_rest_false():
    truth = [gt("v", 1, A, 1)]
    r = evaluate(truth, [det("v", 1, A, 1, s) for s in (0.9, 0.8, 0.7)], [1])
    assert r["mAP"] == pytest.approx(100.0)  # the TP ranks first: the FPs after it cost nothing
    r = evaluate(truth, [det("v", 1, FAR, 1, 0.95), *[det("v", 1, A, 1, s) for s in (0.9, 0.8)]], [1])
    assert r["mAP"] == pytest.approx(50.0)  # FP, TP, FP -> precision 1/2 at recall 1


def test_top_k_keeps_the_best_detections_of_each_keyframe():
    truth = [gt("v", 1, A, 1), gt("w", 1, A, 1)]
    found = [det("v", 1, FAR, 1, 0.9), det("v", 1, FAR, 2, 0.8), det("v", 1, A, 1, 0.7), det("w", 1, A, 1, 0.1)]
    # all: FP .9, TP .7, TP .1 -> precision 0, 1/2, 2/3 -> AP = 1/2 * 2/3 * 2
    assert evaluate(truth, found, [1, 2])["AP"][1] == pytest.approx(100 * 2 / 3)
    capped = evaluate(truth, found, [1, 2], top_k=2)  # the cap is over all classes: v keeps .9 and .8
    assert capped["AP"][1] == pytest.approx(100 * 1 / 2 * 1 / 2)  # FP .9, TP .1 -> precision 1/2 at recall 1/2
    assert capped["scored"]["detections_over_top_k"] == 1 and capped["scored"]["detections"] == 3
    assert capped["AP"][2] is None


def test_a_class_without_detections_scores_zero_and_iou_half_is_a_match():
    truth = [gt("v", 1, (0.0, 0.0, 0.5, 0.5), 1), gt("v", 1, A, 2)]
    half = (0.0, 0.0, 0.5, 0.25)  # IoU exactly 1/2 with the first box (binary fractions: no rounding)
    r = evaluate(truth, [det("v", 1, half, 1, 0.3)], [1, 2])
    assert r["AP"] == {1: pytest.approx(100.0), 2: 0.0}
    assert evaluate(truth, [], [1, 2])["mAP"] == 0.0
    assert evaluate([], [det("v", 1, A, 1, 0.3)], [1])["mAP"] is None  # nothing to score


def test_average_precision_all_point_interpolation():
    # ranks TP FP TP FP TP over 4 boxes: precision 1, 1/2, 2/3, 1/2, 3/5 at recall 1/4, 1/4, 1/2, 1/2, 3/4
    ap = average_precision(np.array([5, 4, 3, 2, 1.0]), np.array([1, 0, 1, 0, 1], bool), 4)
    assert ap == pytest.approx(0.25 * 1 + 0.25 * 2 / 3 + 0.25 * 3 / 5)
    assert average_precision(np.zeros(0), np.zeros(0, bool), 0) is None


# ------------------------------------------------------------------------------- the metric, a second computation


def brute_force_ap(truth, found, classes, excluded=(), top_k=None):
    """Scores all distinct: every class's detections visited in one global descending order (not keyframe by
    keyframe), IoU by hand, AP as the mean over the boxes of the best precision at or after each true positive."""
    excluded = set(excluded)
    truth = [r for r in truth if r.key not in excluded and r.action_id in classes]
    found = [r for r in found if r.key not in excluded and r.action_id in classes]
    if top_k:
        keep = []
        for key in {r.key for r in found}:
            keep += sorted((r for r in found if r.key == key), key=lambda r: -r.value)[:top_k]
        found = keep

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union

    out = {}
    for c in classes:
        boxes = [r for r in truth if r.action_id == c]
        if not boxes:
            out[c] = None
            continue
        taken, hits = set(), []
        for d in sorted((r for r in found if r.action_id == c), key=lambda r: -r.value):
            mine = [(k, g) for k, g in enumerate(boxes) if g.key == d.key]
            best = max(mine, key=lambda kg: (iou(d.box, kg[1].box), -kg[0]), default=None)
            hit = best is not None and iou(d.box, best[1].box) >= 0.5 and best[0] not in taken
            if hit:
                taken.add(best[0])
            hits.append(hit)
        precision = [sum(hits[:k + 1]) / (k + 1) for k in range(len(hits))]
        out[c] = 100 * sum(max(precision[k:]) for k in range(len(hits)) if hits[k]) / len(boxes)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_frame_ap_agrees_with_a_brute_force_computation(seed):
    rng = random.Random(seed)
    classes = sorted(rng.sample(range(1, 9), rng.randint(1, 5)))
    keys = list(dict.fromkeys((f"v{rng.randint(0, 2)}", float(rng.randint(900, 904))) for _ in range(8)))

    def box():
        x, y = rng.uniform(0, 0.7), rng.uniform(0, 0.7)
        return (x, y, x + rng.uniform(0.05, 0.3), y + rng.uniform(0.05, 0.3))

    truth, found = [], []
    for v, t in keys:
        people = [(box(), rng.sample(range(1, 9), rng.randint(1, 3))) for _ in range(rng.randint(0, 3))]
        truth += [gt(v, t, b, a, p) for p, (b, acts) in enumerate(people) for a in acts]
        for _ in range(rng.randint(0, 12)):
            if people and rng.random() < 0.6:
                b, acts = rng.choice(people)
                b, a = tuple(min(1.0, max(0.0, x + rng.gauss(0, 0.03))) for x in b), rng.choice(acts)
            else:
                b, a = box(), rng.choice(classes)
            if b[2] > b[0] and b[3] > b[1]:
                found.append(det(v, t, b, a, rng.random()))
    rng.shuffle(found)
    excluded = rng.sample(keys, rng.randint(0, 2))
    top_k = rng.choice([None, 3])
    ours = evaluate(truth, found, classes, excluded=excluded, top_k=top_k)["AP"]
    reference = brute_force_ap(truth, found, classes, excluded, top_k)
    assert ours.keys() == reference.keys()
    for c in classes:
        assert (ours[c] is None) == (reference[c] is None)
        if ours[c] is not None:
            assert ours[c] == pytest.approx(reference[c], abs=1e-9)


# --------------------------------------------------------------------------------------------------- the readers

PBTXT = '''# ActivityNet's AVA label map format
label {
  name: "bend/bow (at the waist)"
  label_id: 1
  label_type: PERSON_MOVEMENT
}
label { name: "carry/hold (an object)" label_id: 14 label_type: OBJECT_MANIPULATION }
label {
  name: "no id here"
}
label {
  name: "talk to (e.g., self, \\"a person\\")"
  label_id: 79
  label_type: PERSON_INTERACTION
}
label { name: "again" label_id: 14 }
'''

TF_MAP = '''item {
  name: "/m/01g317"
  id: 1
  display_name: "person"
}
item { name: 'dog' id: 18 }  # single quotes, a comment
item <
  id: 3
  name: "angle brackets"
>
'''


def test_label_maps_in_both_formats(tmp_path):
    ava = tmp_path / "ava.pbtxt"
    ava.write_text(PBTXT)
    labels, skipped = read_label_map(ava)
    assert labels == {1: "bend/bow (at the waist)", 14: "carry/hold (an object)",
                      79: 'talk to (e.g., self, "a person")'}
    assert dict(skipped.counts) == {"label map entries without an integer id": 1,
                                    "label map entries repeating an id": 1}
    tf = tmp_path / "tf.pbtxt"
    tf.write_text(TF_MAP)
    assert read_label_map(tf)[0] == {1: "person", 3: "angle brackets", 18: "dog"}
    written = tmp_path / "written.pbtxt"
    written.write_text(write_label_map(labels, {1: "PERSON_MOVEMENT"}))
    assert read_label_map(written)[0] == labels


@pytest.mark.parametrize("text", ["label { name: \"x\" label_id: 1 ", "label } ", "__import__('os').system('x')",
                                  "label { name: \"x\" label_id: 1 } = 3", "", "# only a comment\n"])
def test_a_broken_label_map_is_one_line_error(tmp_path, text):
    path = tmp_path / "bad.pbtxt"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        read_label_map(path)
    assert "\n" not in str(e.value) and "bad.pbtxt" in str(e.value)


def test_annotation_rows_users_have_are_skipped_counted_and_named(tmp_path):
    path = tmp_path / "ann.csv"
    path.write_text("video_id,timestamp,x1,y1,x2,y2,action_id,person_id\n"  # 1: a header
                    "vid,0902,0.1,0.1,0.4,0.4,1,0\n"
                    "vid,0902,0.1,0.1,0.4,0.4,14,0\n"  # 3: the same person's second action
                    "vid,0902,0.5,0.5,1.0000004,0.9,1,1\n"  # 4: rounding past 1 is clipped
                    "vid,0902,0.5,0.5,1.2,0.9,1,2\n"  # 5: outside [0, 1]
                    "vid,0903,0.3,0.3,0.3,0.6,1,0\n"  # 6: zero area
                    "vid,0903,0.1,0.1,0.4,0.4,99,0\n"  # 7: an action the label map does not have
                    "vid,0903,0.1,0.1,0.4\n"  # 8: too few columns
                    "\n# a comment\n"
                    "vid,abc,0.1,0.1,0.4,0.4,1,0\n"  # 11: not numbers
                    "other,0904\n"  # 12: a keyframe without actions
                    "vid,0905,0.2,0.2,0.6,0.6,1,0\n")
    table = read_csv(path, kind="annotations", class_ids={1, 14})
    assert len(table.rows) == 4
    assert table.keyframes == [("vid", 902.0), ("vid", 903.0), ("other", 904.0), ("vid", 905.0)]
    assert table.rows[2].x2 == 1.0
    assert table.skipped.as_dict() == {
        "boxes outside [0, 1]": {"count": 1, "first": ["ann.csv:5"]},
        "malformed rows": {"count": 3, "first": ["ann.csv:1", "ann.csv:8", "ann.csv:11"]},
        "unknown action ids": {"count": 1, "first": ["ann.csv:7"]},
        "zero-area boxes": {"count": 1, "first": ["ann.csv:6"]}}
    assert "1 zero-area boxes (ann.csv:6)" in table.skipped.summary()
    keyframes, skipped = read_annotations(path, {1, 14}, excluded={("vid", 905.0)})
    assert [k.key for k in keyframes] == [("vid", 902.0)]
    assert keyframes[0].persons[0].actions == (1, 14) and keyframes[0].persons[1].person_id == 1
    assert skipped.counts["excluded keyframes"] == 1 and skipped.total == 7
    merged = table.skipped.update(read_excluded(path)[1])  # as an exclusion list, all but "other,0904" are bad
    assert merged.counts["malformed rows"] == 3 + 10 and merged.examples["malformed rows"] == [
        "ann.csv:1", "ann.csv:8", "ann.csv:11"]


def test_detections_person_boxes_and_exclusions(tmp_path):
    dets = tmp_path / "results.csv"
    dets.write_text("vid,902,0.1,0.1,0.4,0.4,1,0.93\nvid,902,0.1,0.1,0.4,0.4,2\nvid,902,0.1,0.1,0.4,0.4,1,nan\n")
    rows = read_csv(dets, kind="detections").rows
    assert [(r.action_id, r.value) for r in rows] == [(1, 0.93), (2, 1.0)]  # no score: 1.0, as the official reader
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("vid,902,0.1,0.1,0.4,0.4,,0.5\nvid,902,0.5,0.5,0.9,0.9,,0.9\nvid,902,0.1,0.1,0.4,0.4,,0.5\n"
                     "vid,903,0.1,0.1,0.4,0.4,1\n")
    found, skipped = read_person_boxes(boxes)
    assert found == {("vid", 902.0): [((0.5, 0.5, 0.9, 0.9), 0.9), ((0.1, 0.1, 0.4, 0.4), 0.5)],
                     ("vid", 903.0): [((0.1, 0.1, 0.4, 0.4), 1.0)]} and not skipped
    excluded = tmp_path / "excluded.csv"
    excluded.write_text("vid,0902\nvid,0903,extra\n\nvid,0904.0\n")
    keys, skipped = read_excluded(excluded)
    assert keys == {("vid", 902.0), ("vid", 904.0)} and skipped.examples["malformed rows"] == ["excluded.csv:2"]


def test_rows_round_trip_and_group_into_people():
    rows = [gt("v", 1, A, 3, 0), gt("v", 1, A, 1, 0), gt("v", 1, B, 2, 1), gt("w", 2.5, B, 2, -1),
            gt("w", 2.5, B, 4, -1)]
    frames = group_keyframes(rows)
    assert [(k.key, [(p.actions, p.person_id) for p in k.persons]) for k in frames] == [
        (("v", 1), [((1, 3), 0), ((2,), 1)]), (("w", 2.5), [((2, 4), -1)])]
    assert multi_hot([(1, 3), (2,)], [1, 2, 3]).tolist() == [[1, 0, 1], [0, 1, 0]]
    again = read_csv(io.StringIO(format_rows(rows, "annotations"))).rows
    assert [(r.key, r.action_id, r.value) for r in again] == [(r.key, r.action_id, r.value) for r in rows]


def test_evaluate_files_reads_what_evaluate_scores(tmp_path):
    (tmp_path / "labels.pbtxt").write_text(write_label_map({1: "a", 2: "b", 3: "c"}))
    (tmp_path / "gt.csv").write_text(format_rows(CASE_GT) + "v,0902,0.1,0.1,0.4,1.5,1,3\n")
    (tmp_path / "det.csv").write_text(format_rows(CASE_DET, "detections") + "v,0902,0.1,0.1,0.4,0.4,7,0.9\n")
    (tmp_path / "excluded.csv").write_text("v,0905\n")
    r = evaluate_files(tmp_path / "gt.csv", tmp_path / "det.csv", tmp_path / "labels.pbtxt",
                       exclude=tmp_path / "excluded.csv")
    assert r["mAP"] == pytest.approx((100 * 5 / 6 + 25) / 2)
    assert r["scored"]["skipped"] == {"gt": {"boxes outside [0, 1]": {"count": 1, "first": ["gt.csv:6"]}},
                                      "detections": {"unknown action ids": {"count": 1, "first": ["det.csv:8"]}}}
    json.dumps(r)  # the command writes it as it is


# ------------------------------------------------------------------------------------------------ clip sampling


def test_clip_indices_are_centred_and_padded_with_the_edge_frames():
    assert clip_frame_indices(10, 4, 2, 100) == [6, 8, 10, 12]  # the keyframe at position T // 2
    assert clip_frame_indices(1, 4, 2, 5) == [0, 0, 1, 3]
    assert clip_frame_indices(4, 4, 2, 5) == [0, 2, 4, 4]
    assert clip_frame_indices(0, 3, 5, 1) == [0, 0, 0]
    assert AVA_FRAMES.frame(902) == 60 and FrameRule(fps=8, offset=0).frame(1) == 8
    assert SECONDS.frame(2.5, fps=4) == 10


def test_clips_from_frame_folders(tmp_path):
    for video, count in (("vid", 10), ("holey", 6)):
        (tmp_path / video).mkdir()
        for i in range(count):  # frame i (file i + 1) is all grey level 20 * i
            Image.new("RGB", (16, 12), (20 * i,) * 3).save(tmp_path / video / f"{video}_{i + 1:06d}.jpg")
    (tmp_path / "holey" / "holey_000004.jpg").unlink()
    rule = FrameRule(fps=1, offset=900)
    person = group_keyframes([gt("x", 0, A, 1)])[0].persons
    keyframes = [group_keyframes([gt(v, t, A, 1)])[0] for v, t in
                 (("vid", 902), ("vid", 912), ("vid", 899), ("nope", 902), ("holey", 903))]
    ds = AvaClips(keyframes, FrameFolders(tmp_path), num_frames=4, stride=2, rule=rule)
    assert len(ds) == 2 and ds.skipped.as_dict() == {
        "keyframes before their video's start": {"count": 1, "first": ["vid,899"]},
        "keyframes of missing videos": {"count": 1, "first": [str(tmp_path / "nope")]},
        "keyframes past their video's end": {"count": 1, "first": ["vid,912 (frame 12 of 10)"]}}
    item = ds[0]
    assert ds.indices(0) == [0, 0, 2, 4] and item["clip"].shape == (4, 12, 16, 3)
    assert item["clip"][:, 6, 8, 0].tolist() == pytest.approx([0, 0, 40, 80], abs=3)
    assert item["key"] == ("vid", 902) and item["boxes"].tolist() == [pytest.approx(list(A))]
    assert item["actions"] == [p.actions for p in person]
    bad = ds[1]  # holey's frame 3 (file 4) is gone
    assert isinstance(bad, Unreadable) and bad.path == str(tmp_path / "holey")
    with pytest.raises(ValueError, match="frame rate"):
        AvaClips(keyframes, FrameFolders(tmp_path), rule=SECONDS)


def test_clips_decoded_from_a_video_around_the_keyframe(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "videos" / "clip.mp4"
    path.parent.mkdir()
    with av.open(str(path), "w") as out:  # 12 frames at 4 fps, frame i all grey level 16 * i + 20
        stream = out.add_stream("mpeg4", rate=4)
        stream.height, stream.width, stream.pix_fmt = 32, 48, "yuv420p"
        stream.options = {"qscale": "2"}
        for i in range(12):
            frame = np.full((32, 48, 3), 16 * i + 20, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    keyframes = [group_keyframes([gt("clip", t, B, 2)])[0] for t in (1, 2.5, 3)]
    boxes = {("clip", 1.0): [(A, 0.9)]}
    ds = AvaClips(keyframes, VideoFiles(tmp_path / "videos", decoder="pyav"), num_frames=4, stride=3, rule=SECONDS,
                  proposals=boxes)
    assert len(ds) == 2 and ds.skipped.counts["keyframes past their video's end"] == 1  # second 3 is frame 12
    assert ds.indices(0) == [0, 1, 4, 7] and ds.indices(1) == [4, 7, 10, 11]
    for i in range(2):
        item = ds[i]
        levels = [16 * k + 20 for k in ds.indices(i)]
        assert item["clip"][:, 16, 24, 0].float().tolist() == pytest.approx(levels, abs=4)
    assert ds[0]["proposals"].tolist() == [pytest.approx([*A, 0.9])] and ds[1]["proposals"].shape == (0, 5)


# -------------------------------------------------------------------------------------- the bundled action clips


@pytest.fixture(scope="module")
def actions(tmp_path_factory):
    if not (ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (make data)")
    from hieralab.data.fmnist_actions import ensure_actions

    return ensure_actions(tmp_path_factory.mktemp("actions") / "a", train=4, val=3, seed=0)


@needs_fmnist
def test_action_clips_are_deterministic_and_need_time_to_tell_apart():
    from hieralab.data.fashion_mnist import FashionMNIST
    from hieralab.data.fmnist_actions import make_clip

    images = FashionMNIST("test").images
    seen = {}
    for seed in range(60):
        frames, truth = make_clip(np.random.default_rng(seed), images)
        again, truth_again = make_clip(np.random.default_rng(seed), images)
        assert np.array_equal(frames, again) and truth == truth_again
        assert frames.shape[0] == 16 and 1 <= len(truth) <= 4
        for box, acts in truth:
            assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1 and acts
        if len(truth) == 1:
            seen[truth[0][1]] = frames
    still = seen[(9,)]  # a garment standing still: every frame the same
    assert all(np.array_equal(f, still[0]) for f in still)
    movers = [f for acts, f in seen.items() if set(acts) & {1, 2, 3, 4, 5, 6, 7}]
    assert movers and all(not np.array_equal(f[0], f[-1]) for f in movers)


@needs_fmnist
def test_bundled_action_clips_are_well_formed_and_reused(actions, tmp_path):
    from hieralab.data.fmnist_actions import ACTIONS, FRAME_RULE, action_sources, ensure_actions

    src = action_sources(actions, train=4, val=3, seed=0)
    spec_time = (actions / "spec.json").stat().st_mtime_ns
    labels, skipped = read_label_map(src["labels"])
    assert labels == ACTIONS and not skipped
    for split, n in (("train", 4), ("val", 3)):
        keyframes, skipped = read_annotations(src[f"{split}_ann"], labels)
        assert len(keyframes) == n and not skipped
        ds = AvaClips(keyframes, VideoFiles(src["videos"]), num_frames=16, stride=1, rule=FRAME_RULE)
        assert len(ds) == n and not ds.skipped
        item = ds[0]
        assert item["frame"] == 8 and item["clip"].shape[0] == 16 and item["clip"].dtype == torch.uint8
    boxes, skipped = read_person_boxes(src["val_boxes"])
    assert not skipped and set(boxes) <= {k.key for k in read_annotations(src["val_ann"], labels)[0]}
    perfect = evaluate_files(src["val_ann"], src["val_ann"], src["labels"])  # the truth as detections
    assert perfect["mAP"] == pytest.approx(100.0)
    assert ensure_actions(actions, train=4, val=3, seed=0) == actions  # reused, not written again
    assert (actions / "spec.json").stat().st_mtime_ns == spec_time
    again = ensure_actions(tmp_path / "again", train=4, val=3, seed=0)
    for name in ("train.csv", "val.csv", "val_person_boxes.csv", "labels.pbtxt", "videos/val_00002.mp4"):
        assert (again / name).read_bytes() == (actions / name).read_bytes()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "mine.txt").write_text("x")
    with pytest.raises(FileExistsError, match="holds no Fashion-MNIST action clips"):
        ensure_actions(tmp_path / "foreign", train=4, val=3)
    assert math.isclose(json.loads((actions / "spec.json").read_text())["spec"]["fps"], 8)
