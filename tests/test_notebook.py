"""The notebook's shape, its presets, and the headless run end to end on the offline profile."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import time
from pathlib import Path

import jupytext
import nbformat
import psutil
import pytest
import yaml

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.parameters import check_notebook_parameters
from helpers.data.synthetic import make_synthetic_dataset
from helpers.data.sources import IMAGE_CACHE_FOLDER
from helpers.data.writers import write_coco_split, write_yolo_split
from helpers.run_notebook import NOTEBOOK_PATH, REPO_ROOT, TOOL_CACHE, notebook_declarations, resolve_parameters
from helpers.evaluate.metrics import (
    AP_50_PER_CLASS, EVAL_MEAN_IOU, MAP_50, MAP_50_95, MAP_75, MEAN_IOU, N_DUPLICATE_BOXES_DROPPED, N_IMAGES, N_LOOPING_ANSWERS,
    PARSE_FAILURE_RATE, PRECISION_50, RECALL_50,
)

NOTEBOOK = jupytext.read(NOTEBOOK_PATH)
SHAPES = ["blue triangle", "green square", "red circle"]  # the synthetic classes, in COCO category order


def parameter_annotations() -> dict:
    """Parameter name -> declared type and rule, from running the parameters cell."""
    return notebook_declarations(NOTEBOOK)[1]


def test_parameters_cell_is_first_and_only_holds_typed_commented_literals():
    code_cells = [c for c in NOTEBOOK.cells if c.cell_type == "code"]
    assert code_cells[0].metadata.get("tags") == ["parameters"]
    assert sum("parameters" in c.metadata.get("tags", []) for c in code_cells) == 1
    lines = [line for line in code_cells[0].source.splitlines() if line.strip() and not line.startswith(("from ", "import "))]
    for line in lines:
        assert re.match(r"^\w+: [\w|\[\], ]+ = .+  # .+", line), f"parameter line needs a type (and rule) and a comment: {line}"
        assert "=" not in line.split("#", 1)[1], f"papermill cannot parse '=' in a parameter comment: {line}"
    for node in ast.parse(code_cells[0].source).body:
        assert isinstance(node, (ast.AnnAssign, ast.ImportFrom))


def test_default_pixel_bounds_are_the_shared_constants(default_params):
    # The parameters cell keeps literals for papermill; tests and benchmarks import helpers.families.processors instead.
    assert (default_params["min_pixels"], default_params["max_pixels"]) == (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)


def test_sections_are_numbered_without_gaps():
    headings = [m.group(1) for c in NOTEBOOK.cells if c.cell_type == "markdown" for m in re.finditer(r"^## (\d+)\. ", c.source, re.M)]
    assert [int(h) for h in headings] == list(range(1, len(headings) + 1))
    assert len(headings) >= 10


@pytest.mark.parametrize("preset", sorted((REPO_ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_presets_use_known_names_and_types(preset, default_params):
    values = resolve_parameters(default_params, yaml.safe_load(preset.read_text()), {})
    check_notebook_parameters(values, parameter_annotations())


def test_runner_rejects_unknown_names_before_starting_a_kernel(default_params):
    with pytest.raises(SystemExit, match=r"unknown parameters \['lerning_rate'\]"):
        resolve_parameters(default_params, {}, {"lerning_rate": 0.1})


@pytest.mark.slow
def test_wrong_parameter_type_stops_in_the_check_cell(tmp_path, run_notebook):
    result = run_notebook(tmp_path, "max_steps=ten")
    assert result.returncode != 0
    assert "parameter max_steps='ten' is str" in result.stdout + result.stderr


def synthetic_coco_folder(root: Path) -> Path:
    """The smoke preset's synthetic splits written as a COCO folder, two train images missing."""
    splits = {"train": (32, 2), "valid": (8, 0), "test": (8, 0)}
    for offset, (split, (size, missing)) in enumerate(splits.items()):
        write_coco_split(make_synthetic_dataset(size + missing, seed=100 + offset), root, split, SHAPES, missing_images=missing)
    return root


