"""Box-aware augmentation: answers written from the moved boxes in every family's frame, counts, seeding, workers."""

from __future__ import annotations

import json
import pickle

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from helpers.data.augment import (
    AUGMENT_SEED,
    AUGMENTATION_COUNTS,
    AugmentationCounts,
    Augmenter,
    EpochSampler,
    EpochTaggedSplit,
    augmented_examples,
    augmenter_for,
    batch_images_and_answers,
    compose,
    policy_transform,
    sample_seed,
)
from helpers.data.synthetic import make_synthetic_dataset
from helpers.evaluate.scaling_check import check_coordinate_scaling
from helpers.families.boxes import parse_model_answer, resized_size, to_model_answer
from helpers.families.chat import add_chat_columns, detection_prompt
from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, load_processor
from helpers.families.registry import get_family
from helpers.parameters import check_notebook_parameters
from helpers.train.config import data_loader_settings, default_workers
from tests.cases import FAMILIES
from tests.support.notebook_cells import run_tagged_cells

CELLS = run_tagged_cells("collators")
BOUNDS = (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)


def example_with(width: int, height: int, boxes: list[list[float]], labels: list[str] | None = None) -> dict:
    """A split row holding a plain ``width`` x ``height`` image and these pixel boxes."""
    labels = labels or ["red circle"] * len(boxes)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))
    objects = [{"label": label, "bbox_xyxy_px": [float(v) for v in box]} for label, box in zip(labels, boxes)]
    return {"image_id": 7, "image": image, "width": width, "height": height, "objects": objects}


def quantum(family, size: tuple[int, int]) -> float:
    """One unit of the family's answer coordinates, in pixels of an image of ``size``."""
    model = resized_size(family, *size, *BOUNDS)
    return max(size) / 1000 if family.relative else max(size[0] / model[0], size[1] / model[1])


# (name, transform, image size, boxes in, expected size out, expected boxes out, objects cut), computed by hand.
GEOMETRY = [
    ("flip", A.HorizontalFlip(p=1.0), (200, 100), [[20, 10, 60, 50]], (200, 100), [[140, 10, 180, 50]], 0),
    ("crop", A.Crop(x_min=50, y_min=0, x_max=200, y_max=100, p=1.0), (200, 100), [[60, 10, 100, 50], [20, 10, 60, 50]],
     (150, 100), [[10, 10, 50, 50]], 1),  # the second keeps 10 of 40 px of width: 25% < 30%, dropped
    ("crop keeps a clipped box", A.Crop(x_min=50, y_min=0, x_max=200, y_max=100, p=1.0), (200, 100), [[40, 10, 90, 50]],
     (150, 100), [[0, 10, 40, 50]], 0),  # 40 of 50 px kept: clipped at the border
    ("scale down", A.Resize(height=60, width=150, p=1.0), (300, 120), [[30, 20, 90, 80]], (150, 60), [[15, 10, 45, 40]], 0),
    ("zoom about the centre", A.Affine(scale=2.0, p=1.0), (200, 100), [[80, 40, 120, 60]], (200, 100), [[60, 30, 140, 70]], 0),
    ("zoom pushes a box out", A.Affine(scale=2.0, p=1.0), (200, 100), [[0, 0, 30, 20]], (200, 100), [], 1),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("name", "transform", "size", "boxes", "size_out", "boxes_out", "cut"), GEOMETRY, ids=[g[0] for g in GEOMETRY])
