"""The run's ground, used by every stage: processes, device, run folder, parameter checks, logging backends."""

from helpers.runtime.entry_points import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "checks": ("expand_path",),
    "console": ("quiet_known_warnings",),
    "device": ("pick_device_and_dtype", "clear_memory", "reset_peak_memory", "peak_memory_report", "release_model"),
    "distributed": ("main_process_first", "quiet_unless_main", "start_process_group", "barrier", "is_main_process"),
    "run_folder": ("prepare_run_dir", "environment_report", "write_json", "write_jsonl", "is_headless"),
    "tracking": ("configure_reporting",),
})