def synthetic_yolo_folder(root: Path) -> Path:
    """The smoke preset's synthetic splits written as an Ultralytics YOLO folder (its validation split is 'val')."""
    for offset, (split, size) in enumerate({"train": 32, "val": 8, "test": 8}.items()):
        write_yolo_split(make_synthetic_dataset(size, seed=100 + offset), root, split, SHAPES)
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_id,source",
    [("offline:qwen2_vl", "synthetic"), ("offline:qwen2_5_vl", "coco"), ("offline:qwen2_vl", "yolo")],
    ids=["qwen2_vl-synthetic", "qwen2_5_vl-coco", "qwen2_vl-yolo"],
)
def test_offline_run_end_to_end(tmp_path, model_id, source, run_notebook):
    repo_entries_before = sorted(p.name for p in REPO_ROOT.iterdir())
    data_dir = tmp_path.parent / f"{tmp_path.name}-data"  # outside tmp_path, which must hold only the run
    overrides = [f"model_id={model_id}"]
    if source == "coco":
        overrides += [f"dataset_source={synthetic_coco_folder(data_dir)}", "eval_split=valid", "train_size=0", "eval_size=0", "test_size=0"]
    if source == "yolo":  # eval_split stays 'validation': the folder's 'val' is found and named in the report
        overrides += [f"dataset_source={synthetic_yolo_folder(data_dir)}", "train_size=0", "eval_size=0", "test_size=0",
                      "keep_checkpoint=best_eval_iou"]
    result = run_notebook(tmp_path, *overrides)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "offline-smoke"
    assert f"run folder: {run_dir}" in result.stdout

    # Everything the run wrote is in its folder (plus the shared offline-model cache we pointed at tmp).
    image_cache = [IMAGE_CACHE_FOLDER] if source in ("coco", "yolo") else []  # files are cached downscaled; synthetic images are not
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*image_cache, TOOL_CACHE, "models", "offline-smoke"])
    assert sorted(p.name for p in REPO_ROOT.iterdir()) == repo_entries_before
    for name in ["notebook.ipynb", "params.json", "metrics.json", "predictions.jsonl", "predictions_baseline.jsonl",
                 "log_history.json", "data_report.json", "plots/samples.png", "plots/coordinate_check.png",
                 "plots/predictions.png", "plots/training_curves.png", "plots/pr_curve.png", "plots/inference.png",
                 "model/model.safetensors", "model/config.json", "model/processor_config.json", "model/tokenizer.json"]:
        assert (run_dir / name).is_file(), name
    # The saved model keeps the checkpoint's own generation config (the published sampling fields
    # and penalty), while evaluation decoded greedily and said so.
    family = model_id.removeprefix("offline:")
    saved, base = (json.loads(p.read_text()) for p in (run_dir / "model" / "generation_config.json", tmp_path / "models" / family / "generation_config.json"))
    assert saved == base and saved["repetition_penalty"] == 1.05
    processor_class = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}[family]
    assert f"{processor_class}: Qwen2VLImageProcessor, Qwen2VLVideoProcessor" in (run_dir / "notebook.ipynb").read_text()  # the stock classes
    assert "evaluation decodes with: {'max_new_tokens': 48, 'do_sample': False, 'num_beams': 1" in (run_dir / "notebook.ipynb").read_text()
    data_report = json.loads((run_dir / "data_report.json").read_text())
    assert data_report["train"]["counts"]["images_loaded"] == 32
    assert data_report["train"]["counts"].get("missing_image", 0) == (2 if source == "coco" else 0)
    kept = json.loads((run_dir / "metrics.json").read_text())["kept"]
    assert kept == {"rule": "last", "step": 12} if source != "yolo" else (kept["rule"] == "best_eval_iou" and kept["step"] in (6, 12))
    if source == "yolo":
        assert data_report["eval"]["notes"] == ["split 'validation' read from the folder's 'val'"]
        assert data_report["eval"]["counts"]["images_loaded"] == 8 and data_report["train"]["counts"]["boxes_kept"] > 32

    notebook = nbformat.read(run_dir / "notebook.ipynb", as_version=4)
    assert not [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert all(c.get("execution_count") for c in notebook.cells if c.cell_type == "code" and c.source.strip())

    params = json.loads((run_dir / "params.json").read_text())["parameters"]
    assert params["max_steps"] == 12 and params["output_root"] == str(tmp_path)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for stage in ("baseline", "finetuned"):
        assert metrics[stage][N_IMAGES] == 8
        assert math.isfinite(metrics[stage][MEAN_IOU]) and 0 <= metrics[stage][MEAN_IOU] <= 1
        for key in (MAP_50_95, MAP_50, MAP_75, PRECISION_50, RECALL_50, PARSE_FAILURE_RATE):
            assert metrics[stage][key] is not None and 0 <= metrics[stage][key] <= 1, (stage, key)
        assert set(metrics[stage][AP_50_PER_CLASS]) >= {"blue triangle", "green square", "red circle"}
        assert metrics[stage][N_LOOPING_ANSWERS] <= 8 and metrics[stage][N_DUPLICATE_BOXES_DROPPED] >= 0
    for name in ("predictions.jsonl", "predictions_baseline.jsonl"):
        rows = [json.loads(line) for line in (run_dir / name).read_text().splitlines()]
        assert len(rows) == 8 and all(set(row) == {"image_id", "file_name", "ground_truth", "crowd_regions", "raw_text", "predictions", "loop_stopped", "duplicates_dropped"} for row in rows)
        for prediction in (p for row in rows for p in row["predictions"]):
            assert set(prediction) == {"label", "bbox_xyxy_px", "score"} and 0 <= prediction["score"] <= 1
    history = json.loads((run_dir / "log_history.json").read_text())
    assert any(EVAL_MEAN_IOU in entry for entry in history) and any("grad_norm_clipped" in entry for entry in history)

    checkpoints = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints] == ["checkpoint-6", "checkpoint-12"]
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 12 and len(losses) >= 5
    assert losses[-1] < losses[0] - 0.3  # a random model's loss on these answers drops fast
    assert any("eval_loss" in entry for entry in state["log_history"])