def test_answer_decodes_to_the_transformed_boxes(family, name, transform, size, boxes, size_out, boxes_out, cut):
    sample = Augmenter(compose([transform]), family, *BOUNDS)(example_with(*size, boxes), seed=3)
    assert sample.image.size == size_out
    decoded = parse_model_answer(sample.answer, family, size_out, resized_size(family, *size_out, *BOUNDS))
    got = sorted(obj["bbox_xyxy_px"] for obj in decoded)
    assert len(got) == len(boxes_out)
    tolerance = quantum(family, size_out) + 1.0  # one answer unit, and a pixel of interpolation at the zoom's centre
    for box, want in zip(got, sorted(boxes_out)):
        assert np.allclose(box, want, atol=tolerance), (name, box, want)
    assert sample.counts.objects_cut == cut
    assert sample.counts.images_emptied == int(not boxes_out)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_emptied_image_becomes_a_negative_and_is_counted(family):
    cut_all = A.Crop(x_min=100, y_min=0, x_max=200, y_max=100, p=1.0)
    sample = Augmenter(compose([cut_all]), family, *BOUNDS)(example_with(200, 100, [[10, 10, 50, 50], [20, 60, 60, 90]]), seed=0)
    assert sample.objects == []
    assert sample.answer == to_model_answer([], family, (100, 100), (100, 100))  # the empty answer the family writes
    assert sample.counts.as_dict() == {"images": 1, "objects": 2, "objects_kept": 0, "objects_cut": 2, "images_emptied": 1}


def test_an_image_without_objects_is_not_counted_as_emptied():
    sample = augmenter_for("standard", get_family("qwen2_vl"), *BOUNDS)(example_with(120, 90, []), seed=1)
    assert sample.counts.as_dict() == {"images": 1, "objects": 0, "objects_kept": 0, "objects_cut": 0, "images_emptied": 0}


def test_a_cached_image_keeps_its_boxes_in_its_own_frame():
    """A cached image is smaller than the record's size: boxes are moved into its frame before the transform."""
    family = get_family("qwen2_5_vl")
    row = example_with(200, 100, [[20, 10, 60, 50]])
    row["image"] = row["image"].resize((100, 50))  # the cache's copy; the record still says 200 x 100
    sample = Augmenter(compose([A.HorizontalFlip(p=1.0)]), family, *BOUNDS)(row, seed=0)
    assert sample.image.size == (100, 50)
    assert np.allclose(sample.objects[0]["bbox_xyxy_px"], [70, 5, 90, 25])


def test_counts_add_and_travel_as_a_tensor():
    total = AugmentationCounts()
    total.add(AugmentationCounts(images=2, objects=5, objects_kept=4, objects_cut=1, images_emptied=0))
    total.add(AugmentationCounts(images=1, objects=1, objects_kept=0, objects_cut=1, images_emptied=1))
    assert AugmentationCounts.from_tensor(total.as_tensor()) == total
    assert total.as_dict() == {"images": 3, "objects": 6, "objects_kept": 4, "objects_cut": 2, "images_emptied": 1}


def test_standard_policy_flips_only_when_allowed():
    names = lambda transform: [type(t).__name__ for t in transform.transforms]  # noqa: E731
    assert names(policy_transform("standard", horizontal_flip=True))[0] == "HorizontalFlip"
    assert "HorizontalFlip" not in names(policy_transform("standard", horizontal_flip=False))
    assert policy_transform("none") is None
    with pytest.raises(ValueError, match="'heavy' is not one of"):
        policy_transform("heavy")


def training_rows(family, n: int = 6) -> list[dict]:
    """``n`` synthetic training rows with the notebook's chat columns."""
    ds = make_synthetic_dataset(n, seed=5, max_objects=4, min_side_px=60, max_side_px=200, position_tint=True)
    return add_chat_columns(ds, family, detection_prompt(family, ["red circle", "green square", "blue triangle"]), *BOUNDS)


def test_same_seed_same_sample_and_epochs_differ():
    family = get_family("qwen3_vl")
    rows = training_rows(family)
    augmenter = augmenter_for("standard", family, *BOUNDS)
    first, again = augmenter(rows[0], sample_seed(42, 0, 0)), augmenter(rows[0], sample_seed(42, 0, 0))
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image)) and first.answer == again.answer
    epochs = [np.asarray(augmenter(rows[0], sample_seed(42, epoch, 0)).image) for epoch in range(4)]
    assert any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(epochs, epochs[1:]))
    assert len({sample_seed(42, e, i) for e in range(10) for i in range(100)}) == 1000


