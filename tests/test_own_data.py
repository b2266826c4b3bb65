"""The own-data walkthrough of docs/own_data.md, run as written, from a copy of the repository: data, training, boxes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.run_notebook import REPO_ROOT

MARKER = "<!-- own-data walkthrough"


def walkthrough_commands() -> list[str]:
    """The shell lines of the fenced block that follows the walkthrough marker in docs/own_data.md."""
    text = (REPO_ROOT / "docs" / "own_data.md").read_text()
    block = text[text.index(MARKER):].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def repository_copy(folder: Path) -> Path:
    """The files of the checkout git does not ignore, copied into ``folder``, with this environment as its .venv."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO_ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, folder / name)
    (folder / ".venv").symlink_to(Path(sys.prefix))  # the environment make built (or the one running the tests)
    return folder


def test_the_walkthrough_has_the_three_steps():
    commands = walkthrough_commands()
    assert [c.split()[1] for c in commands] == ["examples/make_example_data.py", "-m", "-m"]
    assert "helpers.run_notebook" in commands[1] and "helpers.detect" in commands[2]


@pytest.mark.slow
def test_the_own_data_walkthrough_runs_as_written(tmp_path):
    root = repository_copy(tmp_path / "checkout")
    outputs = []
    for command in walkthrough_commands():
        done = subprocess.run(["bash", "-c", command], cwd=root, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    report = json.loads(outputs[2][: outputs[2].rindex("}") + 1])
    assert set(report) == {"boxes", "raw_answer", "prompt"} and isinstance(report["raw_answer"], str)
    assert report["prompt"].startswith("Detect every blue triangle, green square, red circle in the image.")
    run_dir = root / "outputs" / "my-first-run"
    assert (run_dir / "new_drawn.png").is_file() and (run_dir / "model" / "inference.json").is_file()
    data_report = json.loads((run_dir / "data_report.json").read_text())
    assert data_report["eval"]["notes"] == ["split 'validation' read from the folder's 'valid'"]
    assert data_report["train"]["counts"]["images_loaded"] == 48
