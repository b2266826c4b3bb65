"""GPU helpers are harmless, and informative, on CPU."""

from __future__ import annotations

import torch

from helpers.runtime.device import clear_memory, device_report, peak_memory_report, reset_peak_memory


def test_cpu_reports():
    report = device_report("cpu", torch.float32)
    assert report == {"device": "cpu", "dtype": "float32", "cpu_threads": torch.get_num_threads()}
    clear_memory()
    reset_peak_memory()
    peak = peak_memory_report()
    if torch.cuda.is_available():
        assert peak["gpu_peak_allocated_gib"] >= 0
    else:
        assert 0 < peak["cpu_peak_rss_gib"] < 64