def test_the_sampler_shuffles_per_epoch_and_hands_the_epoch_to_the_split():
    sampler = EpochSampler(5, seed=3)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(5)) and list(sampler) == epoch0  # the same epoch, the same order
    sampler.set_epoch(2)
    epoch2 = list(sampler)
    assert sorted(epoch2) == list(range(10, 15))
    split = EpochTaggedSplit([{"image_id": i} for i in range(5)], seed=3)
    assert split[12] == {"image_id": 2, AUGMENT_SEED: sample_seed(3, 2, 2)}


def test_evaluation_rows_are_never_augmented():
    family = get_family("qwen2_vl")
    rows = training_rows(family, 3)
    augmenter = augmenter_for("standard", family, *BOUNDS)
    images, answers, counts = batch_images_and_answers([rows[i] for i in range(3)], augmenter)
    assert counts is None and answers == rows["answer"]
    assert [image.size for image in images] == [(w, h) for w, h in zip(rows["width"], rows["height"])]


def collator_batches(collator, split, seed: int, workers: int, epochs: tuple[int, ...] = (0, 1)) -> list[dict]:
    """Every batch of ``epochs`` through a data loader with ``workers`` processes, as the trainer builds it."""
    sampler = EpochSampler(len(split), seed)
    loader = torch.utils.data.DataLoader(EpochTaggedSplit(split, seed), batch_size=2, sampler=sampler, collate_fn=collator,
                                         num_workers=workers, persistent_workers=workers > 0)
    batches = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        batches += [dict(batch) for batch in loader]
    return batches


def same_batches(left: list[dict], right: list[dict]) -> bool:
    """True when both lists hold equal tensors under equal keys."""
    return len(left) == len(right) and all(
        a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a) for a, b in zip(left, right)
    )


@pytest.mark.parametrize("family", [get_family("qwen2_vl"), get_family("qwen2_5_vl")])
def test_runs_and_workers_give_identical_batches(tiny_checkpoints, family):
    processor = load_processor(tiny_checkpoints[family], *BOUNDS)
    split = training_rows(family)
    collator = CELLS["AssistantOnlyCollator"](processor, family.chat_template_kwargs, augmenter_for("standard", family, *BOUNDS))
    in_process = collator_batches(collator, split, seed=9, workers=0)
    assert same_batches(in_process, collator_batches(collator, split, seed=9, workers=0))  # two runs
    assert same_batches(in_process, collator_batches(collator, split, seed=9, workers=2))  # workers
    assert not same_batches(in_process, collator_batches(collator, split, seed=10, workers=0))  # the seed matters
    counts = sum(AugmentationCounts.from_tensor(batch[AUGMENTATION_COUNTS]).images for batch in in_process)
    assert counts == 2 * len(split)
    resumed = collator_batches(collator, split, seed=9, workers=0, epochs=(1,))  # a run resumed at epoch 1
    assert same_batches(resumed, in_process[len(in_process) // 2 :])


def test_the_padding_free_collator_carries_the_counts(tiny_checkpoints):
    family = get_family("qwen2_vl")
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family])
    processor = load_processor(tiny_checkpoints[family], *BOUNDS)
    collator = CELLS["PaddingFreeCollator"](processor, model.model.get_rope_index, family.chat_template_kwargs,
                                            augmenter_for("standard", family, *BOUNDS))
    split = EpochTaggedSplit(training_rows(family, 2), seed=0)
    batch = collator([split[0], split[1]])
    assert AugmentationCounts.from_tensor(batch[AUGMENTATION_COUNTS]).images == 2


