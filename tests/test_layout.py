"""Property tests of the pure token-layout functions."""

import math

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hieralab.models.layout import gather_units, pool_level, reroll, scatter_units, units_to_windows, unroll


@st.composite
def layouts(draw):
    ndim = draw(st.sampled_from([2, 3]))
    levels = draw(st.integers(0, 3))
    schedule = [tuple(draw(st.sampled_from([1, 2, 3])) for _ in range(ndim)) for _ in range(levels)]
    num_units = [draw(st.integers(1, 3)) for _ in range(ndim)]
    grid = [num_units[d] * math.prod(s[d] for s in schedule) for d in range(ndim)]
    return ndim, schedule, num_units, grid, draw(st.integers(1, 2)), draw(st.integers(1, 3))


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_reroll_undoes_unroll(case):
    ndim, schedule, num_units, grid, B, C = case
    x = torch.randn(B, *grid, C)
    tokens = unroll(x, num_units, schedule)
    assert tokens.shape == (B, math.prod(num_units), math.prod(grid) // math.prod(num_units), C)
    assert torch.equal(reroll(tokens, num_units, schedule), x)


@settings(max_examples=40, deadline=None)
@given(layouts())
def test_units_hold_their_spatial_window(case):
    ndim, schedule, num_units, grid, B, C = case
    x = torch.randn(B, *grid, C)
    windows = units_to_windows(unroll(x, num_units, schedule), schedule, ndim)  # [B, #MU, *mu, C]
    mu = [g // n for g, n in zip(grid, num_units)]
    assert windows.shape == (B, math.prod(num_units), *mu, C)
    for u, idx in enumerate(torch.cartesian_prod(*[torch.arange(n) for n in num_units]).view(-1, ndim).tolist()):
        region = x[(slice(None), *[slice(i * m, (i + 1) * m) for i, m in zip(idx, mu)])]
        assert torch.equal(windows[:, u], region)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))
def test_pooling_a_level_is_a_max_pool_of_the_grid(levels, mu_h, mu_w):
    schedule = [(2, 2)] * levels
    num_units = [mu_h, mu_w]
    side = [n * 2**levels for n in num_units]
    x = torch.randn(2, *side, 5)
    pooled = pool_level(unroll(x, num_units, schedule), 4)
    expected = F.max_pool2d(x.movedim(-1, 1), 2).movedim(1, -1)
    assert torch.equal(reroll(pooled, num_units, schedule[1:]), expected)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(2, 9), st.integers(1, 8), st.data())
def test_gather_and_scatter_of_visible_units_are_inverse(batch, units, tail, data):
    keep = data.draw(st.integers(1, units))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    visible = torch.rand(batch, units, generator=g).argsort(1) < keep  # [B, N], `keep` True per row
    x = torch.randn(batch, units, tail, 3, generator=g)  # [B, N, ...]
    kept = gather_units(x, visible)
    assert kept.shape == (batch, keep, tail, 3)
    for b in range(batch):  # the visible units, in their order
        assert torch.equal(kept[b], x[b][visible[b]])
    fill = torch.full((1, 1, tail, 3), -7.0)
    full = scatter_units(fill, kept, visible)
    assert torch.equal(full[visible], x[visible]) and (full[~visible] == -7).all()


def test_pool_level_is_max_or_mean_over_the_finest_level():
    x = torch.randn(2, 3, 5, 8, 4)  # any leading axes; [..., L, C] with L = 8
    assert torch.equal(pool_level(x, 4), x.unflatten(-2, (4, 2)).amax(-3))
    torch.testing.assert_close(pool_level(x, 2, "mean"), x.unflatten(-2, (2, 4)).mean(-3))
    assert pool_level(x, 1) is x
