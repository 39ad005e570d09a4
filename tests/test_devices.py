"""Device mistakes caught without a GPU: every registered model's forward runs on a fake CUDA device
(``FakeTensorMode``: no memory, no kernels, but device rules enforced), and forward + backward on fake tensors of
the meta device (the autograd engine needs a real CUDA runtime for CUDA backward). A tensor a model creates on
the CPU by mistake (``torch.zeros(n)`` without ``device=``) and mixes with the input fails here as it would on a
GPU, at CI time. The MAE training step too."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

import hieralab
from hieralab.mae import targets

SMALL = {"stages": (1,), "depth": 1}


def small(name: str) -> torch.nn.Module:
    """A toy of ``name``'s class: one block a stage (Hiera), one block (ViTs), a one-block MAE decoder."""
    cfg = hieralab.model_config(name)
    args = {"stages": (1,) * len(cfg["stages"])} if "stages" in cfg else {"depth": 1}
    if name.startswith("mae_"):
        args.update(decoder_depth=1)
    return hieralab.create_model(name, **args)


def example(model: torch.nn.Module, device: str) -> torch.Tensor:
    """An input of the model's own size (fake tensors cost nothing, so the 16x224 video models take 16 frames)."""
    enc = getattr(model, "encoder", model)
    size = enc.config.get("input_size") or enc.config.get("img_size") or 224  # Hiera's; the ViTs'
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return torch.randn(2, enc.in_chans, *size, device=device)


def run(name: str, device: str, backward: bool) -> torch.Tensor:
    """Build ``small(name)`` on the meta device (no init: fast), give it fake storage on ``device``, run a training
    forward (and backward)."""
    with torch.device("meta"):
        model = small(name).train()
    with FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv()):
        model = model.to_empty(device=device)
        x = example(model, device)
        out = model(x)
        loss = out.loss if hasattr(out, "loss") else out.float().logsumexp(-1).mean()
        if backward:
            loss.backward()
            assert all(p.grad is None or p.grad.device.type == device for p in model.parameters())
        return loss


MODELS = [n for n in hieralab.list_models() if not getattr(hieralab.models.registry.model_class(n), "is_dense", False)]
# The MAE sizes differ only in widths and depths (one of each kind runs by default; all with -m slow): their traced
# step is the slowest here
DEFAULT_MAE = ("mae_hiera_tiny_224", "mae_hiera_base_16x224", "mae_hiera_mini_32", "mae_hiera_mini_8x32")
SAME_CODE = {n for n in MODELS if n.startswith("mae_hiera_") and n not in DEFAULT_MAE}
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n in SAME_CODE else n for n in MODELS]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_stays_on_its_device(name):
    assert run(name, "cuda", backward=False).device.type == "cuda"
    assert run(name, "meta", backward=True).device.type == "meta"


def test_a_tensor_made_on_the_wrong_device_is_caught(monkeypatch):
    real = targets.masked_mse

    def careless(pred, target, visible_patches):  # a CPU tensor where the model's device was meant
        per_sample = pred.flatten(1).mean(1) * torch.zeros(pred.shape[0])  # [B] on the CPU: a device mistake
        return real(pred, target, visible_patches) + per_sample.sum()

    monkeypatch.setattr(targets, "masked_mse", careless)
    with pytest.raises(Exception, match="device"):
        run("mae_hiera_mini_32", "cuda", backward=False)
