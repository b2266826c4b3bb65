"""The same notebook under a launcher: rank awareness, distributed evaluation, and 2 gloo processes against one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
import torch

from helpers.runtime import distributed
from helpers.run_notebook import NOTEBOOK_PATH, SCRIPT_NAME, notebook_script
from helpers.train.config import device_defaults

REPO_ROOT = Path(__file__).resolve().parent.parent


def as_rank(monkeypatch, rank: int, world: int) -> None:
    """Pretend to be ``rank`` of ``world`` processes, as a launcher's environment says."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


@pytest.mark.parametrize(
    "n_items,world,shards",
    [
        (8, 1, [[0, 1, 2, 3, 4, 5, 6, 7]]),
        (8, 2, [[0, 2, 4, 6], [1, 3, 5, 7]]),
        (7, 2, [[0, 2, 4, 6], [1, 3, 5, 6]]),  # rank 1 repeats the last item so both run as many batches
        (5, 3, [[0, 3], [1, 4], [2, 4]]),
        (1, 4, [[0], [0], [0], [0]]),
        (0, 2, [[], []]),
    ],
)
def test_each_rank_evaluates_its_share_and_gets_everything_back_in_order(monkeypatch, n_items, world, shards):
    for rank, expected in enumerate(shards):
        as_rank(monkeypatch, rank, world)
        assert distributed.shard_indices(n_items) == expected
    # Each rank's results are its indices; all_gather_object hands every rank all of them.
    monkeypatch.setattr(torch.distributed, "all_gather_object", lambda out, mine: out.__setitem__(slice(None), shards))
    assert distributed.gather_in_order(shards[0], n_items) == list(range(n_items))


def test_one_process_is_rank_0_of_1_and_writes(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process(), distributed.is_distributed()) == (0, 1, True, False)
    assert distributed.gather_in_order(["a", "b"], 2) == ["a", "b"]
    with distributed.main_process_first():  # no process group: no barrier
        pass


def test_other_ranks_write_no_run_files(monkeypatch, tmp_path):
    from helpers.runtime.run_folder import prepare_run_dir, write_json, write_jsonl

    as_rank(monkeypatch, 1, 2)
    run_dir = prepare_run_dir(tmp_path, "run")
    write_json(run_dir / "a.json", {"x": 1})
    write_jsonl(run_dir / "b.jsonl", [{"x": 1}])
    assert not tmp_path.joinpath("run").exists()


def test_cpu_processes_under_a_launcher_train_with_gloo_ddp(monkeypatch):
    as_rank(monkeypatch, 0, 2)
    assert device_defaults("cpu", torch.float32)["use_cpu"] is True
    as_rank(monkeypatch, 0, 1)
    assert "use_cpu" not in device_defaults("cpu", torch.float32)  # one process: as before


def test_under_fsdp_the_engine_checkpoints_activations_not_the_trainer(monkeypatch):
    assert device_defaults("cuda:0", torch.bfloat16)["activation_checkpointing"] is True
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch sets for configs/fsdp2.yaml
    assert device_defaults("cuda:0", torch.bfloat16)["activation_checkpointing"] is False


def test_the_script_is_the_notebook_with_the_parameters_injected():
    notebook = jupytext.read(NOTEBOOK_PATH)
    script = notebook_script(notebook, {"max_steps": 3, "run_name": "x"})
    parameters_cell = script.index("model_id: Annotated[str, NON_EMPTY]")
    injected = script.index("# Parameters\nmax_steps = 3\nrun_name = \"x\"")
    assert parameters_cell < injected < script.index("notebook_parameters(globals())")
    compile(script, SCRIPT_NAME, "exec")  # plain Python: no magics


LAUNCH_OVERRIDES = ["-p", "max_steps", "6", "-p", "eval_steps", "3", "-p", "save_steps", "6", "-p", "logging_steps", "1",
                    "-p", "test_size", "4", "-p", "max_new_tokens", "24", "-p", "iou_eval_images", "4",
                    "-p", "per_device_train_batch_size", "4", "-p", "per_device_eval_batch_size", "4"]