def test_collators_and_augmenters_pickle_with_the_processor(tiny_checkpoints):
    family = get_family("qwen3_5")
    processor = load_processor(tiny_checkpoints[family], *BOUNDS)
    augmenter = augmenter_for("standard", family, *BOUNDS)
    assert pickle.loads(pickle.dumps(family)) is family  # a worker's copy of a record is the registry's
    copy = pickle.loads(pickle.dumps(augmenter))
    row = training_rows(family, 1)[0]
    assert copy(row, 5).answer == augmenter(row, 5).answer
    collator = CELLS["AssistantOnlyCollator"](processor, family.chat_template_kwargs, augmenter)
    state = pickle.loads(pickle.dumps(collator.__dict__))  # the class lives in the notebook; its contents must travel
    assert state["answer_prefix_ids"] == collator.answer_prefix_ids and state["augmenter"].family is family


@pytest.mark.parametrize("family", FAMILIES)
def test_the_coordinate_check_passes_on_augmented_samples(tiny_checkpoints, family, tmp_path):
    processor = load_processor(tiny_checkpoints[family], *BOUNDS)
    rows = augmented_examples(training_rows(family, 4), augmenter_for("standard", family, *BOUNDS), seed=1, n=4)
    result = check_coordinate_scaling(rows, processor, family, *BOUNDS, n_examples=4, path=tmp_path / "check.png")
    assert result["ok"], result["examples"]
    assert (tmp_path / "check.png").is_file()


@pytest.mark.parametrize(("name", "value", "message"), [
    ("augmentation", "heavy", "augmentation"),
    ("dataloader_num_workers", -2, "dataloader_num_workers"),
    ("dataloader_num_workers", 1.5, "dataloader_num_workers"),
])
def test_bad_augmentation_and_worker_values_are_refused(default_params, name, value, message):
    from helpers.run_notebook import notebook_declarations, NOTEBOOK_PATH
    import jupytext

    annotations = notebook_declarations(jupytext.read(NOTEBOOK_PATH))[1]
    with pytest.raises((ValueError, TypeError), match=message):
        check_notebook_parameters(default_params | {name: value}, annotations)


@pytest.mark.parametrize(("device", "cores", "local_processes", "workers"), [
    ("cpu", 2, 1, 0),  # the CPU step uses every core
    ("cpu", 64, 1, 0),
    ("cuda:0", 16, 1, 4),  # capped at GPU_WORKERS
    ("cuda:0", 16, 8, 1),  # 2 cores a process: one drives the GPU
    ("cuda:0", 2, 2, 0),
])
def test_default_workers_per_device(monkeypatch, device, cores, local_processes, workers):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_processes))
    assert default_workers(device, cpu_count=cores) == workers


def test_loader_settings_keep_workers_alive_only_when_there_are_workers():
    assert data_loader_settings(0, "cuda:0") == {"dataloader_num_workers": 0, "dataloader_persistent_workers": False,
                                                 "dataloader_prefetch_factor": None}
    assert data_loader_settings(3, "cpu") == {"dataloader_num_workers": 3, "dataloader_persistent_workers": True,
                                              "dataloader_prefetch_factor": 2}
    assert data_loader_settings(-1, "cpu")["dataloader_num_workers"] == 0


