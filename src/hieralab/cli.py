"""The ``hieralab`` command line: thin wrappers that parse arguments and call the library."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import traceback
import warnings
from pathlib import Path

import torch

from . import __version__, files
from . import bench as B
from .config import (PRESETS, DetectConfig, FinetuneConfig, LinprobeConfig, PretrainConfig, SegmentConfig,
                     load_config, preset_names, preset_summary)
from .data.scenes import ensure_scenes
from .data.shards import shard_source
from .engine.artifacts import data_tag
from .engine.dense import dense_model_folder
from .errors import HieralabError
from .experiments import dense_study, study
from .models import create_model, list_models, model_config
from .models.registry import model_class
from .models.inference import optimize_for_inference
from .tasks import detect, evaluate, export, extract, finetune, linprobe, pretrain, reconstruct, segment


def _official(name: str):
    """The official ``hiera-transformer`` model of this name, with its eval-mode softmax removed, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import hiera
    except ImportError:
        return None
    factory = getattr(hiera, name, None)
    if factory is None:
        return None
    model = factory().eval()
    model.head.act_func = lambda x: x
    return model


def cmd_list(args: argparse.Namespace) -> int:
    for name in list_models(args.pattern):
        cfg = model_config(name)
        if getattr(model_class(name), "is_dense", False):
            print(f"{name:28s} a dense head on any encoder (hieralab {'detect' if name == 'detector' else 'segment'})")
            continue
        size = tuple(cfg["input_size"]) if "input_size" in cfg else (cfg.get("img_size", 224),) * 2
        shape = f"stages {tuple(cfg['stages'])}" if "stages" in cfg else f"depth {cfg.get('depth')}"
        print(f"{name:28s} input {size}  embed {cfg.get('embed_dim')}  {shape}")
    return 0


def _run_options(args: argparse.Namespace) -> dict:
    """The run-folder flags of a training command (see engine/run_folder.py)."""
    accept = [k.strip() for k in (args.accept_changes or "").split(",") if k.strip()]
    return {"resume": args.resume, "overwrite": args.overwrite, "accept_changes": accept}