def launched_run(
    tmp_path: Path, name: str, processes: int, accumulation: int, augmentation: str = "none", extra: tuple[str, ...] = (),
) -> tuple[Path, dict]:
    """The smoke preset through the documented launch command; returns the run folder and each rank's written files."""
    audit = tmp_path / f"audit-{name}"
    audit.mkdir()
    launcher = f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node {processes} tests/launch_audit.py"
    command = [sys.executable, "-m", "helpers.run_notebook", "--preset", "params/offline_smoke.yaml", *LAUNCH_OVERRIDES,
               "-p", "gradient_accumulation_steps", str(accumulation), "-p", "augmentation", augmentation, "-p", "run_name", name, "-p", "output_root", str(tmp_path / "outputs"),
               "-p", "offline_model_dir", str(tmp_path / "outputs" / ".offline_models"), *extra, "--launch", launcher]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "WRITE_AUDIT_DIR": str(audit)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    writes = {int(path.stem.removeprefix("rank")): json.loads(path.read_text()) for path in audit.glob("rank*.json")}
    return tmp_path / "outputs" / name, writes


TRAINER_RANK_FILES = re.compile(r"checkpoints/checkpoint-\d+/rng_state(_\d+)?\.pth$")  # each process's RNG, for resuming


def run_files(run_dir: Path) -> set[str]:
    """Every file of a run folder, relative to it, the trainer's per-process RNG files counted as one."""
    return {re.sub(r"rng_state_\d+", "rng_state", str(path.relative_to(run_dir))) for path in run_dir.rglob("*") if path.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("augmentation", ["none", "standard"])  # augmented samples are seeded per sample, not per process
def test_two_gloo_processes_equal_one_process_with_the_same_effective_batch(tmp_path, augmentation):
    one_dir, _ = launched_run(tmp_path, "one", processes=1, accumulation=2, augmentation=augmentation)
    two_dir, writes = launched_run(tmp_path, "two", processes=2, accumulation=1, augmentation=augmentation)
    one_report, two_report = (json.loads((d / "data_report.json").read_text()) for d in (one_dir, two_dir))
    assert two_report == one_report  # augmentation's counts summed over both processes
    one_log = json.loads((one_dir / "log_history.json").read_text())
    two_log = json.loads((two_dir / "log_history.json").read_text())
    losses = [[entry["loss"] for entry in log if "loss" in entry] for log in (one_log, two_log)]
    assert len(losses[0]) == 6 and losses[1] == pytest.approx(losses[0], abs=1e-5)
    eval_losses = [[entry["eval_loss"] for entry in log if "eval_loss" in entry] for log in (one_log, two_log)]
    assert eval_losses[1] == pytest.approx(eval_losses[0], abs=1e-5)
    one_metrics, two_metrics = (json.loads((d / "metrics.json").read_text()) for d in (one_dir, two_dir))
    for stage in ("baseline", "finetuned"):
        scalars = {k: v for k, v in one_metrics[stage].items() if isinstance(v, (int, float))}
        assert {k: two_metrics[stage][k] for k in scalars} == pytest.approx(scalars, abs=1e-5, nan_ok=True)
    one_predictions = (one_dir / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["image_id"] for line in (two_dir / "predictions.jsonl").read_text().splitlines()] == \
        [json.loads(line)["image_id"] for line in one_predictions]  # gathered back in the test set's order
    assert run_files(two_dir) == run_files(one_dir)  # the run folder is complete
    assert sorted(writes) == [0, 1]
    # Rank 1 writes nothing of the run folder but, at most, the trainer's record of its own RNG in each checkpoint
    # (torch.save opens that file in C++, out of the audit's sight); rank 0's writes show the audit sees Python's opens.
    rank_1_writes = [path for path in writes[1] if path.startswith(str(two_dir))]
    assert all(TRAINER_RANK_FILES.search(path) and path.endswith("_1.pth") for path in rank_1_writes), rank_1_writes
    assert any(path.endswith("metrics.json") for path in writes[0])


@pytest.mark.slow
def test_the_grpo_stage_runs_under_the_launcher(tmp_path):
    # Two gloo processes: each samples its share of the rollouts, the reference model is written once, the stage's
    # log, reward and weights land in the run folder as with one process.
    run_dir, writes = launched_run(tmp_path, "grpo", processes=2, accumulation=1,
                                   extra=("-p", "grpo_steps", "2", "-p", "grpo_generations", "2", "-p", "grpo_max_completion_length", "16"))
    history = json.loads((run_dir / "grpo_log_history.json").read_text())
    assert [entry["step"] for entry in history if "reward" in entry] == [1, 2]
    assert "grpo" in json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "grpo_checkpoints" / "reference" / "model.safetensors").is_file() and (run_dir / "model" / "model.safetensors").is_file()
    assert not [path for path in writes[1] if path.startswith(str(run_dir)) and "reference" in path]  # written by rank 0 alone
