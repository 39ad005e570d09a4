"""torch.compile: every encoder family and the MAE training steps trace as one graph (``fullgraph=True``: no graph
break, no boolean indexing; the kept count is the one size read from the mask) and compute what eager computes.
The fast tests use the ``aot_eager`` backend (Dynamo's trace and AOTAutograd's joint graph, no code generation);
the inductor run (C++ code generation, minutes on 2 cores) is marked slow."""

import pytest
import torch

import hieralab
from hieralab.mae.masking import random_visible

SMALL = {"embed_dim": 16, "num_heads": 1, "stages": [1, 1, 1]}
ENCODERS = [  # (name, model_args, input [B, C, (T,) H, W])
    ("hiera_mini_32", SMALL, (2, 3, 32, 32)),
    ("hiera_mini_8x32", SMALL, (2, 3, 8, 32, 32)),
    ("vit_micro_patch4_32", {"depth": 2}, (2, 3, 32, 32)),
    ("t2t_vit_mini_32", {"depth": 1}, (2, 3, 32, 32)),
    ("t2t_vit_t_mini_32", {"depth": 1}, (2, 3, 32, 32)),
]
MAES = [  # (name, model_args, input, mask units)
    ("mae_hiera_mini_32", {**SMALL, "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 1},
     (2, 3, 32, 32), 16),
    ("mae_hiera_mini_8x32", {**SMALL, "in_chans": 3, "decoder_embed_dim": 16, "decoder_depth": 1,
                             "decoder_num_heads": 1}, (2, 3, 8, 32, 32), 64),
    ("mae_vit_micro_patch4_32", {"depth": 2, "decoder_depth": 1}, (2, 3, 32, 32), 64),
]


def compiled(model: torch.nn.Module, backend: str = "aot_eager") -> torch.nn.Module:
    torch._dynamo.reset()
    return torch.compile(model, fullgraph=True, backend=backend)


@pytest.mark.parametrize("name,args,shape", ENCODERS, ids=[e[0] for e in ENCODERS])
def test_encoders_compile_as_one_graph(name, args, shape):
    torch.manual_seed(0)
    model = hieralab.create_model(name, **args).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.allclose(compiled(model)(x), model(x), atol=1e-5)


@pytest.mark.parametrize("name,args,shape,units", MAES, ids=[m[0] for m in MAES])
def test_mae_training_step_compiles_as_one_graph(name, args, shape, units):
    """Forward and backward of the sparse MAE (gather / scatter of the kept units) through one compiled graph:
    same loss and gradients as eager, and a second mask with the same kept count reuses the graph."""
    torch.manual_seed(0)
    model = hieralab.create_model(name, **args)
    x = torch.randn(shape)
    g = torch.Generator().manual_seed(0)
    visible = random_visible(shape[0], units, 0.75, generator=g)
    eager = model(x, visible).loss
    eager.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    fast = compiled(model)
    loss = fast(x, visible).loss
    loss.backward()
    assert torch.allclose(loss, eager, atol=1e-6)
    for k, p in model.named_parameters():
        if k in grads:
            assert torch.allclose(p.grad, grads[k], atol=1e-5, rtol=1e-4), k
    other = random_visible(shape[0], units, 0.75, generator=g)
    with torch.no_grad():
        assert torch.allclose(fast(x, other).loss, model(x, other).loss, atol=1e-6)


@pytest.mark.slow
def test_inductor_mae_step_matches_eager():
    """The real backend: C++ kernels from inductor for the tiny Hiera MAE step."""
    name, args, shape, units = MAES[0]
    torch.manual_seed(0)
    model = hieralab.create_model(name, **args)
    x = torch.randn(shape)
    visible = random_visible(shape[0], units, 0.6, generator=torch.Generator().manual_seed(0))
    eager = model(x, visible).loss
    loss = compiled(model, "inductor")(x, visible).loss
    loss.backward()
    assert torch.allclose(loss, eager, atol=1e-5)