def cmd_pretrain(args: argparse.Namespace) -> int:
    cfg = load_config(PretrainConfig, args.preset, args.overrides)
    summary = pretrain.run(cfg, **_run_options(args))
    if "model" in summary:  # the main process
        print(f"\npretrained {cfg.model} for {summary['steps']} steps in {summary['seconds']:.0f} s "
              f"({summary['images_per_s']:.0f} images/s), final loss {summary['final_loss']:.4f}"
              + (f" (running mean {summary['loss_running_mean']:.4f})" if summary.get("loss_running_mean") else ""))
        for key in ("model", "encoder", "curve", "reconstructions"):
            if key in summary:
                print(f"  {key:16s} {summary[key]}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.trainable_blocks is not None:
        overrides.append(f"trainable_blocks={args.trainable_blocks}")
    cfg = load_config(FinetuneConfig, args.preset, overrides)
    summary = finetune.run(cfg, **_run_options(args))
    if "last" in summary:
        print(f"\nfine-tuned {cfg.model} for {summary['steps']} steps in {summary['seconds']:.0f} s: best top-1 "
              f"{summary['best_top1']:.2f} % (step {summary['best_step']}, {summary['best_weights']}), last "
              f"{summary['last_top1']:.2f} %")
        for key in ("best", "last", "curve"):
            if key in summary:
                print(f"  {key:8s} {summary[key]}")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    cfg = load_config(DetectConfig, args.preset, args.overrides)
    s = detect.run(cfg, **_run_options(args))
    if "bbox_AP" in s:
        print(f"\ntrained {cfg.head} on {cfg.model} for {s['steps']} steps in {s['seconds']:.0f} s: box AP "
              f"{s['bbox_AP']:.2f} (AP50 {s['bbox_AP50']:.2f})" + (f", mask AP {s['segm_AP']:.2f}" if "segm_AP" in s
                                                                     else ""))
        print(f"  wrote {s['run_dir']}: metrics.json, predictions.json, predictions.png, model/")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    cfg = load_config(SegmentConfig, args.preset, args.overrides)
    s = segment.run(cfg, **_run_options(args))
    if "mIoU" in s:
        print(f"\ntrained the segmenter on {cfg.model} for {s['steps']} steps in {s['seconds']:.0f} s: mIoU "
              f"{s['mIoU']:.2f} %")
        print(f"  wrote {s['run_dir']}: metrics.json, predictions.png, model/")
    return 0


def cmd_scenes(args: argparse.Namespace) -> int:
    out = ensure_scenes(args.out, train=args.train, val=args.val, seed=args.seed)
    print(f"Fashion-MNIST scenes in {out}: train/ and val/, each images/*.png, semantic/*.png, annotations.json")
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    index = shard_source(args.source, args.out, shard_size=args.shard_size)
    print(f"wrote {index['samples']} {index['kind']} in {len(index['shards'])} shards; train on them with "
          f"data.source='{index['pattern']}'")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    rows = [(name, *preset_summary(name)) for name in preset_names()]
    width = max(len(name) for name, _, _ in rows)
    for name, task, summary in rows:
        print(f"{name:<{width}}  {task:<9} {summary}")
    print(f"\nuse one with hieralab <task> --preset NAME [key=value ...]; the files are in {PRESETS}")
    return 0


def cmd_linprobe(args: argparse.Namespace) -> int:
    cfg = load_config(LinprobeConfig, args.preset, args.overrides)
    summary = linprobe.run(cfg, **_run_options(args))
    if "best_top1" in summary:
        print(f"\nlinear probe of {cfg.model} ({cfg.init or 'random init'}): best top-1 "
              f"{summary['best_top1']:.2f} % at lr {summary['best_lr']:g}")
        for lr, acc in summary["top1_per_lr"].items():
            print(f"  lr {float(lr):<8g} {acc:.2f} %")
        print(f"  wrote {cfg.out_dir}/linprobe.json, linprobe.png, head.safetensors")
    return 0


def _dense_kind(path: str) -> str | None:
    """"detect" / "segment" when ``path`` is such a run (or its ``model/``), else None."""
    for meta, kind in ((detect.META, "detect"), (segment.META, "segment")):
        if dense_model_folder(path, meta) is not None:
            return kind
    return None


def cmd_eval(args: argparse.Namespace) -> int:
    kind = _dense_kind(args.checkpoint)
    if kind == "detect":
        m = detect.evaluate_run(args.checkpoint, ann=args.ann, images=args.images, out=args.out)
        print(f"box AP {m['bbox_AP']:.2f} (AP50 {m['bbox_AP50']:.2f})"
              + (f", mask AP {m['segm_AP']:.2f}" if "segm_AP" in m else "") + f" on {m['images']} images")
        print(f"  wrote {m['out']}/metrics.json, predictions.json, predictions.png")
        return 0
    if kind == "segment":
        m = segment.evaluate_run(args.checkpoint, images=args.images, masks=args.masks, out=args.out,
                                 inference=args.inference)
        print(f"mIoU {m['mIoU']:.2f} %, pixel accuracy {m['pixel_accuracy']:.2f} % on {m['images']} images")
        print(f"  wrote {m['out']}/metrics.json and predictions.png")
        return 0
    m = evaluate.run_eval(args.checkpoint, source=args.data, split=args.split, out=args.out,
                          img_size=args.img_size, limit=args.limit, temporal_views=args.temporal_views,
                          spatial_views=args.spatial_views)
    print(f"top-1 {m['top1']:.2f} %  top-5 {m['top5']:.2f} %  ({m['count']} images)")
    print(f"  wrote {m['out']}/metrics.json and confusion.png")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    kind = _dense_kind(args.checkpoint)
    if kind is not None:
        r = (detect.predict_images(args.checkpoint, args.images, out=args.out) if kind == "detect" else
             segment.predict_images(args.checkpoint, args.images, out=args.out))
        found = f"{r['detections']} detections" if kind == "detect" else f"{len(r['masks'])} masks"
        print(f"{found} for {r.get('images', len(r.get('masks', [])))} images; wrote {r['out']}")
        return 0
    if args.csv:
        files.refuse_existing(args.csv, args.overwrite)
    rows = evaluate.predict_files(args.checkpoint, args.images, topk=args.topk, batch_size=args.batch_size)
    if len(rows) == 1 and not args.csv:  # one image: its top-k, one per line
        if "error" in rows[0]:
            raise ValueError(f"{rows[0]['file']} is not a readable image file ({rows[0]['error']})")
        for label, p in rows[0]["top"]:
            print(f"{p:7.2%}  {label}")
        return 0
    for r in rows[:20]:
        shown = r["error"] if "error" in r else ", ".join(f"{label} {p:.1%}" for label, p in r["top"][:3])
        print(f"{r['file']}: {shown}")
    if len(rows) > 20:
        print(f"... and {len(rows) - 20} more")
    path = Path(args.csv) if args.csv else (evaluate.classifier_dir(args.checkpoint) /
                                           f"predict-{data_tag(args.images)}.csv")
    evaluate.write_predictions(rows, path, min(args.topk, len(rows[0].get("top", [])) or args.topk))
    bad = sum("error" in r for r in rows)
    print(f"wrote the top-{args.topk} of {len(rows)} files to {path}" + (f" ({bad} unreadable)" if bad else ""))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    s = extract.run(model=args.model, init=args.init, source=args.data, split=args.split, out=args.out,
                    img_size=args.img_size, stages=args.stages, knn=args.knn, knn_train=args.knn_train, k=args.k,
                    limit=args.limit, num_frames=args.frames, frame_stride=args.frame_stride, overwrite=args.overwrite)
    print(f"wrote {s['out']} ({s['count']} images: " + ", ".join(f"{k} {v}" for k, v in s["shapes"].items()) + ")")
    if "knn_top1" in s:
        print(f"k-NN (k={s['knn_k']}) top-1: {s['knn_top1']:.2f} %")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    s = study.run(encoder=args.encoder, preset=args.preset, pretrain_epochs=args.pretrain_epochs,
                  finetune_epochs=args.finetune_epochs, trainable_blocks=args.trainable_blocks, seeds=args.seeds,
                  probe_epochs=args.probe_epochs, out_dir=args.out, limit=args.limit, extra=args.overrides)
    print()
    print(study.table(s))
    print(f"MAE pretraining: {s['pretrain_epochs']:g} epochs in {s['pretrain_seconds']:.0f} s; whole study "
          f"{s['total_seconds']:.0f} s (stages reused from {args.out} are not re-timed)")
    if args.docs:
        _copy_to_docs(args.out, args.docs, "study", prefix="mae_")
    return 0


def _copy_to_docs(out: str, docs: str, name: str, prefix: str = "") -> None:
    """A study's ``name.md`` / ``.png`` / ``.json`` from ``out`` into ``docs`` (as ``prefix + name``)."""
    folder = Path(docs)
    folder.mkdir(parents=True, exist_ok=True)
    for ext in ("md", "png", "json"):
        shutil.copyfile(Path(out) / f"{name}.{ext}", folder / f"{prefix}{name}.{ext}")
    print(f"copied the table and plot to {folder}/{prefix}{name}.md, {prefix}{name}.png")


def cmd_study_dense(args: argparse.Namespace) -> int:
    s = dense_study.run(mae=args.mae, encoder=args.encoder, seeds=args.seeds, steps=args.steps, out_dir=args.out,
                        extra=args.overrides)
    print()
    print(dense_study.table(s))
    if args.docs:
        _copy_to_docs(args.out, args.docs, "dense_study")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    r = export.run(args.model, args.out, checkpoint=args.checkpoint, batch=args.batch,
                   dynamic_batch=args.dynamic_batch, img_size=args.img_size, frames=args.frames,
                   check=not args.no_check, overwrite=args.overwrite)
    checked = (f"; checked against the eager model at batch {r['checked_batch']}: max |diff| "
               f"{r['max_abs_diff']:.2g}" if "max_abs_diff" in r else "")
    print(f"wrote {r['out']} ({r['format']}, input {r['input_shape']}"
          f"{', dynamic batch' if r['dynamic_batch'] else ''}){checked}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    paths = reconstruct.run(args.path, images=args.images, split=args.split, num=args.num, out=args.out,
                            seed=args.seed, mask_ratio=args.mask_ratio, img_size=args.img_size)
    print(f"wrote {len(paths)} reconstructions (original | masked | reconstruction | visible pasted) and "
          f"overview.png to {paths[0].parent}")
    return 0


def _time_against_official(name: str, shape: tuple[int, ...], rounds: int, *, with_official: bool):
    """Seconds per forward of ours, ours + optimize_for_inference and (if installed) the official model, on the
    same weights and input, interleaved."""
    ours = create_model(name).eval()
    official = _official(name) if with_official else None
    if official is not None:
        ours.load_state_dict(official.state_dict())
    fast = optimize_for_inference(ours)
    x = torch.randn(*shape)
    fns = {"ours": lambda: ours(x), "packed": lambda: fast(x)}
    if official is not None:
        fns["official"] = lambda: official(x)
    return B.paired_timings(fns, rounds=rounds, warmup=1)


def cmd_bench(args: argparse.Namespace) -> int:
    names = list_models(args.models)
    if not names:
        print(f"error: no registered model matches {args.models!r}; see `hieralab list`", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    peak = B.matmul_peak_gflops()
    print(f"# hieralab bench: fp32, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"matmul peak {peak:.0f} GFLOP/s; median of {args.rounds} interleaved rounds", flush=True)
    header = ["model", "params (M)", "GFLOPs", "ours ms", "ours im/s", "ours % peak", "ours+packed ms",
              "official ms", "ours vs official", "packed vs official"]
    rows, records = [], []
    for name in names:
        with torch.device("meta"):  # shapes and counts only, no weights allocated
            meta = create_model(name)
        params, shape = B.count_params(meta), B.input_shape(meta, args.batch)
        flops = B.count_flops(lambda: create_model(name), shape)
        gflops = flops / 1e9
        row = {"model": name, "params_m": params / 1e6, "gflops": gflops}
        if args.max_gflops and gflops > args.max_gflops:
            rows.append([name, f"{params / 1e6:.2f}", f"{gflops:.1f}", "not timed", "", "", "", "", "", ""])
            records.append(row)
            print(f"{name}: {params / 1e6:.2f} M params, {gflops:.1f} GFLOPs (over --max-gflops, not timed)",
                  flush=True)
            continue
        times = _time_against_official(name, shape, args.rounds, with_official=not args.no_official)
        ms = {k: B.median(v) * 1e3 for k, v in times.items()}
        row.update({f"{k}_ms": v for k, v in ms.items()})
        pct = 100 * gflops / (ms["ours"] / 1e3) / peak
        cells = [name, f"{params / 1e6:.2f}", f"{gflops:.1f}", f"{ms['ours']:.0f}",
                 f"{args.batch / ms['ours'] * 1e3:.1f}", f"{pct:.0f}%", f"{ms['packed']:.0f}"]
        if "official" in times:
            r1 = B.paired_ratio(times["official"], times["ours"])
            r2 = B.paired_ratio(times["official"], times["packed"])
            row.update(ratio_ours=r1, ratio_packed=r2)
            cells += [f"{ms['official']:.0f}", f"{r1:.2f}x", f"{r2:.2f}x"]
        else:
            cells += ["—", "—", "—"]
        rows.append(cells)
        records.append(row)
        print(f"{name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in ms.items()), flush=True)
    print()
    print(B.markdown_table(header, rows))
    if args.json:
        path = files.write_json(Path(args.json), {"batch": args.batch, "matmul_peak_gflops": peak, "rows": records})
        print(f"\nwrote {path}")
    return 0


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir from its newest good checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="out_dir holds something else or an old run: move it to <out_dir>.replaced-<time> and start "
                        "a new run there (nothing is deleted)")
    p.add_argument("--accept-changes", metavar="KEY[,KEY]",
                   help="with --resume: continue although these keys (or 'all') differ from the run's config.yaml; "
                        "recorded in run.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hieralab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hieralab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and third-party INFO logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'hiera_*_16x224'")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("bench", help="parameters, FLOPs and measured speed of registered models, next to the "
                                     "official hiera-transformer")
    p.add_argument("--models", default="hiera_*", help="glob of model names (default: all Hiera models)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per model (after one warm-up)")
    p.add_argument("--max-gflops", type=float, default=400.0,
                   help="only count, do not time, models above this many GFLOPs per batch (0: time all)")
    p.add_argument("--no-official", action="store_true", help="do not time the official package")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("pretrain", help="MAE-pretrain a mae_* model on Fashion-MNIST or a folder of images",
                       description="Defaults <- --preset <- key=value overrides; the resolved config is written to "
                                   "<out_dir>/config.yaml. Multi-process: torchrun --nproc_per_node N -m hieralab.cli "
                                   "pretrain ...")
    p.add_argument("--preset", default="mae_hiera_fmnist",
                   help=f"a preset name ({', '.join(preset_names())}) or a .yaml path")
    _run_flags(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. data.source=~/photos optim.batch_size=32 epochs=5 out_dir=runs/mine")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune an encoder (from an MAE run, an official checkpoint or scratch) "
                                        "on Fashion-MNIST or a labelled image folder",
                       description="Defaults <- --preset <- key=value overrides (hieralab/config/schema.py: "
                                   "FinetuneConfig). Multi-process: torchrun --nproc_per_node N -m hieralab.cli "
                                   "finetune ...")
    p.add_argument("--preset", help=f"a preset name ({', '.join(preset_names())}) or a .yaml path")
    _run_flags(p)
    p.add_argument("--trainable-blocks", type=int, help="partial fine-tuning: train only the last k blocks (and "
                                                        "the final norm and head)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. model=hiera_mini_32 init=runs/mae_hiera_fmnist epochs=5 data.source=~/labelled")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("linprobe", help="linear probes (one per learning rate, one pass) on a frozen encoder")
    p.add_argument("--preset", help="a preset name or a .yaml path")
    _run_flags(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. model=hiera_mini_32 init=runs/mae_hiera_fmnist 'lrs=[0.1,1.0]' epochs=30")
    p.set_defaults(func=cmd_linprobe)

    p = sub.add_parser("detect", help="train a detector (Mask R-CNN, RetinaNet, FCOS) on an encoder; COCO data "
                                      "(default: the Fashion-MNIST scenes); box / mask AP at the end",
                       description="Defaults <- --preset <- key=value overrides (hieralab/config/schema.py: "
                                   "DetectConfig), e.g. data.train_ann=train.json data.train_images=images/ "
                                   "init=runs/mae_hiera_fmnist")
    p.add_argument("--preset", help="a preset name or a .yaml path")
    _run_flags(p)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("segment", help="train a semantic segmenter on an encoder; image + mask-PNG folders "
                                       "(default: the Fashion-MNIST scenes); mIoU at the end",
                       description="Defaults <- --preset <- key=value overrides (SegmentConfig), e.g. "
                                   "data.train_images=img/ data.train_masks=masks/ 'data.classes=[sky,road]'")
    p.add_argument("--preset", help="a preset name or a .yaml path")
    _run_flags(p)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("shards", help="write an image folder, Fashion-MNIST or a clip folder / list as WebDataset "
                                      "tar shards (then data.source='OUT/shard-{000000..N}.tar')")
    p.add_argument("source", help="an image folder (class subfolders), fashion-mnist, or a folder / .csv / .json "
                                  "list of clips")
    p.add_argument("out", help="a new (or empty) folder for shard-NNNNNN.tar and shards.json")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.set_defaults(func=cmd_shards)

    p = sub.add_parser("presets", help="list the presets (paper recipes, demos) with a line on each")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("scenes", help="write the Fashion-MNIST scenes (COCO JSON + PNGs + semantic masks)")
    p.add_argument("out", help="output folder")
    p.add_argument("--train", type=int, default=2000, help="training scenes (from the training images)")
    p.add_argument("--val", type=int, default=300, help="validation scenes (from the test images)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_scenes)

    p = sub.add_parser("eval", help="score a classifier (top-1 / top-5, confusion matrix), a detector (COCO box / "
                                    "mask AP) or a segmenter (mIoU)")
    p.add_argument("checkpoint", help="a finetune run folder (its best/) or a best/ or last/ folder; a detect or "
                                      "segment run")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist or a labelled image folder")
    p.add_argument("--split", default="test", help="fashion-mnist split (default: test)")
    p.add_argument("--out", help="output folder (default: <checkpoint>/eval-<split>)")
    p.add_argument("--img-size", type=int, help="default: the size it was trained at")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--temporal-views", type=int, default=1, help="video: clips per video, evenly spaced (5 for "
                                                                      "the Kinetics protocol)")
    p.add_argument("--spatial-views", type=int, default=1, help="video: crops per clip along the long side (3)")
    p.add_argument("--ann", help="detect: a COCO annotation file (default: the run's validation data)")
    p.add_argument("--images", help="detect / segment: the folder of the images of --ann / --masks")
    p.add_argument("--masks", help="segment: the folder of mask PNGs (default: the run's validation data)")
    p.add_argument("--inference", default="whole", choices=("whole", "slide"), help="segment: whole images or "
                                                                                   "sliding windows")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="a classifier's top-k labels (CSV), a detector's detections or a segmenter's "
                                       "masks for images: files or folders")
    p.add_argument("images", nargs="+", help="image files and / or folders of images")
    p.add_argument("--checkpoint", required=True, help="a finetune run folder or its best/ or last/ folder, or a "
                                                        "detect / segment run")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--csv", help="write the top-k of every file here (default for several files: "
                                 "<classifier>/predict-<name of the inputs>.csv)")
    p.add_argument("--out", help="detect / segment runs: the folder for the predictions (default: "
                                 "<run>/predict-<inputs>)")
    p.add_argument("--overwrite", action="store_true", help="replace a --csv file that exists")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("extract", help="an encoder's features of a dataset to .safetensors / .npy, and a k-NN "
                                       "evaluation on them")
    p.add_argument("--model", required=True, help="an encoder name, e.g. hiera_mini_32")
    p.add_argument("--init", help="its weights: a pretrain run, a save_pretrained folder or a checkpoint file")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist or an image folder")
    p.add_argument("--split", default="test", help="fashion-mnist split (default: test)")
    p.add_argument("--out", required=True, help="NAME.safetensors or NAME.npy")
    p.add_argument("--overwrite", action="store_true", help="replace --out (and its .labels.npy / .json) if it exists")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--stages", action="store_true", help="per-stage maps instead of pooled features")
    p.add_argument("--knn", action="store_true", help="also report weighted k-NN top-1 against the train split")
    p.add_argument("--knn-train", help="for a folder: the labelled folder the neighbours come from")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--limit", type=int, help="only the first N images (of each split)")
    p.add_argument("--frames", type=int, help="video models: frames per clip (default: the model's)")
    p.add_argument("--frame-stride", type=int, default=4, help="video models: take every n-th frame")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("study", help="does MAE help? linear probes (pixels / random init / MAE) and fine-tuning "
                                     "(scratch / MAE / last k blocks) on Fashion-MNIST, in one command")
    p.add_argument("--encoder", default="vit_micro_patch4_32")
    p.add_argument("--preset", default="mae_vit_micro_fmnist", help="the MAE pretraining preset (its model must be "
                                                               "mae_<encoder>)")
    p.add_argument("--pretrain-epochs", type=float, default=10)
    p.add_argument("--finetune-epochs", type=float, default=2)
    p.add_argument("--trainable-blocks", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds of every row (probes: init and order, and the random encoder; fine-tuning: head init "
                        "and order)")
    p.add_argument("--probe-epochs", type=int, default=30)
    p.add_argument("--limit", type=int, help="only the first N images of each split (a quick look)")
    p.add_argument("--out", default="runs/study")
    p.add_argument("--docs", help="also copy study.md / .png / .json to this folder as mae_study.*")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="pretraining overrides, e.g. model_args.depth=4")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("study-dense", help="does MAE help detection? Mask R-CNN on the demo's mini Hiera from an MAE "
                                           "run vs random init, on the Fashion-MNIST scenes, over seeds")
    p.add_argument("--mae", default="runs/mae_hiera_fmnist", help="the MAE pretrain run (made first if missing)")
    p.add_argument("--encoder", default="hiera_mini_32")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=300, help="optimizer steps of every detect run")
    p.add_argument("--out", default="runs/dense_study")
    p.add_argument("--docs", help="also copy dense_study.md / .png / .json to this folder")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of every detect run")
    p.set_defaults(func=cmd_study_dense)

    p = sub.add_parser("export", help="export a model to ONNX (.onnx, checked with onnxruntime) or torch.export "
                                      "(.pt2)")
    p.add_argument("model", help="a registered name, a save_pretrained folder, or a finetune run / its best/ last/")
    p.add_argument("--out", required=True, help="NAME.onnx or NAME.pt2")
    p.add_argument("--overwrite", action="store_true", help="replace --out (an earlier export) if it exists")
    p.add_argument("--checkpoint", help="weights for a registered name (official, timm, T2T-ViT or ours)")
    p.add_argument("--batch", type=int, default=1, help="batch of the example input (the fixed batch)")
    p.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch dimension")
    p.add_argument("--img-size", type=int, help="input side (default: the model's)")
    p.add_argument("--frames", type=int, help="video models: frames (default: the model's)")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with the eager model")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("reconstruct", help="PNG pictures of MAE reconstructions: original | masked | reconstruction "
                                           "| visible patches pasted back")
    p.add_argument("path", help="a pretraining run folder or a save_pretrained MAE folder")
    p.add_argument("--images", help="a folder of images (default: the run's data source)")
    p.add_argument("--split", help="dataset split (default: test for fashion-mnist)")
    p.add_argument("--num", type=int, default=8, help="how many images")
    p.add_argument("--out", help="output folder (default: <path>/reconstructions)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks")
    p.add_argument("--mask-ratio", type=float, help="default: the model's")
    p.add_argument("--img-size", type=int, help="default: the run's")
    p.set_defaults(func=cmd_reconstruct)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (not the stream of the first call: ``main``
    may run several times in one process, e.g. under pytest's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(debug: bool) -> None:
    """hieralab's own messages at INFO; other libraries' only from WARNING up (all at INFO with --debug)."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("hieralab").setLevel(logging.DEBUG if debug else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.debug)
    if getattr(args, "batch", 1) < 1 or getattr(args, "rounds", 1) < 1:
        print("error: --batch and --rounds must be at least 1", file=sys.stderr)
        return 2
    prefix = f"hieralab {args.command}: error: "
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\nhieralab {args.command}: interrupted; a training run continues from its newest checkpoint with "
              "--resume", file=sys.stderr)
        return 130
    except (HieralabError, ValueError, FileNotFoundError, FileExistsError, KeyError, PermissionError,
            IsADirectoryError, NotADirectoryError) as e:  # the user's mistake: one line a problem, no traceback
        if args.debug:
            traceback.print_exc()
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        lines = str(msg).splitlines() or [type(e).__name__]
        print("\n".join(prefix + line for line in lines), file=sys.stderr)
        return 1
    except Exception as e:  # a bug: say so in one line; the traceback with --debug
        if args.debug:
            raise
        print(f"{prefix}{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (unexpected: rerun with "
              "--debug for the traceback, and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
