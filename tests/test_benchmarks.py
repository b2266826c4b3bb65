"""The benchmark scripts run and report every figure (they time nothing inside the suite)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_script(name: str):
    """Import a benchmark script as a module (its folder on the path, as when it runs as a script)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_collator_throughput_reports_each_collator_and_the_training_step(tmp_path, capsys):
    results = load_script("collator_throughput").main(["--batches", "2", "--batch-size", "2", "--model-dir", str(tmp_path)])
    assert set(results) == {"vision+padding masking", "assistant-only", "padding-free", "training step"}
    assert all(rate > 0 for rate in results.values())
    assert "vs training" in capsys.readouterr().out


def test_eval_throughput_reports_both_modes_and_their_ratio(tmp_path, capsys):
    results = load_script("eval_throughput").main(["--images", "4", "--batch-size", "2", "--max-new-tokens", "4", "--model-dir", str(tmp_path)])
    assert results["ratio"] == results["batched"] / results["one-by-one"]
    assert "identical answers: True" in capsys.readouterr().out
