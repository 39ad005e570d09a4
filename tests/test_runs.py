"""The run folder as a contract and the engine's guards, case by case: concurrent runs, foreign folders, finished
runs, resume under changed settings, logs cut by a kill, corrupt and pickled checkpoints, orphaned temporary
files, divergence, unreadable data, a full disk, file modes. Tiny MAE runs on drawn images (about a second each)."""

import csv
import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import draw_images, error_lines, losses, pretrain_args, run_pretrain, tiny_mae
from hieralab.cli import main
from hieralab.config import FinetuneConfig, load_config
from hieralab.engine import checkpoints
from hieralab.errors import DivergedError
from hieralab.tasks import finetune


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return draw_images(tmp_path_factory.mktemp("images"))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes (to show that nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(capsys, *argv: str) -> tuple[int, list[str]]:
    code = main(list(argv))
    return code, error_lines(capsys.readouterr().err)


# ---------------------------------------------------------------- one live run per folder
def test_a_second_run_in_a_live_folder_is_refused_and_the_first_goes_on(tmp_path, images, capsys):
    out = tmp_path / "live"
    first = pretrain_args(out, images, "epochs=400", "ckpt_every=5")
    proc = subprocess.Popen([sys.executable, "-m", "hieralab", "pretrain", *first], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not checkpoints.list_steps(out / "checkpoints") and time.time() < deadline:
            time.sleep(0.2)
        assert checkpoints.list_steps(out / "checkpoints"), "the first run never wrote a checkpoint"
        config = (out / "config.yaml").read_text()
        for extra in ([], ["--resume"]):  # a new run, and a resume that would adopt the live run's checkpoints
            code, errors = cli(capsys, "pretrain", *extra, *pretrain_args(out, images, "seed=1"))
            assert code == 1 and len(errors) == 1 and f"in use by a live run (PID {proc.pid}" in errors[0]
        assert (out / "config.yaml").read_text() == config and proc.poll() is None  # untouched, still training
        rows = len(losses(out))
        time.sleep(1.0)
        assert len(losses(out)) > rows  # the first run still writes its log
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the killed run's lock is stale: the next --resume takes it over and continues the same run
    summary = run_pretrain([*first, f"max_steps={checkpoints.list_steps(out / 'checkpoints')[-1] + 2}"], resume=True)
    assert summary["steps"] == checkpoints.list_steps(out / "checkpoints")[-1]


# ---------------------------------------------------------------- nothing overwritten
def test_a_folder_of_someone_elses_files_is_refused_untouched_then_moved_aside(tmp_path, images, capsys):
    out = tmp_path / "mine"
    (out / "model").mkdir(parents=True)
    (out / "config.yaml").write_text("my own notes\n")
    (out / "log.csv").write_text("a,b\n1,2\n")
    (out / "model" / "weights.bin").write_bytes(b"precious")
    before = snapshot(out)
    code, errors = cli(capsys, "pretrain", *pretrain_args(out, images, "max_steps=1"))
    assert code == 1 and len(errors) == 1
    assert "holds no hieralab pretrain run" in errors[0] and "--overwrite" in errors[0]
    assert snapshot(out) == before
    code, _ = cli(capsys, "pretrain", "--overwrite", *pretrain_args(out, images, "max_steps=1"))
    assert code == 0 and (out / "summary.json").exists()
    [moved] = tmp_path.glob("mine.replaced-*")
    assert snapshot(moved) == before  # nothing deleted: the old contents, byte for byte


def test_a_finished_run_is_never_overwritten(tmp_path, images, capsys):
    out = tmp_path / "done"
    first = run_pretrain(pretrain_args(out, images, "max_steps=2", "epochs=0.4"))  # 2 steps of 2: finished
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    again = run_pretrain(pretrain_args(out, images, "epochs=0.4"), resume=True)  # no step left: outputs rewritten
    assert again["steps"] == 2 and again["seconds"] <= first["seconds"] and again["images_per_s"] > 0  # not 0 s
    shutil.rmtree(out / "checkpoints")  # a finished run whose checkpoints were deleted
    before = snapshot(out)
    code, errors = cli(capsys, "pretrain", *pretrain_args(out, images, "epochs=0.4"))
    assert code == 1 and "already holds a finished pretrain run" in errors[0]
    code, errors = cli(capsys, "pretrain", "--resume", *pretrain_args(out, images, "epochs=0.4"))
    assert code == 1 and "checkpoints are gone" in errors[0]
    assert snapshot(out) == before


def test_a_run_of_another_task_is_refused(tmp_path, images, capsys):
    out = tmp_path / "ft"
    finetune.run(load_config(FinetuneConfig, None, [
        "model=hiera_mini_32", "model_args.embed_dim=16", "model_args.num_heads=1", "model_args.stages=[1,1,1]",
        f"data.source={images}", "data.num_workers=0", "optim.batch_size=8", "max_steps=1", f"out_dir={out}"]))
    before = snapshot(out)
    code, errors = cli(capsys, "pretrain", "--resume", *pretrain_args(out, images))
    assert code == 1 and "holds a finetune run, not a pretrain run" in errors[0]
    assert snapshot(out) == before


# ---------------------------------------------------------------- resume under the same settings
def test_resume_refuses_changes_that_alter_the_trajectory_unless_accepted(tmp_path, images, capsys):
    out = tmp_path / "r"
    run_pretrain(pretrain_args(out, images, "max_steps=3", "ckpt_every=1"))
    config = (out / "config.yaml").read_text()
    code, errors = cli(capsys, "pretrain", "--resume", *pretrain_args(out, images, "optim.batch_size=4", "seed=1"))
    assert code == 1 and len(errors) == 1
    assert "optim.batch_size: 8 -> 4" in errors[0] and "seed: 0 -> 1" in errors[0]
    assert "--accept-changes optim.batch_size,seed" in errors[0]
    assert (out / "config.yaml").read_text() == config  # not rewritten
    # watching keys are no change of trajectory; a named change is accepted and recorded
    code, _ = cli(capsys, "pretrain", "--resume", "--accept-changes", "seed",
                  *pretrain_args(out, images, "seed=1", "log_every=2", "max_steps=4"))
    assert code == 0
    event = json.loads((out / "run.json").read_text())["history"][-1]
    assert event["event"] == "resumed" and event["step"] == 3
    assert event["accepted_changes"] == {"seed": {"from": 0, "to": 1}}
    assert "seed: 1" in (out / "config.yaml").read_text()


KILL_IN_LOG_REWRITE = textwrap.dedent("""
    import os, signal, sys
    import hieralab.files as files
    from conftest import run_pretrain

    real = files.atomic_write
    def rewrite_then_die(path, write, **kw):
        if str(path).endswith("log.csv"):  # the resume's rewrite of the log: half of it, then kill -9
            tmp = str(path) + ".half"
            write(tmp)
            with open(tmp, "r+b") as f:
                f.truncate(os.path.getsize(tmp) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, write, **kw)
    files.atomic_write = rewrite_then_die
    run_pretrain(sys.argv[1:], resume=True)
""")


def test_a_kill_while_resume_rewrites_the_log_loses_nothing(tmp_path, images):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_pretrain(pretrain_args(full, images, "ckpt_every=3"))
    run_pretrain(pretrain_args(cut, images, "ckpt_every=3", "max_steps=5"))
    history = (cut / "log.csv").read_text()
    proc = subprocess.run([sys.executable, "-c", KILL_IN_LOG_REWRITE, *pretrain_args(cut, images, "ckpt_every=3")],
                          capture_output=True, cwd=Path(__file__).parent, timeout=300)
    assert proc.returncode == -9
    assert (cut / "log.csv").read_text() == history  # the old log, whole
    with open(cut / "log.csv", "a") as f:
        f.write("6,0.5")  # and a row a kill cut short while it was appended
    run_pretrain(pretrain_args(cut, images, "ckpt_every=3"), resume=True)
    assert losses(cut) == losses(full)  # rows after the checkpoint recomputed, the cut row gone


# ---------------------------------------------------------------- checkpoints: corrupt, pickled, orphans
def test_a_corrupt_newest_checkpoint_is_skipped_and_orphans_are_removed(tmp_path, images, caplog):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_pretrain(pretrain_args(full, images, "ckpt_every=2"))
    run_pretrain(pretrain_args(cut, images, "ckpt_every=2", "max_steps=6", "keep_last=3"))
    ckpts = cut / "checkpoints"
    weights = ckpts / "step-0000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with open(ckpts / "step-0000004" / "optimizer.pt", "wb") as f:  # objects torch would have to unpickle
        pickle.dump({"state": {}, "param_groups": [], "x": Exception("not a tensor")}, f)
    (ckpts / ".step-0000008-x1y2.tmp").mkdir()  # an interrupted save, this version's name ...
    (ckpts / ".step-0000009-abcd").mkdir()  # ... and an older version's
    (cut / ".summary.json.k3j2.tmp").write_text("{")
    with caplog.at_level("INFO"):
        run_pretrain(pretrain_args(cut, images, "ckpt_every=2"), resume=True)
    text = caplog.text
    assert "skipping corrupt checkpoint step-0000006" in text and "not a readable safetensors file" in text
    assert "skipping corrupt checkpoint step-0000004" in text and "holds pickled Python objects" in text
    assert "weights_only=False" not in text  # torch's advice to unpickle is not passed on
    assert "resuming from" in text and "step-0000002" in text
    assert sorted(p.name for p in (ckpts / "discarded").iterdir()) == ["step-0000004-corrupt", "step-0000006-corrupt"]
    assert not any(p.name.startswith(".") for p in [*ckpts.iterdir(), *cut.iterdir()] if p.name != ".lock")
    assert losses(cut) == losses(full)  # resumed from step 2, exactly


# ---------------------------------------------------------------- divergence
def test_divergence_names_a_good_checkpoint_that_resumes_with_the_suggested_lr(tmp_path, images):
    out = tmp_path / "r"
    wild = pretrain_args(out, images, "optim.base_lr=1e6", "ckpt_every=1", "epochs=3")
    with pytest.raises(DivergedError) as e:
        run_pretrain(wild)
    message = str(e.value)
    named = Path(re.search(r"last good checkpoint is (\S+);", message)[1])
    lower, key = re.search(r"add --resume (\S+) --accept-changes (\S+)", message).groups()
    newest = checkpoints.latest(out / "checkpoints")
    assert newest != named  # the newest checkpoint holds weights the lr already blew up ...
    blown = load_file(str(newest / "model.safetensors"))
    assert max(v.abs().max().item() for v in blown.values()) > 100
    good = load_file(str(named / "model.safetensors"))  # ... the named one does not
    assert all(torch.isfinite(v).all() for v in good.values()) and max(v.abs().max() for v in good.values()) < 10
    summary = run_pretrain([*wild, lower], resume=True, accept_changes=[key])
    assert summary["steps"] == 15 and all(torch.isfinite(torch.tensor(v)) for _, v in losses(out))
    history = json.loads((out / "run.json").read_text())["history"]
    assert history[-1]["step"] == int(named.name.split("-")[1])  # resumed from the named checkpoint


# ---------------------------------------------------------------- data that yields nothing
def test_data_with_no_readable_sample_and_a_mask_that_hides_nothing_are_refused(tmp_path, images, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(5):
        (bad / f"{i}.png").write_bytes(b"not a png")
    code, errors = cli(capsys, "pretrain", *pretrain_args(tmp_path / "a", bad))
    assert code == 1 and "none of the 5 files of the data can be read" in errors[0] and "0.png" in errors[0]
    clips = tmp_path / "clips.csv"
    clips.write_text("path,label\nmissing1.mp4,a\nmissing2.mp4,b\n")
    code, errors = cli(capsys, "pretrain", "model=mae_hiera_mini_8x32", f"data.source={clips}", "data.num_workers=0",
                       f"out_dir={tmp_path / 'v'}")
    assert code == 1 and "none of the 2 files" in errors[0] and "missing1.mp4" in errors[0]
    for ratio in ("mask_ratio=0", "model_args.mask_ratio=0"):
        code, errors = cli(capsys, "pretrain", *pretrain_args(tmp_path / "m", images), ratio)
        assert code == 1 and len(errors) == 1 and "mask_ratio" in errors[0] and "(0, 1)" in errors[0]
    assert not any((tmp_path / d).exists() for d in ("a", "v", "m"))  # refused runs leave no folder


# ---------------------------------------------------------------- a full disk
@pytest.mark.parametrize("fail", ["safetensors", "torch.save", "tensorboard"])
def test_a_full_disk_is_one_line_and_earlier_checkpoints_stay(tmp_path, images, capsys, monkeypatch, fail):
    import hieralab.engine.checkpoints as ck
    from hieralab.engine.run_log import RunLog

    def full(*a, **k):
        if fail == "safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    if fail == "tensorboard":  # between checkpoints: the event writer's disk fills
        real_write = RunLog.write

        def write(self, row):
            if row["step"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(self, row)

        monkeypatch.setattr(RunLog, "write", write)
    else:  # while the step-4 checkpoint is written
        real_save = ck.save

        def save(folder, step, *a, **k):
            if step == 4:
                monkeypatch.setattr(*((ck, "save_file") if fail == "safetensors" else (torch, "save")), full)
            return real_save(folder, step, *a, **k)

        monkeypatch.setattr(ck, "save", save)
    out = tmp_path / "r"
    code, errors = cli(capsys, "pretrain", *pretrain_args(out, images, "ckpt_every=2"))
    assert code == 1 and len(errors) == 1 and "disk full while writing" in errors[0]
    assert ("step-0000004" in errors[0]) if fail != "tensorboard" else ("log.csv and tb/" in errors[0])
    assert "newest: step-0000002" in errors[0] and "--resume" in errors[0] and "inline_container" not in errors[0]
    assert checkpoints.list_steps(out / "checkpoints") == [2]
    checkpoints.load(out / "checkpoints" / "step-0000002", tiny_mae())  # intact
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- files respect the umask
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_files_respect_the_umask(tmp_path, images, mask, mode):
    old = os.umask(mask)
    try:
        run_pretrain(pretrain_args(tmp_path / "r", images, "max_steps=2"))
    finally:
        os.umask(old)
    out = tmp_path / "r"
    written = [out / n for n in ("config.yaml", "run.json", "summary.json", "log.csv", "loss_curve.png",
                                 "model/model.safetensors", "encoder/config.json", "reconstructions/overview.png")]
    written += list((out / "checkpoints" / "step-0000002").iterdir())
    assert {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in written} == \
        {str(p.relative_to(out)): oct(mode) for p in written}
    assert (out / "checkpoints" / "step-0000002").stat().st_mode & 0o777 == 0o777 & ~mask


# ---------------------------------------------------------------- the log's header grows without losing rows
def test_log_rows_survive_a_new_column(tmp_path):
    from hieralab.engine.run_log import RunLog

    log = RunLog(tmp_path, tensorboard=False)
    log.write({"step": 1, "loss": 1.0})
    log.write({"step": 2, "loss": 0.5, "val_top1": 50.0})
    log.write({"step": 3, "loss": 0.4})
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3"] and rows[1]["val_top1"] == "50.0" and rows[2]["val_top1"] == ""
    again = RunLog(tmp_path, resume_step=2, tensorboard=False)
    again.write({"step": 3, "loss": 0.3})
    assert [r["loss"] for r in csv.DictReader(open(tmp_path / "log.csv"))] == ["1.0", "0.5", "0.3"]

