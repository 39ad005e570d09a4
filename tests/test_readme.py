"""The README keeps its word: every ``hieralab ...`` command it shows parses with today's command line and names only
config keys, presets and flags that exist; its Python blocks run as written (on files this test makes where a block
names a downloaded checkpoint) and say what they print; the facts it states about the package hold."""

import re
import shlex
from pathlib import Path

import pytest
import torch

import hieralab
from hieralab.cli import TRAINING, parse
from hieralab.config import load_config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def commands() -> list[str]:
    """The example of every row of the README's command table (its second column), and the commands of the
    README's bash blocks."""
    rows = [line.split(" | ")[1] for line in README.splitlines() if line.startswith("| ") and line.count(" | ") >= 2]
    found = [c for cell in rows for c in re.findall(r"`((?:hieralab|torchrun) [^`]*)`", cell)]
    found += [line.strip() for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S)
              for line in block.splitlines() if line.strip().startswith("hieralab ")]
    found = [c.split("  #")[0].strip() for c in found]
    return sorted({c.split("-m hieralab.cli ", 1)[-1] if c.startswith("torchrun") else c for c in found})


@pytest.mark.parametrize("command", commands())
def test_every_readme_command_parses_and_names_real_keys(command):
    argv = shlex.split(command)
    argv = argv[1:] if argv[0] == "hieralab" else argv
    args = parse(argv)
    if getattr(args, "kind", None) == TRAINING:  # its preset and every key=value exist, with allowed values
        from hieralab.tasks import TASKS

        task = TASKS[args.command]
        # paths the example names (a user's folders) need not exist here; keys and values are what is checked
        load_config(task.config, args.preset, list(args.overrides), task=task.name)


def test_the_readme_names_the_commands_the_cli_has():
    from hieralab.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        assert f"hieralab {name}" in README, f"hieralab {name} is not in the README"


def python_blocks() -> list[str]:
    start = README.index("## Using the library")
    end = README.index("## Command line")
    return re.findall(r"```python\n(.*?)```", README[start:end], flags=re.S)


def test_the_library_blocks_run_as_written(tmp_path, monkeypatch):
    """The "Using the library" blocks, in order and in one namespace, in a folder holding the checkpoint files they
    name (made here from the official package's own models: the layouts a user downloads)."""
    import hiera

    from hieralab.bench import logits_only

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    official = logits_only(hiera.hiera_base_224())
    torch.save({"model_state": official.state_dict()}, "hiera_base_224.pth")
    torch.save({"model_state": hiera.mae_hiera_base_224().state_dict()}, "mae_hiera_base_224.pth")
    t2t = hieralab.create_model("t2t_vit_14")
    torch.save({"state_dict_ema": t2t.state_dict()}, "81.5_T2T_ViT_14.pth.tar")
    # the weights a block takes by name, already in the cache (as after `hieralab weights download`)
    monkeypatch.setenv("HIERALAB_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "downloads" / "dl.fbaipublicfiles.com" / "hiera" / "hiera_base_224.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(Path("hiera_base_224.pth").read_bytes())
    namespace: dict = {}
    blocks = python_blocks()
    assert len(blocks) >= 4
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    # what the comments promise
    assert namespace["logits"].shape == (1, 1000)
    assert [m.shape[1] for m in namespace["maps"]] == [96, 192, 384, 768]
    assert namespace["out"].pred.shape == (2, 196, 768) and namespace["out"].visible.shape == (2, 49)
    assert namespace["body"].feature_info.reduction() == [4, 8, 16, 32]


def test_the_facts_the_readme_states():
    assert hieralab.list_models()[0].startswith(("hiera", "mae_", "sam2", "t2t", "vit"))  # encoders, not wrappers
    assert "detector" not in hieralab.list_models()
    mae = hieralab.create_model("mae_hiera_mini_32")
    visible = mae.random_visible(torch.zeros(1, 3, 32, 32), generator=torch.Generator().manual_seed(0))[0]
    hidden = 1 - visible.float().mean().item()
    # the README states the count the demo's pictures show
    match = re.search(r"\((\d+) of the (\d+) 8x8-px mask units hidden: ([\d.]+) %", README)
    assert match and int(match.group(2)) == visible.numel() and int(match.group(1)) == int((~visible).sum())
    assert float(match.group(3)) == pytest.approx(100 * hidden, abs=0.05)
