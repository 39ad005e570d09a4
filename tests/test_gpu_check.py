"""``benchmarks/gpu_check.py --dry-run``: the GPU check's own code on tiny models on the CPU, so it still runs the
day a GPU is lent (parity, bf16 training steps eager and compiled through the tasks, torchrun, throughput)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_dry_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    checks = {r["check"]: r for r in report["rows"]}
    assert checks["parity fp32 (hiera_tiny_224, cpu)"]["fp32_max_error"] <= 1e-5
    for task in ("pretrain", "finetune"):
        for mode in ("eager", "compiled"):
            assert checks[f"{task} bf16 {mode}"]["ok"] and len(checks[f"{task} bf16 {mode}"]["losses"]) == 3
    assert checks["torchrun DDP, 1 process"]["ok"]
    assert any(r.get("table") for r in report["rows"])
    text = out.with_suffix(".md").read_text()
    assert "| check | result |" in text and "FAIL" not in text
