"""optimize_for_inference keeps the outputs; the CLI lists and benchmarks."""

import json

import pytest
import torch

import hieralab
from hieralab import bench as B
from hieralab.cli import main
from hieralab.layers.packed_linear import PackedLinear, onednn_available

TOY = dict(stages=(1, 1, 1, 1))


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear ops")
@pytest.mark.parametrize("name", ["hiera_tiny_224", "hiera_base_16x224", "hiera_small_abswin_256"])
def test_optimize_for_inference_keeps_outputs(name):
    model = hieralab.create_model(name, **TOY).eval()
    fast = hieralab.optimize_for_inference(model)
    assert any(isinstance(m, PackedLinear) for m in fast.modules())
    assert not any(isinstance(m, PackedLinear) for m in model.modules())  # the original is untouched
    for batch in (1, 3):  # a new row count repacks the weights
        x = torch.randn(batch, 3, 4, 64, 64) if model.ndim == 3 else torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)
            final, maps = fast.forward_intermediates(x)
            torch.testing.assert_close(maps[-1], model.forward_intermediates(x)[1][-1], atol=1e-5, rtol=1e-5)


def test_packed_linear_fuses_gelu():
    if not onednn_available():
        pytest.skip("no oneDNN")
    lin = torch.nn.Linear(8, 16)
    x = torch.randn(5, 8)
    torch.testing.assert_close(PackedLinear(lin, act="gelu")(x), torch.nn.functional.gelu(lin(x)), atol=1e-6,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="act must be"):
        PackedLinear(lin, act="relu")


def test_flop_count_matches_the_paper():
    # Hiera-B: 9.4 GMACs at 224 px in Table 2 of the paper, i.e. ~18.8 GFLOPs
    flops = B.count_flops(lambda: hieralab.create_model("hiera_base_224"), (1, 3, 224, 224))
    assert 18.0e9 < flops < 19.5e9


def test_paired_ratio_is_per_round():
    assert B.paired_ratio([2.0, 4.0, 6.0], [1.0, 1.0, 1.0]) == 4.0
    assert B.paired_ratio([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0


def test_cli_list(capsys):
    assert main(["list", "hiera_*_16x224"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and all("16x224" in line for line in out)


def test_cli_bench_counts_and_times(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "--models", "hiera_tiny_224", "--rounds", "1", "--no-official", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "| hiera_tiny_224 | 27.91 |" in text
    rows = json.loads(out_json.read_text())["rows"]
    assert rows[0]["model"] == "hiera_tiny_224" and rows[0]["ours_ms"] > 0 and rows[0]["packed_ms"] > 0


def test_cli_bench_untimed_above_budget_and_unknown_glob(capsys):
    assert main(["bench", "--models", "hiera_huge_16x224", "--max-gflops", "1"]) == 0
    assert "not timed" in capsys.readouterr().out
    assert main(["bench", "--models", "nothing_*"]) == 2
    assert "no registered model matches" in capsys.readouterr().err
