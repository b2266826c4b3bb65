"""Run a launched notebook script while recording every file this process opens for writing (for test_distributed).

Used as the launcher's script: ``torchrun --nproc_per_node 2 tests/launch_audit.py <script>``. Each rank
writes the sorted list of paths it opened for writing to ``$WRITE_AUDIT_DIR/rank<RANK>.json``.
"""

from __future__ import annotations

import json
import os
import runpy
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
opened_for_writing: set[str] = set()


def record_writes(event: str, args: tuple) -> None:
    """Audit hook: keep the path of every ``open`` that can write (builtins.open modes and os.open flags)."""
    if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    mode = args[1] if len(args) > 1 else None
    flags = args[2] if len(args) > 2 else 0
    if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & WRITE_FLAGS):
        opened_for_writing.add(os.path.abspath(os.fsdecode(args[0])))


if __name__ == "__main__":
    report = os.path.join(os.environ["WRITE_AUDIT_DIR"], f"rank{os.environ.get('RANK', '0')}.json")
    script, sys.argv = sys.argv[1], sys.argv[1:]
    sys.addaudithook(record_writes)
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        written = sorted(opened_for_writing)
        with open(report, "w") as handle:  # recorded too, outside the run folder
            json.dump(written, handle)