@pytest.mark.slow
def test_strict_data_stops_the_run_naming_the_record(tmp_path, run_notebook):
    data_dir = synthetic_coco_folder(tmp_path.parent / f"{tmp_path.name}-data")
    result = run_notebook(tmp_path, f"dataset_source={data_dir}", "eval_split=valid", "data_strict=true")
    assert result.returncode != 0
    assert "image id 0 ('00000.png'): image" in result.stdout + result.stderr
    assert "Fix: add the image file or remove the record" in result.stdout + result.stderr


@pytest.mark.slow
def test_saved_run_model_reloads(tmp_path, run_notebook):
    result = run_notebook(tmp_path, "max_steps=2", "eval_steps=2", "save_steps=2", "test_size=2", "run_name=reload")
    assert result.returncode == 0, result.stderr[-3000:]
    from transformers import AutoModelForImageTextToText

    from helpers.families.processors import load_processor

    model_dir = tmp_path / "reload" / "model"
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = load_processor(model_dir, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    assert model.config.model_type == "qwen2_vl" and processor.tokenizer.eos_token == "<|im_end|>"


@pytest.mark.slow
def test_lora_run_saves_the_adapter_and_a_merged_model(tmp_path, run_notebook):
    # Also trains padding-free, through the PEFT wrapper, to prove that path end to end.
    result = run_notebook(
        tmp_path, "use_lora=true", "padding_free=true", "merge_adapter=true", "lora_targets=[language, merger]",
        "max_steps=2", "eval_steps=2", "save_steps=2", "test_size=2", "run_name=lora",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model_dir = tmp_path / "lora" / "model"
    assert (model_dir / "adapter_config.json").is_file() and (model_dir / "adapter_model.safetensors").is_file()
    assert not (model_dir / "model.safetensors").exists()
    from transformers import AutoModelForImageTextToText

    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "lora" / "model_merged")
    assert merged.config.model_type == "qwen2_vl" and not any("lora_" in n for n, _ in merged.named_parameters())
    assert "training collator: padding-free with sdpa" in (tmp_path / "lora" / "notebook.ipynb").read_text()


def files_written_since(root: Path, since: float) -> list[Path]:
    """Files under ``root`` modified since ``since`` (the virtual environment, git's folder and bytecode caches aside)."""
    written = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in (".venv", ".git", "__pycache__", ".pytest_cache")]
        written += [Path(folder) / name for name in files if (Path(folder) / name).stat().st_mtime >= since]
    return written