def test_the_trainer_reads_training_samples_seeded_per_epoch_and_adds_up_the_counts(tiny_checkpoints, tmp_path):
    from accelerate import skip_first_batches
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig

    from helpers.train.trainer import QwenVLSFTTrainer

    family = get_family("qwen2_vl")
    processor = load_processor(tiny_checkpoints[family], *BOUNDS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family])
    split = training_rows(family, 6)
    collator = CELLS["AssistantOnlyCollator"](processor, family.chat_template_kwargs, augmenter_for("standard", family, *BOUNDS))
    args = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, report_to=[], use_cpu=True,
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}, max_length=None)
    trainer = QwenVLSFTTrainer(model=model, args=args, train_dataset=split, eval_dataset=split, data_collator=collator,
                               processing_class=processor, augment=True)
    loader = trainer.get_train_dataloader()
    loader.set_epoch(1)  # what the training loop does before each epoch, and on resume
    batches = [dict(batch) for batch in loader]
    assert same_batches(batches, collator_batches(collator, split, seed=args.seed, workers=0, epochs=(1,)))  # the run's seed
    resumed = skip_first_batches(loader, 1)  # a resume mid-epoch, in the training loop's order: skip, then set the epoch
    resumed.set_epoch(1)
    assert same_batches([dict(batch) for batch in resumed], batches[1:])
    assert AUGMENTATION_COUNTS not in next(iter(trainer.get_eval_dataloader()))  # evaluation is never augmented
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.current_gradient_accumulation_steps = 1  # what the training loop sets before its steps
    batch = batches[0]
    carried = AugmentationCounts.from_tensor(batch[AUGMENTATION_COUNTS])
    trainer.training_step(trainer.model, batch)  # the model never sees the counts
    assert AUGMENTATION_COUNTS not in batch
    assert trainer.augmentation_counts() == carried and carried.images == 2
    plain = QwenVLSFTTrainer(model=model, args=args, train_dataset=split, data_collator=collator, processing_class=processor)
    assert AUGMENTATION_COUNTS not in next(iter(plain.get_train_dataloader()))  # augment off: as before


@pytest.mark.slow
def test_a_run_with_augmentation_and_workers_reports_what_it_cut(run_notebook, tmp_path):
    result = run_notebook(tmp_path, "augmentation=standard", "dataloader_num_workers=1")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "offline-smoke"
    report = json.loads((run_dir / "data_report.json").read_text())
    augmentation = report["augmentation"]
    assert augmentation["policy"] == "standard" and augmentation["images"] == 12 * 8  # max_steps x batch size
    assert augmentation["objects_kept"] + augmentation["objects_cut"] == augmentation["objects"] > 0
    assert set(report) >= {"train", "eval", "test"}  # what loading kept and skipped is still there
    assert (run_dir / "plots" / "augmentation.png").is_file() and (run_dir / "plots" / "coordinate_check_augmented.png").is_file()
    sft = json.loads((run_dir / "params.json").read_text())["parameters"]
    assert sft["dataloader_num_workers"] == 1


def test_iterating_the_tagged_split_gives_one_epoch():
    split = EpochTaggedSplit([{"image_id": i} for i in range(3)], seed=1)
    assert [row["image_id"] for row in split] == [0, 1, 2]
    assert [row[AUGMENT_SEED] for row in split] == [sample_seed(1, 0, i) for i in range(3)]


def test_a_photo_larger_than_the_model_input_is_shrunk_before_the_transform(tmp_path):
    family = get_family("qwen2_5_vl")
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.full((1500, 2000, 3), 90, dtype=np.uint8)).save(path)
    row = {"image_id": 1, "image": {"path": str(path), "bytes": None}, "width": 2000, "height": 1500,
           "objects": [{"label": "red circle", "bbox_xyxy_px": [200.0, 150.0, 600.0, 450.0]}]}
    sample = Augmenter(compose([A.HorizontalFlip(p=1.0)]), family, *BOUNDS)(row, seed=0)
    model_size = resized_size(family, 2000, 1500, *BOUNDS)
    assert sample.image.size == model_size  # what the processor keeps, not 2000 x 1500
    scale = model_size[0] / 2000, model_size[1] / 1500
    want = [model_size[0] - 600 * scale[0], 150 * scale[1], model_size[0] - 200 * scale[0], 450 * scale[1]]
    assert np.allclose(sample.objects[0]["bbox_xyxy_px"], want, atol=1e-3)
    decoded = parse_model_answer(sample.answer, family, model_size, resized_size(family, *model_size, *BOUNDS))
    assert np.allclose(decoded[0]["bbox_xyxy_px"], want, atol=1.0)
