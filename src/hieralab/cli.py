"""The ``hieralab`` command line: built from the task table (``hieralab.tasks.TASKS``) -- a training subcommand per
task, ``eval`` and ``predict`` for every task that has them -- plus the commands that are not tasks (list, bench,
shards, scenes, extract, export, reconstruct, the studies). It parses, calls the library, and prints what the task
says of its result; it holds no per-task branch."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
import traceback
from pathlib import Path

from . import __version__


def cmd_list(args: argparse.Namespace) -> int:
    from .models import list_models, model_config

    for name in list_models(args.pattern):
        cfg = model_config(name)
        size = tuple(cfg["input_size"]) if "input_size" in cfg else (cfg.get("img_size", 224),) * 2
        shape = f"stages {tuple(cfg['stages'])}" if "stages" in cfg else f"depth {cfg.get('depth')}"
        print(f"{name:28s} input {size}  embed {cfg.get('embed_dim')}  {shape}")
    return 0


def _run_options(args: argparse.Namespace) -> dict:
    """The run-folder flags of a training command (see engine/run_folder.py)."""
    accept = [k.strip() for k in (args.accept_changes or "").split(",") if k.strip()]
    return {"resume": args.resume, "overwrite": args.overwrite, "accept_changes": accept}


def cmd_train(args: argparse.Namespace) -> int:
    """Any task of the table: its config from defaults <- preset <- overrides, its run, its report."""
    from .config import load_config
    from .tasks import TASKS

    task = TASKS[args.command]
    overrides = list(args.overrides)
    overrides += [f"{f.override}={getattr(args, f.dest)}" for f in task.flags if getattr(args, f.dest) is not None]
    cfg = load_config(task.config, args.preset, overrides, task=task.name)
    summary = task.run(cfg, **_run_options(args))
    if int(os.environ.get("RANK", "0") or 0) == 0:  # the main process reports (the others wrote no outputs)
        print("\n" + "\n".join(task.report(cfg, summary)))
    return 0


def _action_flags(args: argparse.Namespace, action_name: str, task) -> dict:
    """The flags of ``eval`` / ``predict`` that ``task`` takes; one given that it does not take is an error naming
    the task that does."""
    from .tasks import TASKS

    action = getattr(task, action_name)
    mine = {f.dest for f in action.flags}
    for other in TASKS.values():
        for f in getattr(other, action_name).flags if getattr(other, action_name) else ():
            if f.dest not in mine and getattr(args, f.dest, None) not in (None, f.default, False):
                raise ValueError(f"{f.name} is for {other.name} runs; {args.run} is a {task.name} run")
    return {f.dest: getattr(args, f.dest) for f in action.flags}


def cmd_eval(args: argparse.Namespace) -> int:
    from .tasks import TASKS, task_of

    task, _ = task_of(args.run)
    if task.evaluate is None:
        takes = ", ".join(t.name for t in TASKS.values() if t.evaluate)
        raise ValueError(f"{args.run} is a {task.name} run; eval takes {takes} runs")
    result = task.evaluate.call(args.run, out=args.out, overwrite=args.overwrite, **_action_flags(args, "evaluate", task))
    print("\n".join(task.evaluate.report(result)))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .tasks import TASKS, task_of

    task, _ = task_of(args.checkpoint)
    if task.predict is None:
        takes = ", ".join(t.name for t in TASKS.values() if t.predict)
        raise ValueError(f"{args.checkpoint} is a {task.name} run; predict takes {takes} runs")
    args.run = args.checkpoint
    flags = _action_flags(args, "predict", task)
    if args.out is not None:
        flags["out"] = args.out
    result = task.predict.call(args.checkpoint, args.images, overwrite=args.overwrite, **flags)
    print("\n".join(task.predict.report(result)))
    return 0


def cmd_scenes(args: argparse.Namespace) -> int:
    from .data.scenes import ensure_scenes

    out = ensure_scenes(args.out, train=args.train, val=args.val, seed=args.seed)
    print(f"Fashion-MNIST scenes in {out}: train/ and val/, each images/*.png, semantic/*.png, annotations.json")
    print(f"  detect on them:  hieralab detect data.scenes_root={out}")
    print(f"  segment on them: hieralab segment data.scenes_root={out}")
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from .data.shards import shard_source

    index = shard_source(args.source, args.out, shard_size=args.shard_size)
    print(f"wrote {index['samples']} {index['kind']} in {len(index['shards'])} shards; train on them with "
          f"data.source='{index['pattern']}'")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import PRESETS, preset_names, preset_summary

    rows = [(name, *preset_summary(name)) for name in preset_names()]
    width = max(len(name) for name, _, _ in rows)
    for name, task, summary in rows:
        print(f"{name:<{width}}  {task:<9} {summary}")
    print(f"\nuse one with hieralab <task> --preset NAME [key=value ...]; the files are in {PRESETS}")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from .tasks import extract

    s = extract.run(model=args.model, init=args.init, source=args.data, split=args.split, out=args.out,
                    img_size=args.img_size, stages=args.stages, knn=args.knn, knn_train=args.knn_train, k=args.k,
                    limit=args.limit, num_frames=args.frames, frame_stride=args.frame_stride, overwrite=args.overwrite)
    print(f"wrote {s['out']} ({s['count']} images: " + ", ".join(f"{k} {v}" for k, v in s["shapes"].items()) + ")")
    if "knn_top1" in s:
        print(f"k-NN (k={s['knn_k']}) top-1: {s['knn_top1']:.2f} %")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .experiments import study

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
    from .experiments import dense_study

    s = dense_study.run(mae=args.mae, encoder=args.encoder, seeds=args.seeds, steps=args.steps, out_dir=args.out,
                        extra=args.overrides)
    print()
    print(dense_study.table(s))
    if args.docs:
        _copy_to_docs(args.out, args.docs, "dense_study")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .tasks import export

    r = export.run(args.model, args.out, checkpoint=args.checkpoint, batch=args.batch,
                   dynamic_batch=args.dynamic_batch, img_size=args.img_size, frames=args.frames,
                   check=not args.no_check, overwrite=args.overwrite)
    checked = (f"; checked against the eager model at batch {r['checked_batch']}: max |diff| "
               f"{r['max_abs_diff']:.2g}" if "max_abs_diff" in r else "")
    print(f"wrote {r['out']} ({r['format']}, input {r['input_shape']}"
          f"{', dynamic batch' if r['dynamic_batch'] else ''}){checked}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .tasks import reconstruct

    paths = reconstruct.run(args.path, images=args.images, split=args.split, num=args.num, out=args.out,
                            seed=args.seed, mask_ratio=args.mask_ratio, img_size=args.img_size,
                            overwrite=args.overwrite)
    print(f"wrote {len(paths)} reconstructions (original | masked | reconstruction | visible pasted) and "
          f"overview.png to {paths[0].parent}")
    return 0


def _time_against_official(name: str, shape: tuple[int, ...], rounds: int, *, with_official: bool):
    """Seconds per forward of ours, ours + optimize_for_inference and (if installed) the official model, on the
    same weights and input, interleaved."""
    import torch

    from . import bench as B
    from .models.inference import optimize_for_inference
    from .models import create_model

    ours = create_model(name).eval()
    official = B.official_model(name) if with_official else None
    if official is not None:
        ours.load_state_dict(official.state_dict())
    fast = optimize_for_inference(ours)
    x = torch.randn(*shape)
    fns = {"ours": lambda: ours(x), "packed": lambda: fast(x)}
    if official is not None:
        fns["official"] = lambda: official(x)
    return B.paired_timings(fns, rounds=rounds, warmup=1)


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from . import bench as B, files
    from .models import create_model, list_models

    names = list_models(args.models)
    if not names:
        print(f"error: no registered model matches {args.models!r}; see `hieralab list`", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    from .engine.precision import cpu_has_native_bf16

    peak = B.matmul_peak_gflops()
    peak_bf16 = B.matmul_peak_gflops(dtype=torch.bfloat16)
    native = "native" if cpu_has_native_bf16() else "emulated: no avx512_bf16 / amx_bf16, precision=bf16 keeps fp32"
    print(f"# hieralab bench: fp32, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"matmul peak {peak:.0f} GFLOP/s fp32, {peak_bf16:.0f} GFLOP/s bf16 ({peak_bf16 / peak:.2f}x, {native}); "
          f"median of {args.rounds} interleaved rounds", flush=True)
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
        path = files.write_json(Path(args.json), {"batch": args.batch, "matmul_peak_gflops": peak,
                                                    "matmul_bf16_gflops": peak_bf16,
                                                    "native_bf16": cpu_has_native_bf16(), "rows": records})
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


def _union(flags) -> list:
    """The flags of several tasks' actions, each name once (the first declaration's help)."""
    seen: dict[str, object] = {}
    for f in flags:
        seen.setdefault(f.dest, f)
    return list(seen.values())


TRAINING = "training"  # the subparsers built from the task table take key=value overrides anywhere on the line


def cmd_weights(args: argparse.Namespace) -> int:
    from .weights import commands

    words = list(args.words)
    if words[:1] == ["download"]:
        if len(words) != 2:
            raise ValueError("usage: hieralab weights download NAME.TAG (hieralab weights lists them)")
        return commands.download_command(words[1])
    if len(words) > 1:
        raise ValueError("usage: hieralab weights [PATTERN] or hieralab weights download NAME.TAG")
    return commands.list_command(words[0] if words else None)


def cmd_ava_eval(args: argparse.Namespace) -> int:
    from . import files
    from .metrics.ava import evaluate_files

    if args.out:
        files.refuse_existing(args.out, args.overwrite)
    m = evaluate_files(args.gt, args.detections, args.labels, exclude=args.exclude, top_k=args.top_k)
    scored = m["scored"]
    print(f"frame mAP@0.5 {m['mAP']:.2f} % over {scored['classes']} classes ({scored['keyframes']} keyframes, "
          f"{scored['gt_boxes']} ground-truth boxes, {scored['detections']} detections scored)")
    names = m.get("names", {})
    for cid, ap in sorted(m["AP"].items(), key=lambda kv: int(kv[0])):
        shown = "no ground truth" if ap is None else f"{ap:.2f} %"
        print(f"  {cid:>3} {names.get(cid, names.get(str(cid), '')):<32} {shown}")
    if args.out:
        files.write_json(args.out, m)
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .config import preset_names
    from .data import catalog
    from .tasks import TASKS

    parser = argparse.ArgumentParser(prog="hieralab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hieralab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and third-party INFO logs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and only warnings from hieralab")
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

    for task in TASKS.values():  # the training commands: one per task of the table
        p = sub.add_parser(task.name, help=task.help, description=task.description or None)
        p.add_argument("--preset", default=task.default_preset,
                       help=f"a preset name ({', '.join(preset_names())}) or a .yaml path")
        _run_flags(p)
        for flag in task.flags:
            flag.add_to(p)
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help=f"config overrides, before or after the flags, e.g. {task.example}" if task.example
                       else "config overrides, before or after the flags")
        p.set_defaults(func=cmd_train, kind=TRAINING)

    for action, func in (("evaluate", cmd_eval), ("predict", cmd_predict)):  # from the tasks that declare them
        takes = [t for t in TASKS.values() if getattr(t, action)]
        names = ", ".join(t.name for t in takes)
        if action == "evaluate":
            p = sub.add_parser("eval", help=f"score a finished run: {names} (the run.json of the folder says which)")
            p.add_argument("run", help="a run folder or a model folder in it (" + ", ".join(
                f"{t.name}: {'/ '.join(t.model_folders)}/" for t in takes if t.model_folders) + ")")
        else:
            p = sub.add_parser("predict", help=f"predictions of a finished run on new inputs, files or folders: {names}")
            p.add_argument("images", nargs="+", help="input files and / or folders")
            p.add_argument("--checkpoint", required=True, help="a run folder or a model folder in it")
        p.add_argument("--out", help="output folder (default: a folder in the run named after the inputs); a folder "
                                     "hieralab did not write is refused unless --overwrite")
        p.add_argument("--overwrite", action="store_true",
                       help="move an existing --out aside (nothing is deleted); replace an existing --csv")
        for flag in _union(f for t in takes for f in getattr(t, action).flags):
            flag.add_to(p)
        p.set_defaults(func=func)

    p = sub.add_parser("shards", help="write an image folder, a built-in dataset or a clip folder / list as "
                                      "WebDataset tar shards (then data.source='OUT/shard-{000000..N}.tar')")
    p.add_argument("source", help=f"an image folder (class subfolders), {catalog.describe_sources()}, or a folder / "
                                  ".csv / .json list of clips")
    p.add_argument("out", help="a new (or empty) folder for shard-NNNNNN.tar and shards.json")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.set_defaults(func=cmd_shards)

    p = sub.add_parser("weights", help="public Hiera-family weights by name: list them, or download one "
                                       "(hieralab weights download hiera_base_224.mae_in1k)")
    p.add_argument("words", nargs="*", metavar="PATTERN | download NAME.TAG",
                   help="a glob of names to list (default: all), or 'download NAME.TAG'")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("ava-eval", help="frame mAP@0.5 of spatio-temporal action detections (the AVA benchmark's "
                                        "metric), from the CSV files, no model")
    p.add_argument("gt", help="ground truth: an AVA annotation CSV (video_id, timestamp, x1, y1, x2, y2, action, person)")
    p.add_argument("detections", help="detections: an AVA results CSV (video_id, timestamp, x1, y1, x2, y2, action, "
                                      "score)")
    p.add_argument("--labels", required=True, help="the label map (.pbtxt: ActivityNet's or the TF object-detection "
                                                   "format); its classes are the ones scored")
    p.add_argument("--exclude", help="excluded timestamps CSV (video_id, timestamp)")
    p.add_argument("--top-k", type=int, help="detections kept per keyframe (the official script: 50)")
    p.add_argument("--out", help="also write {mAP, AP per class, what was scored} here (JSON)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_ava_eval)

    p = sub.add_parser("presets", help="list the presets (paper recipes, demos) with a line on each")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("scenes", help="write the Fashion-MNIST scenes (COCO JSON + PNGs + semantic masks)")
    p.add_argument("out", help="output folder")
    p.add_argument("--train", type=int, default=2000, help="training scenes (from the training images)")
    p.add_argument("--val", type=int, default=300, help="validation scenes (from the test images)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_scenes)

    p = sub.add_parser("extract", help="an encoder's features of a dataset to .safetensors / .npy, and a k-NN "
                                       "evaluation on them")
    p.add_argument("--model", required=True, help="an encoder name, e.g. hiera_mini_32")
    p.add_argument("--init", help="its weights: a pretrain run, a save_pretrained folder or a checkpoint file")
    p.add_argument("--data", default=catalog.DEFAULT, help=f"{catalog.describe_sources()} or an image folder")
    p.add_argument("--split", help="a built-in dataset's split (default: its held-out one)")
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
    p.add_argument("--split", help="a built-in dataset's split (default: its held-out one)")
    p.add_argument("--num", type=int, default=8, help="how many images")
    p.add_argument("--out", help="output folder (default: <path>/reconstructions); a folder hieralab did not write "
                                 "is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="move an existing --out aside (nothing is deleted)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks")
    p.add_argument("--mask-ratio", type=float, help="default: the model's")
    p.add_argument("--img-size", type=int, help="default: the run's")
    p.set_defaults(func=cmd_reconstruct)
    return parser


OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*\s*=")  # key=value (a config key, then '=')


def _overrides_apart(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` without the ``key=value`` overrides of a command that takes them, and those overrides in their order
    (every other word of such a command that is no flag or flag value is one too). A flag of several values
    (``--seeds 0 1``) ends at the first ``key=value``, which argparse would read as one more of its values."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = sub.choices.get(argv[0]) if argv else None
    if command is None or not any(a.dest == "overrides" for a in command._actions):
        return argv, []
    nargs = {s: a.nargs for a in command._actions for s in a.option_strings}
    rest, overrides, expecting = [argv[0]], [], 0  # expecting: 0 no flag value, 1 one value, 2 several values
    for token in argv[1:]:
        if token.startswith("-"):
            rest.append(token)
            n = nargs.get(token, 0)  # "--flag=value" is no flag name: it expects nothing after it
            expecting = 1 if n in (None, "?") else 2 if n in ("+", "*") or isinstance(n, int) and n > 1 else 0
        elif expecting == 1 or (expecting == 2 and not OVERRIDE.match(token)):
            rest.append(token)
            expecting = 0 if expecting == 1 else 2
        else:
            overrides.append(token)
            expecting = 0
    return rest, overrides


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line; a command that takes ``key=value`` overrides takes them before, between and after
    its flags (in their order: a later value of a key wins); anything else argparse leaves over is an error."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    argv, overrides = _overrides_apart(parser, argv)
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and not any(x.startswith("-") for x in extra):
        overrides += extra  # e.g. "epochs = 2" after the flags: the config names what is wrong with it
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (not the stream of the first call: ``main``
    may run several times in one process, e.g. under pytest's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(debug: bool, quiet: bool = False) -> None:
    """hieralab's own messages at INFO (WARNING with ``--quiet``, and on every process of a ``torchrun`` but the
    first, so each line appears once); other libraries' only from WARNING up (all at INFO with --debug)."""
    from .progress import set_quiet

    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, handlers=[handler], force=True)
    other_rank = int(os.environ.get("RANK", "0") or 0) != 0
    level = logging.DEBUG if debug else logging.WARNING if quiet or other_rank else logging.INFO
    logging.getLogger("hieralab").setLevel(level)
    set_quiet(quiet or other_rank)


def _terminated(signum, frame) -> None:
    """SIGTERM (a scheduler's or ``kill``'s stop) as Ctrl-C: the run is marked interrupted and says how to resume."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import signal

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["--version"], ["-V"]):  # answered before anything heavy is imported
        print(f"hieralab {__version__}")
        return 0
    from .errors import HieralabError

    args = parse(argv)
    _setup_logging(args.debug, args.quiet)
    for flag in ("batch", "rounds"):
        if getattr(args, flag, 1) < 1:
            print(f"hieralab {args.command}: error: --{flag} {getattr(args, flag)}: must be at least 1", file=sys.stderr)
            return 2
    prefix = f"hieralab {args.command}: error: "
    try:
        previous = signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread (a library caller's worker): leave signals alone
        previous = None
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
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