@pytest.mark.slow
def test_wandb_offline_run_logs_callbacks_and_keeps_secrets_out(tmp_path, run_notebook):
    secrets = {"WANDB_API_KEY": "wandbsecret" + "0" * 29, "HF_TOKEN": "hf_secrettoken0123456789"}
    home = tmp_path / "home"  # a fresh home folder: W&B's own logs would land in ~/.cache/wandb
    home.mkdir()
    env = os.environ | secrets | {"WANDB_MODE": "offline", "HOME": str(home)}
    started = time.time()
    result = run_notebook(tmp_path, "report_to=wandb", "max_steps=2", "eval_steps=2", "save_steps=2", "test_size=2", "run_name=wb", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "wb"
    # Nothing is written outside the run folder and the offline cache: not in the home folder, not in the repository.
    caches = (tmp_path / "models", tmp_path / TOOL_CACHE)  # the offline checkpoints, matplotlib's and IPython's caches
    assert [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(run_dir) and not any(p.is_relative_to(c) for c in caches)] == []
    assert files_written_since(REPO_ROOT, started) == []
    wandb_files = [p for p in (run_dir / "wandb").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in wandb_files)  # an offline W&B run inside the run folder
    assert any(b"grad_norm_clipped" in p.read_bytes() for p in wandb_files)  # the callbacks reached W&B
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        content = path.read_bytes()
        assert not any(secret.encode() in content for secret in secrets.values()), f"a secret leaked into {path}"
    assert not any(secret in result.stdout + result.stderr for secret in secrets.values())


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_losses(tmp_path, run_notebook, runner_command):
    settings = ["max_steps=40", "save_steps=5", "save_total_limit=20", "logging_steps=1", "eval_steps=40", "iou_eval_images=0",
                "train_size=64", "test_size=2"]
    reference = run_notebook(tmp_path, *settings, "run_name=reference")
    assert reference.returncode == 0, reference.stderr[-3000:]

    # Start the same run and kill it, kernel included, once its first checkpoint is complete.
    run_dir = tmp_path / "resumed"
    process = subprocess.Popen(runner_command(tmp_path, *settings, "run_name=resumed"), cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "checkpoint-5" / "trainer_state.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    tree = psutil.Process(process.pid)
    for child in tree.children(recursive=True) + [tree]:
        child.kill()
    process.wait()
    interrupted_at = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert interrupted_at < 40 and not (run_dir / "metrics.json").exists()

    resumed = run_notebook(tmp_path, *settings, "run_name=resumed", "resume_from_checkpoint=true")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr

    def losses(name):
        history = json.loads((tmp_path / name / "log_history.json").read_text())
        return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}

    reference_losses, resumed_losses = losses("reference"), losses("resumed")
    assert sorted(resumed_losses) == list(range(1, 41)) == sorted(reference_losses)  # the history is continuous
    for step in range(1, 41):
        assert resumed_losses[step] == pytest.approx(reference_losses[step], rel=1e-4, abs=1e-5), step


@pytest.mark.slow
@pytest.mark.parametrize(
    "family,overrides,collator_line",
    [
        ("qwen3_5", ["padding_free=true"], "assistant-only: Qwen3.5 cannot be packed: its Gated DeltaNet layers"),
        ("qwen3_5_moe", ["use_lora=true", "lora_targets=[language, experts]", "lora_dropout=0.0", "merge_adapter=true"], "assistant-only (padding_free is off)"),
        ("qwen3_vl_moe", ["padding_free=true", "use_lora=true", "lora_targets=[experts]", "lora_dropout=0.0"], "padding-free with sdpa"),
    ],
)
def test_newest_families_run_the_notebook(tmp_path, family, overrides, collator_line, run_notebook):
    # The hybrid linear-attention and mixture-of-experts families end to end: Qwen3.5's think block and
    # refused packing, LoRA on fused experts (and merged), Qwen3-VL-MoE packed.
    result = run_notebook(tmp_path, f"model_id=offline:{family}", "max_steps=2", "eval_steps=2", "save_steps=2", "test_size=2",
                          f"run_name={family}", *overrides)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / family
    notebook_text = (run_dir / "notebook.ipynb").read_text()
    assert f"training collator: {collator_line}" in notebook_text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["finetuned"][N_IMAGES] == 2
    if "merge_adapter=true" in overrides:
        from transformers import AutoModelForImageTextToText

        merged = AutoModelForImageTextToText.from_pretrained(run_dir / "model_merged")
        assert merged.config.model_type == family and not any("lora_" in n for n, _ in merged.named_parameters())
