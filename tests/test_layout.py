"""Property tests of the pure token-layout functions."""

import math

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hieralab.models.layout import pool_level, reroll, units_to_windows, unroll


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
