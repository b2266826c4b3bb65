# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fine-tuning Qwen vision-language models for object detection with TRL
#
# Fine-tune a Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5, or their mixture-of-experts
# variants) to answer "where is every object?" in its own box convention, train on the answer tokens
# only, and measure mAP before and after training on held-out images.
#
# The defaults run the *offline profile*, a tiny random Qwen-VL and synthetic data, on a CPU in
# minutes; a real model (`model_id="Qwen/Qwen2-VL-2B-Instruct"`) needs a GPU. Every knob is in the
# next cell with the values it allows; papermill overrides them (`-p name value`, `-f preset.yaml`).

# %% tags=["parameters"]
from typing import Annotated  # each knob: name: Annotated[type, the values it allows] = default

from helpers.parameters import AT_LEAST_0, AT_LEAST_1, AT_LEAST_2, ATTENTION, BBOX_FORMAT, FRACTION, NON_EMPTY, POSITIVE, QUANTIZATION  # noqa: I001
from helpers.parameters import AUGMENTATION, KEEP, REPEATS, REPORT_TO, RUN_NAME, SCHEDULE, SIDE_PX, STEPS, TASK, TILE_MERGE, TILE_PX, WORKERS

model_id: Annotated[str, NON_EMPTY] = "offline:qwen2_vl"  # hub id, local checkpoint dir, or "offline:<model_type>" (tiny random model built here; see helpers.families.registry)
task: Annotated[str, TASK] = "detection"  # "detection": find every class in one answer; "grounding": the prompt names one class to find
system_prompt: str = ""  # the system turn; empty keeps the family template's default (Qwen2/2.5-VL: a helpful assistant; Qwen3-VL: none)
offline_model_dir: Annotated[str, NON_EMPTY] = "outputs/.offline_models"  # cache of "offline:" checkpoints, built once
dataset_source: Annotated[str, NON_EMPTY] = "synthetic"  # "synthetic", a hub id, or a local folder: save_to_disk, COCO or JSONL (see helpers.data.sources)
dataset_bbox_format: Annotated[str, BBOX_FORMAT] = "xywh"  # hub and JSONL boxes: "xywh" (COCO) or "xyxy", in pixels; COCO files are always xywh
dataset_classes: list = []  # labels the data may use; others are skipped as unknown (empty: all)
data_strict: bool = False  # True: a bad record stops loading with its name; False: fix or skip it and count it
image_cache: bool = True  # files and hub data: keep each image downscaled to the model's input size under output_root/.image_cache, built once
train_split: Annotated[str, NON_EMPTY] = "train"  # source split for training (hub/local datasets only)
eval_split: Annotated[str, NON_EMPTY] = "validation"  # source split for the eval loss during training
test_split: Annotated[str, NON_EMPTY] = "test"  # source split for the before/after detection metrics
train_size: Annotated[int, AT_LEAST_0] = 2048  # images; synthetic: generated, hub: the first N (0 for all)
eval_size: Annotated[int, AT_LEAST_0] = 32  # images for the eval loss during training
test_size: Annotated[int, AT_LEAST_0] = 32  # held-out images for the before/after detection metrics
synthetic_classes: Annotated[list, NON_EMPTY] = ["red circle", "green square", "blue triangle"]  # see helpers.data.synthetic.CLASS_STYLES
synthetic_min_side_px: Annotated[int, SIDE_PX] = 96  # synthetic image sides are drawn from [min, max] independently
synthetic_max_side_px: Annotated[int, SIDE_PX] = 224  # upper bound of a synthetic image side
synthetic_max_objects: Annotated[int, AT_LEAST_1] = 4  # 1..N objects per synthetic image
synthetic_position_tint: bool = True  # red/green background tint along x/y: a sense of place for a random vision tower
synthetic_square_images: bool = False  # square images of varied size (all resized to one grid when min_pixels equals max_pixels)
synthetic_empty_fraction: Annotated[float, FRACTION] = 0.0  # share of synthetic images without objects (they teach the empty answer)
synthetic_object_px: list = []  # [smallest, largest] shape side in pixels (small objects in big images); empty: 20-40% of the short side
augmentation: Annotated[str, AUGMENTATION] = "none"  # training images: "none", or "standard" (flip, scale, shift, crop, colour; boxes moved, answers rewritten)
augmentation_flip: bool = True  # "standard" flips left-right; False for label sets with left/right meaning
dataloader_num_workers: Annotated[int, WORKERS] = -1  # processes decoding and collating batches beside training (-1: 0 on CPU, up to 4 per GPU)
tile_px: Annotated[int, TILE_PX] = 0  # small objects in big images: train on square tiles this many px a side and detect tile by tile (0: whole images)
tile_overlap_px: Annotated[int, AT_LEAST_0] = 64  # overlap of neighbouring tiles; as large as the largest object, so one tile holds it whole
tile_min_visibility: Annotated[float, FRACTION] = 0.5  # a training tile keeps an object showing at least this share of its area
tile_negative_ratio: Annotated[float, FRACTION] = 0.2  # at most this share of training tiles are empty (1: keep every empty tile)
tile_full_image_pass: bool = True  # sliced inference also answers the whole image, for objects larger than a tile
tile_merge: Annotated[str, TILE_MERGE] = "nmm"  # boxes of one object from several tiles: "nmm" merges them into their union, "nms" keeps the best
tile_merge_threshold: Annotated[float, FRACTION] = 0.5  # same-class boxes overlapping this much (intersection over the smaller box) are one object
min_pixels: Annotated[int, AT_LEAST_1] = 3136  # 56*56: smallest image area the processor resizes up to
max_pixels: Annotated[int, AT_LEAST_1] = 50176  # 224*224: largest area (Qwen2-VL's default is 28*28*1280, 1003520)
use_lora: bool = False  # False: full fine-tuning (the offline model starts from random weights)
lora_rank: Annotated[int, AT_LEAST_1] = 16  # LoRA adapter rank (used when use_lora is True)
lora_alpha: Annotated[int, AT_LEAST_1] = 32  # LoRA scale: alpha / rank, 32 / 16 is 2
lora_dropout: Annotated[float, FRACTION] = 0.05  # dropout on the LoRA branch
lora_targets: Annotated[list, NON_EMPTY] = ["language"]  # blocks to adapt: any of "language", "vision" (tower), "merger", and "experts" for MoE families
quantization: Annotated[str, QUANTIZATION] = "none"  # "none", "8bit", or "4bit" (QLoRA, CUDA only)
attn_implementation: Annotated[str, ATTENTION] = "sdpa"  # "sdpa", "eager" or "flash_attention_2" (needs flash-attn on GPU)
learning_rate: Annotated[float, POSITIVE] = 1e-3  # 1e-3 suits the random tiny model; use ~2e-4 for LoRA on a real model
num_train_epochs: Annotated[float, POSITIVE] = 1.0  # used when max_steps is -1
max_steps: Annotated[int, STEPS] = 1500  # optimizer steps; -1 to run num_train_epochs instead
per_device_train_batch_size: Annotated[int, AT_LEAST_1] = 8  # images per optimizer micro-step on each device
per_device_eval_batch_size: Annotated[int, AT_LEAST_1] = 8  # images per eval-loss step
gradient_accumulation_steps: Annotated[int, AT_LEAST_1] = 1  # effective batch: per-device batch * accumulation * GPUs
padding_free: bool = False  # pack each batch into one row (pays off with flash-attention; see section 5)
warmup_steps: Annotated[float, AT_LEAST_0] = 0.05  # learning-rate warm-up: below 1 a fraction of the total steps, else a step count
lr_scheduler_type: Annotated[str, SCHEDULE] = "cosine"  # "cosine", "linear" or "constant_with_warmup"
weight_decay: Annotated[float, AT_LEAST_0] = 0.0  # AdamW decoupled weight decay
max_grad_norm: Annotated[float, AT_LEAST_0] = 1.0  # gradient-norm clipping (0: none)
logging_steps: Annotated[int, AT_LEAST_1] = 50  # log the training loss every N optimizer steps
eval_steps: Annotated[int, AT_LEAST_1] = 500  # compute the eval loss every N steps
save_steps: Annotated[int, AT_LEAST_1] = 750  # write a checkpoint every N steps
save_total_limit: Annotated[int, AT_LEAST_1] = 2  # checkpoints kept in the run folder
keep_checkpoint: Annotated[str, KEEP] = "last"  # model/ holds the final weights, or "best_eval_loss" / "best_eval_iou": the best checkpoint (save_steps a multiple of eval_steps)
resume_from_checkpoint: Annotated[bool | str, NON_EMPTY] = False  # True: continue from this run's latest checkpoint; or a checkpoint path
merge_adapter: bool = False  # LoRA on an unquantised base: also save model_merged/, base and adapter in one
seed: Annotated[int, AT_LEAST_0] = 42  # seeds Python, NumPy, torch and the synthetic data
run_name: Annotated[str, RUN_NAME] = "offline-demo"  # the run writes outputs/<run_name>/ and nothing else
output_root: Annotated[str, NON_EMPTY] = "outputs"  # parent folder of every run folder (~ is expanded)
report_to: Annotated[str, REPORT_TO] = "none"  # "none", "wandb" or "tensorboard"; W&B honours WANDB_MODE (online, offline, disabled)
grpo_steps: Annotated[int, AT_LEAST_0] = 0  # reinforcement fine-tuning after SFT with the detection reward, in optimizer steps (0: off)
grpo_generations: Annotated[int, AT_LEAST_2] = 4  # answers sampled per image and compared with each other (the group)
grpo_temperature: Annotated[float, POSITIVE] = 1.0  # sampling temperature of those answers
grpo_beta: Annotated[float, AT_LEAST_0] = 0.04  # KL penalty towards the SFT model (0: none, and no reference copy)
grpo_learning_rate: Annotated[float, POSITIVE] = 1e-5  # GRPO's learning rate, far below SFT's
grpo_max_completion_length: Annotated[int, AT_LEAST_1] = 160  # new tokens per sampled answer
grpo_format_weight: Annotated[float, FRACTION] = 0.0  # share of the reward for an answer that ends where its syntax ends
grpo_use_vllm: bool = False  # on a CUDA machine with vLLM installed: TRL's vLLM rollouts (untested until a GPU runs it)
max_new_tokens: Annotated[int, AT_LEAST_1] = 160  # generation budget per answer; a JSON box is about 30 tokens
generation_batch_size: Annotated[int, AT_LEAST_1] = 8  # images per generate() call in evaluation
loop_repeats: Annotated[int, REPEATS] = 3  # stop an answer once one object's text has been written this many times: a loop (0: never)
duplicate_iou: Annotated[float, FRACTION] = 0.95  # before scoring, drop a box overlapping a higher-scored same-label box this much (0: keep all)
iou_eval_images: Annotated[int, AT_LEAST_0] = 16  # held-out images the IoU callback generates on at each evaluation (0: off)
n_plot_images: Annotated[int, AT_LEAST_1] = 8  # images in each picture grid
n_scaling_check_images: Annotated[int, AT_LEAST_1] = 3  # images in the coordinate-scaling check of section 2

# %% [markdown]
# The parameters are checked against the values declared beside them, so a typo stops here with the
# parameter's name rather than deep inside training.

# %%
from helpers.parameters import notebook_parameters, parameter_table

params = notebook_parameters(globals())
print(parameter_table(params))

# %% [markdown]
# ## 1. Set-up
#
# Seed everything, pick the device (bf16 on a modern GPU, fp32 on CPU) and make the run folder:
# every file this run writes goes under it. W&B reads its key from the environment and falls back to
# offline mode without one. Under `accelerate launch` or `torchrun` only the main process prints and
# writes (README, "Many GPUs").

# %%
from transformers import set_seed

from helpers.runtime import configure_reporting, environment_report, main_process_first, pick_device_and_dtype, prepare_run_dir
from helpers.runtime import quiet_known_warnings, quiet_unless_main, start_process_group, write_json

quiet_known_warnings()  # three warnings nobody can act on (helpers.runtime.console)
set_seed(seed)
device, dtype = pick_device_and_dtype()  # under a launcher: the GPU of this process's LOCAL_RANK
start_process_group(device)  # one process: nothing; under a launcher: gloo on CPU, NCCL on GPUs
quiet_unless_main()
with main_process_first():
    run_dir = prepare_run_dir(output_root, run_name)
reporting = configure_reporting(report_to, run_dir)
environment = environment_report(device, dtype)
write_json(run_dir / "params.json", {"parameters": params, "environment": environment})
print(f"run folder: {run_dir}; reporting: {reporting}")
environment

# %% [markdown]
# The **model family** comes from the checkpoint's config (`model_type`), never from the id's spelling:
# it decides how boxes are written. The model class comes from the config too, weights from
# safetensors, no remote code; the processor is the family's stock one, with the pixel bounds set.

# %%
from helpers.families import read_family
from helpers.offline import resolve_model_path
from helpers.train import count_parameters, load_model_and_processor, weights_dtype

with main_process_first():  # an offline checkpoint is built once
    model_path = resolve_model_path(model_id, offline_model_dir)
family = read_family(model_path)  # the family's record: box frame, answer syntax, template options, LoRA blocks
model, processor = load_model_and_processor(
    model_path, quantization=quantization, attn_implementation=attn_implementation, dtype=weights_dtype(dtype, use_lora),
    device=device, min_pixels=min_pixels, max_pixels=max_pixels,
)
print(f"{type(model).__name__} ({family.name}): {count_parameters(model)[1]:,} parameters, attention {model.config._attn_implementation}")
print(f"{type(processor).__name__}: {type(processor.image_processor).__name__}, {type(processor.video_processor).__name__}")

# %% [markdown]
# ## 2. Data
#
# Every source becomes one schema: an image reference, decoded only when a batch needs it, and
# objects with a `label` and a `bbox_xyxy_px` box in pixels of the upright image. Bad records are
# fixed or skipped and counted, never silently lost (README, "Your own data").

# %%
from helpers.data import IMAGE_CACHE_FOLDER, ImageLoading, LoadOptions, image_cache_for, load_detection_splits, synthetic_options
from helpers.runtime import expand_path

cache_root = expand_path(output_root) / IMAGE_CACHE_FOLDER
# Tiles are cut from full-resolution images, so tiling reads the originals (the tiles themselves are kept small).
use_cache = image_cache and not tile_px
cache = image_cache_for(cache_root, dataset_source, family=family, min_pixels=min_pixels, max_pixels=max_pixels) if use_cache else None
load_options = LoadOptions(
    bbox_format=dataset_bbox_format, known_classes=dataset_classes, strict=data_strict, loading=ImageLoading(cache=cache),
    seed=seed, synthetic=synthetic_options(params),
)
with main_process_first():  # the image cache is built once
    splits, load_reports = load_detection_splits(
        dataset_source,
        split_names={"train": train_split, "eval": eval_split, "test": test_split},
        sizes={"train": train_size, "eval": eval_size, "test": test_size},
        options=load_options,
    )

# %% [markdown]
# What was kept, fixed and skipped per split, with the first messages naming records:

# %%
from helpers.data import dataset_class_names, format_data_report

class_names = dataset_class_names(splits["train"])
data_report = {name: report.as_dict() for name, report in load_reports.items()}
write_json(run_dir / "data_report.json", data_report)
print({name: len(ds) for name, ds in splits.items()}, "classes:", class_names)
print(format_data_report(load_reports))
print("\n".join(message for report in load_reports.values() for message in report.examples[:5]))

# %% [markdown]
# **Tiles** (`tile_px` > 0): each training and eval image becomes its overlapping tiles, boxes clipped to each
# tile in its own pixels; an object showing less than `tile_min_visibility` of its area in a tile is not a
# target there, and empty tiles are kept as negatives up to `tile_negative_ratio`. The test images stay
# whole: evaluation slices them the same way (section 6). Counts go to `data_report.json`.

# %%
from helpers.data import TILING_COUNTS, TileGrid, tile_split, tile_writer_for

if tile_px:
    grid = TileGrid(tile_px, tile_overlap_px)
    writer = tile_writer_for(cache_root, family, min_pixels=min_pixels, max_pixels=max_pixels)
    tiling = {}
    with main_process_first():  # tile files are written once
        for name in ("train", "eval"):
            splits[name], counts = tile_split(
                splits[name], grid, writer, min_visibility=tile_min_visibility, negative_ratio=tile_negative_ratio, seed=seed,
                description=f"{name} tiles",
            )
            tiling[name] = counts.as_dict()
    data_report[TILING_COUNTS] = {"tile_px": tile_px, "overlap_px": tile_overlap_px, **tiling}
    write_json(run_dir / "data_report.json", data_report)
    print({name: len(ds) for name, ds in splits.items()}, tiling)
print("tiles:", f"{tile_px} px, overlap {tile_overlap_px} px" if tile_px else "off (whole images)")

# %%
from helpers.evaluate import plot_samples

plot_samples(splits["train"], n_plot_images, run_dir / "plots" / "samples.png");

# %% [markdown]
# **Coordinate-scaling check.** Qwen2-VL writes boxes in 0..1000 of the image side, Qwen2.5-VL in
# pixels of the *resized* image the model sees, Qwen3-VL and Qwen3.5 in 0..1000. Left: the image with
# its ground truth; right: the processor's own input with the boxes decoded from the target text.
# They must match within one unit of the format, or the run stops here.

# %%
from helpers.evaluate import check_coordinate_scaling, scaling_summary

scaling = check_coordinate_scaling(
    splits["train"], processor, family, min_pixels=min_pixels, max_pixels=max_pixels, n_examples=n_scaling_check_images,
    path=run_dir / "plots" / "coordinate_check.png",
)
print(scaling_summary(scaling))

# %% [markdown]
# **Augmentation** (`augmentation="standard"`): each training sample is flipped, scaled, shifted,
# cropped and recoloured at random, its boxes moved with it by albumentations (clipped at the border;
# an object keeping under 30% of its area is dropped, an emptied image becomes a negative), and its
# answer is written from the moved boxes in the family's frame. Seeded per sample and epoch from
# `seed`; evaluation never augments. Each row: one image, then three epochs of it; below, the
# coordinate check again, on augmented samples.

# %%
from helpers.data import augmented_examples, augmenter_for
from helpers.evaluate import plot_augmentations

augmenter = augmenter_for(augmentation, family, min_pixels=min_pixels, max_pixels=max_pixels, horizontal_flip=augmentation_flip)
if augmenter is not None:
    plot_augmentations(splits["train"], augmenter, seed, n_images=min(n_plot_images, 4), path=run_dir / "plots" / "augmentation.png")
    augmented = augmented_examples(splits["train"], augmenter, seed=seed, n=n_scaling_check_images)
    print(scaling_summary(check_coordinate_scaling(
        augmented, processor, family, min_pixels=min_pixels, max_pixels=max_pixels, n_examples=n_scaling_check_images,
        path=run_dir / "plots" / "coordinate_check_augmented.png",
    )))
print("augmentation:", augmentation)

# %% [markdown]
# ## 3. Formatting as chat messages
#
# Each record becomes a user turn (the image and an instruction naming the classes and the answer
# syntax) and the assistant's target answer. `detection` asks for every object in one answer;
# `grounding` makes one record per (image, class present) and asks for that class alone.

# %%
from helpers.families import add_chat_columns, expand_for_grounding, task_prompts

if task == "grounding":
    splits = {name: expand_for_grounding(ds) for name, ds in splits.items()}
for name in splits:
    prompts = task_prompts(splits[name], family, task=task, class_names=class_names)
    splits[name] = add_chat_columns(
        splits[name], family, prompts, min_pixels=min_pixels, max_pixels=max_pixels, system_prompt=system_prompt
    )

# %% [markdown]
# One training example as the model reads it: the family's chat template, with its default system
# turn unless `system_prompt` is set, and the size the processor resizes the image to.

# %%
from helpers.families import format_detection_messages, resized_size, visual_token_count

example = splits["train"][0]
model_size = resized_size(family, example["width"], example["height"], min_pixels=min_pixels, max_pixels=max_pixels)
n_visual = visual_token_count(family, example["width"], example["height"], min_pixels=min_pixels, max_pixels=max_pixels)
print(f"image {example['width']}x{example['height']}px -> model sees {model_size[0]}x{model_size[1]}px, {n_visual} visual tokens")
messages = format_detection_messages(example["prompt"], example["answer"], example["system_prompt"])
print(processor.apply_chat_template(messages, tokenize=False, **family.chat_template_kwargs))

# %% [markdown]
# An answer longer than `max_new_tokens` is cut at generation and loses its last boxes (a JSON box
# costs about 30 tokens). With tiles, the answers that matter are the tiles' (here, the eval split's):

# %%
from helpers.families import answer_budget_report

print(answer_budget_report(processor.tokenizer, splits["eval" if tile_px else "test"]["answer"], max_new_tokens))

# %% [markdown]
# ## 4. LoRA and what trains
#
# On a real model, LoRA adapters on the language model's projections train a fraction of a percent
# of the weights; `lora_targets` can add the vision tower, the merger and a mixture's experts
# (`helpers.families.registry` holds each family's module names). The offline model starts from random
# weights, so it is fully fine-tuned (`use_lora=False`).

# %%
from helpers.train import lora_config, summarize_trainables, wrap_lora

if use_lora:
    model = wrap_lora(model, lora_config(family, targets=lora_targets, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout))
summarize_trainables(model);

# %% [markdown]
# ## 5. Data collators
#
# The collator turns examples into tensors and decides what the model learns: a label of -100
# carries no loss. Three collators share the chat rendering below; the tests run these cells too.

# %% tags=["collators"]
import torch

from helpers.data import AUGMENTATION_COUNTS, batch_images_and_answers
from helpers.families import IGNORE_INDEX, Family, format_detection_messages, generation_prompt, vision_token_ids


def encode_chat_batch(processor, examples: list[dict], chat_template_kwargs: dict | None = None, augmenter=None) -> dict:
    """Render each example's chat (system, user with image, assistant answer) and tokenise the batch."""
    # Images are decoded here, one batch at a time. With an augmenter, a training sample's image and
    # boxes are transformed first and its answer written from the moved boxes.
    images, answers, counts = batch_images_and_answers(examples, augmenter)
    texts = [
        processor.apply_chat_template(
            format_detection_messages(ex["prompt"], answer, ex["system_prompt"]), tokenize=False, **(chat_template_kwargs or {})
        )
        for ex, answer in zip(examples, answers)
    ]
    batch = processor(text=texts, images=[[image] for image in images], return_tensors="pt", padding=True)
    if counts is not None:
        batch[AUGMENTATION_COUNTS] = counts.as_tensor()  # objects cut, images emptied: the trainer adds them up
    return batch


def find_subsequence_end(ids: list[int], pattern: list[int]) -> int:
    """Index just after the last occurrence of ``pattern`` in ``ids``, or -1 when absent."""
    for start in range(len(ids) - len(pattern), -1, -1):
        if ids[start : start + len(pattern)] == pattern:
            return start + len(pattern)
    return -1

# %% [markdown]
# **1. Masking vision and padding**, what most tutorials do. It still trains the system prompt and the
# instruction, identical in every sample, which dilutes the loss with text the model never writes.

# %% tags=["collators"]
class VisionAndPaddingMaskingCollator:
    """Batch examples; labels are the input ids with padding and vision tokens set to -100."""

    def __init__(self, processor, chat_template_kwargs: dict | None = None):
        self.processor = processor
        self.chat_template_kwargs = chat_template_kwargs  # the family's template options (Qwen3.5: non-thinking)
        self.vision_ids = torch.tensor(sorted(vision_token_ids(processor.tokenizer)))  # image/video pads and delimiters

    def __call__(self, examples: list[dict]) -> dict:
        batch = encode_chat_batch(self.processor, examples, self.chat_template_kwargs)
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
        labels[torch.isin(labels, self.vision_ids)] = IGNORE_INDEX
        batch["labels"] = labels
        return batch

# %%
chat_options = family.chat_template_kwargs  # the family's template options (Qwen3.5: non-thinking mode)
demo_examples = [splits["train"][i] for i in range(4)]
vision_masking = VisionAndPaddingMaskingCollator(processor, chat_options)
demo_batch = vision_masking(demo_examples)
print(f"input_ids {tuple(demo_batch['input_ids'].shape)}, {int((demo_batch['labels'] != IGNORE_INDEX).sum())} trained tokens")

# %% [markdown]
# **2. Assistant-only**, the default: only the answer and its end-of-turn token carry labels. The
# answer starts after the last generation prompt the template writes (Qwen3.5's includes an empty
# think block) and ends at the next `<|im_end|>`; a sample without one is an error.

# %% tags=["collators"]
class AssistantOnlyCollator:
    """Batch examples; labels only on the assistant's answer and its end-of-turn token."""

    def __init__(self, processor, chat_template_kwargs: dict | None = None, augmenter=None):
        self.processor = processor
        self.chat_template_kwargs = chat_template_kwargs
        self.augmenter = augmenter  # transforms training samples (helpers.data.augment); None: as they are
        tokenizer = processor.tokenizer
        # The answer starts right after the generation prompt the template writes: "<|im_start|>assistant\n",
        # or for Qwen3.5 in non-thinking mode "<|im_start|>assistant\n<think>\n\n</think>\n\n", which the
        # prompt then holds at inference, so it is not trained.
        self.answer_prefix_ids = tokenizer.encode(generation_prompt(processor, chat_template_kwargs), add_special_tokens=False)
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def __call__(self, examples: list[dict]) -> dict:
        batch = encode_chat_batch(self.processor, examples, self.chat_template_kwargs, augmenter=self.augmenter)
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        # Padding (<|endoftext|>) never matches the markers, so this works for either padding side.
        for row, ids in enumerate(batch["input_ids"].tolist()):
            name = examples[row].get("image_id", row)
            start = find_subsequence_end(ids, self.answer_prefix_ids)
            if start < 0:
                raise ValueError(f"example {name}: no assistant turn after the generation prompt (are chat_template_kwargs the family's?)")
            if self.end_of_turn_id not in ids[start:]:
                raise ValueError(f"example {name}: the answer has no end-of-turn token (truncated?)")
            end = ids.index(self.end_of_turn_id, start) + 1  # the end-of-turn token is trained too
            labels[row, start:end] = batch["input_ids"][row, start:end]
        batch["labels"] = labels
        return batch

# %% [markdown]
# Its labelled tokens, decoded back to text, read as exactly the target answer and `<|im_end|>`:

# %%
from helpers.train import VerboseCollator

assistant_only = AssistantOnlyCollator(processor, chat_options)
demo_batch = assistant_only(demo_examples)
print(f"input_ids {tuple(demo_batch['input_ids'].shape)}, {int((demo_batch['labels'] != IGNORE_INDEX).sum())} trained tokens")
VerboseCollator(assistant_only, processor, max_samples=1)(demo_examples[:2]);

# %% [markdown]
# **3. Padding-free**: the assistant-only batch packed into one row. Sample boundaries come from
# `position_ids` of shape (4, 1, L): a text row restarting at 0 per sample plus the model's own M-RoPE
# rows. Only flash-attention saves compute that way, so `padding_free` is off by default; Qwen3.5's
# linear-attention layers would leak state across samples, so that family refuses packing.

# %% tags=["collators"]
class PaddingFreeCollator:
    """Assistant-only labels, the batch packed into one row with per-sample (4, 1, L) position ids."""

    def __init__(self, processor, rope_index_fn, chat_template_kwargs: dict | None = None, augmenter=None):
        self.assistant_only = AssistantOnlyCollator(processor, chat_template_kwargs, augmenter=augmenter)
        self.rope_index_fn = rope_index_fn  # the model's get_rope_index: M-RoPE rows need the image grids

    def __call__(self, examples: list[dict]) -> dict:
        padded = self.assistant_only(examples)
        if len(padded["image_grid_thw"]) != len(examples):
            raise ValueError(f"expected one image per example, got {len(padded['image_grid_thw'])} for {len(examples)}")
        pieces = {"input_ids": [], "labels": [], "mm_token_type_ids": [], "position_ids": []}
        for row in range(len(examples)):
            keep = padded["attention_mask"][row].bool()  # drop padding, whichever side it is on
            sample = {key: padded[key][row][keep][None] for key in ("input_ids", "labels", "mm_token_type_ids")}
            mrope, _ = self.rope_index_fn(
                sample["input_ids"], sample["mm_token_type_ids"], image_grid_thw=padded["image_grid_thw"][row : row + 1], attention_mask=None
            )
            text_positions = torch.arange(sample["input_ids"].shape[1]).view(1, 1, -1)
            sample["position_ids"] = torch.cat([text_positions, mrope.to(text_positions.dtype)], dim=0)
            sample["labels"][0, 0] = IGNORE_INDEX  # never predict a sample's first token from the previous sample
            for key, value in sample.items():
                pieces[key].append(value)
        packed = {key: torch.cat(values, dim=-1) for key, values in pieces.items()}
        # No attention mask: the model then reads the sample boundaries from the restarting text positions.
        packed["pixel_values"] = padded["pixel_values"]
        packed["image_grid_thw"] = padded["image_grid_thw"]
        if AUGMENTATION_COUNTS in padded:
            packed[AUGMENTATION_COUNTS] = padded[AUGMENTATION_COUNTS]
        return packed



def rope_index_fn(model):
    """The model's M-RoPE position function, under a PEFT wrapper too."""
    base_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base_model.model.get_rope_index

# %%
padding_free_collator = PaddingFreeCollator(processor, rope_index_fn(model), chat_options)
demo_batch = padding_free_collator(demo_examples)
print(f"input_ids {tuple(demo_batch['input_ids'].shape)}, {int((demo_batch['labels'] != IGNORE_INDEX).sum())} trained tokens (as many as assistant-only)")

# %% [markdown]
# Which collator trains, and where its tokens go over a few batches: image tokens dominate, and
# padding is compute the padding-free collator saves.

# %% tags=["collators"]
def choose_training_collator(processor, model, padding_free: bool, family: Family, augmenter=None):
    """The collator to train with, and why: assistant-only, or padding-free where the family and the attention allow it."""
    chat_options = family.chat_template_kwargs
    if not padding_free:
        return AssistantOnlyCollator(processor, chat_options, augmenter), "assistant-only (padding_free is off)"
    if family.padding_free_refusal:
        reason = f"assistant-only: {family.name} cannot be packed: {family.padding_free_refusal}"
        return AssistantOnlyCollator(processor, chat_options, augmenter), reason
    # Every attention the model loads with separates packed samples by their restarting position ids:
    # flash-attention through its variable-length kernel, sdpa and eager through a block-diagonal mask.
    attention = model.config._attn_implementation
    note = "" if attention.startswith("flash_attention") else ", correct but over a dense mask of the packed row"
    return PaddingFreeCollator(processor, rope_index_fn(model), chat_options, augmenter=augmenter), f"padding-free with {attention}{note}"

# %%
from helpers.train import analyze_token_distribution

collator, why = choose_training_collator(processor, model, padding_free=padding_free, family=family, augmenter=augmenter)
print("training collator:", why)
analyze_token_distribution(collator, splits["train"], processor, n=4 * per_device_train_batch_size, batch_size=per_device_train_batch_size);

# %% [markdown]
# ## 6. Baseline before training
#
# Greedy decoding on the held-out test images, parsed with the same box code as the targets. A
# checkpoint's `generation_config.json` may sample or penalise repeats; evaluation sets its own
# decoding and keeps only the stop tokens. An answer that repeats one object `loop_repeats` times is
# stopped, and near-duplicate boxes are dropped before scoring; the metrics count both. With `tile_px`, each
# test image is answered tile by tile in the same batches (loop control per tile), each tile's boxes are
# read in its own frame and moved into the image's pixels, and boxes of one object are merged across tiles.

# %%
from helpers.evaluate import decoding_config, explicit_settings, unused_generation_settings

print("evaluation decodes with:", explicit_settings(decoding_config(model, processor, max_new_tokens)))
print("not used from the checkpoint's generation config:", unused_generation_settings(model))

# %%
from helpers.evaluate import MAP_50, MAP_SMALL, MEAN_IOU, N_LOOPING_ANSWERS, PARSE_FAILURE_RATE, GenerationSettings, evaluate_model
from helpers.evaluate import slicing_for

generation = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=generation_batch_size, loop_repeats=loop_repeats)
eval_settings = dict(family=family, settings=generation, class_names=class_names, duplicate_iou=duplicate_iou)
# With tiles, the test images are answered tile by tile, boxes mapped back and merged (helpers.evaluate.slicing).
slicing = slicing_for(tile_px, tile_overlap_px, full_image_pass=tile_full_image_pass, merge=tile_merge, merge_threshold=tile_merge_threshold)
baseline_records, baseline_metrics = evaluate_model(model, processor, splits["test"], **eval_settings, slicing=slicing)
print("first answer:", repr(baseline_records[0]["raw_text"][:200]))
{key: baseline_metrics[key] for key in (MAP_50, MAP_SMALL, MEAN_IOU, PARSE_FAILURE_RATE, N_LOOPING_ANSWERS)}

# %% [markdown]
# ## 7. Training with TRL's `SFTTrainer`
#
# The device decides precision, pinned memory and activation checkpointing, in one place:

# %%
from helpers.train import data_loader_settings, device_defaults

device_settings = device_defaults(device, dtype)
loader_settings = data_loader_settings(dataloader_num_workers, device)  # workers decode, augment and collate beside training
device_settings | loader_settings

# %% [markdown]
# TRL's `SFTConfig`. Our collator tokenises, so TRL keeps the raw columns, leaves the dataset alone and
# never truncates (a cut answer would teach the model to stop early).

# %% tags=["sft_config"]
from trl import SFTConfig

from helpers.runtime import is_headless
from helpers.train import best_model_settings

training_args = SFTConfig(
    output_dir=str(run_dir / "checkpoints"),  # checkpoints stay in the run folder
    max_steps=max_steps,  # optimizer steps; -1 runs num_train_epochs instead
    num_train_epochs=num_train_epochs,
    per_device_train_batch_size=per_device_train_batch_size,
    per_device_eval_batch_size=per_device_eval_batch_size,
    gradient_accumulation_steps=gradient_accumulation_steps,
    learning_rate=learning_rate,
    lr_scheduler_type=lr_scheduler_type,
    warmup_steps=warmup_steps,  # a value below 1 is a fraction of the total steps
    weight_decay=weight_decay,
    max_grad_norm=max_grad_norm,
    logging_steps=logging_steps,
    logging_first_step=True,
    eval_strategy="steps",
    eval_steps=eval_steps,  # eval loss on the eval split, and the IoU callback below
    save_strategy="steps",
    save_steps=save_steps,
    save_total_limit=save_total_limit,
    seed=seed,
    data_seed=seed,
    report_to=[] if report_to == "none" else [report_to],
    run_name=run_name,
    remove_unused_columns=False,  # the collator needs the image and text columns
    dataset_kwargs={"skip_prepare_dataset": True},  # the collator tokenises
    max_length=None,  # never truncate an answer
    disable_tqdm=is_headless(),  # headless runs print ConsoleLogCallback's lines instead of a progress table
    **best_model_settings(keep_checkpoint),  # the final weights, or the best checkpoint reloaded at the end
    **device_settings,  # bf16/fp16, pinned memory, activation checkpointing (and gloo DDP for CPU processes)
    **loader_settings,  # dataloader_num_workers, persistent workers, prefetch
)

# %%
from helpers.train import print_training_config

print_training_config(training_args, len(splits["train"]));

# %% [markdown]
# `QwenVLSFTTrainer` is TRL's `SFTTrainer` with a resume that restores Qwen-VL weights (a
# transformers bug would silently restart from the initial ones; `helpers.train.trainer`). Three callbacks
# log the gradient norm after clipping, the held-out IoU at each evaluation, and one console line per log.

# %%
from helpers.train import ConsoleLogCallback, GradNormCallback, IoUEvalCallback, QwenVLSFTTrainer, attach_callbacks

trainer = QwenVLSFTTrainer(
    model=model, args=training_args, train_dataset=splits["train"], eval_dataset=splits["eval"], data_collator=collator,
    processing_class=processor, augment=augmenter is not None,  # training samples seeded per sample and epoch from `seed`
)
callbacks = [GradNormCallback(), ConsoleLogCallback()]
if iou_eval_images > 0:
    callbacks.append(IoUEvalCallback(processor, splits["eval"], n_images=iou_eval_images, **eval_settings))
attach_callbacks(trainer, callbacks)

# %%
from helpers.runtime import clear_memory, reset_peak_memory
from helpers.train import resolve_resume

resume_from = resolve_resume(resume_from_checkpoint, training_args.output_dir)  # None, or this run's latest whole checkpoint
print(f"resuming from {resume_from}" if resume_from else "training from the loaded weights")
clear_memory()
reset_peak_memory()

# %%
train_result = trainer.train(resume_from_checkpoint=resume_from)

# %%
from helpers.runtime import peak_memory_report

train_metrics = train_result.metrics | peak_memory_report()  # measured before evaluation adds its own peak
if augmenter is not None:  # what augmentation cut, into the data report beside what loading kept and skipped
    augmentation_counts = trainer.augmentation_counts().as_dict()
    write_json(run_dir / "data_report.json", data_report | {"augmentation": {"policy": augmentation, **augmentation_counts}})
    print("augmentation:", augmentation_counts)
train_metrics

# %% [markdown]
# ## 8. Evaluation after training
#
# The same function on the same images as the baseline. Each box is scored with the mean probability
# of the tokens that spell it, which COCO's mAP needs to rank predictions; `accuracy_50` is the
# grounding metric (images with one object: is the top box right?); `map_small` is COCO's AP for objects
# under 32x32 pixels.

# %%
from helpers.evaluate import format_stages

finetuned_records, finetuned_metrics = evaluate_model(trainer.model, processor, splits["test"], **eval_settings, slicing=slicing)
metrics = {"baseline": baseline_metrics, "finetuned": finetuned_metrics}
print(format_stages({"baseline": baseline_metrics, "fine-tuned": finetuned_metrics}))

# %% [markdown]
# **What it gets wrong.** Each box is judged from COCO's own matching at IoU 0.5: a true positive, or a
# false positive that is a misplaced box of the right class (`localisation`, IoU 0.1-0.5), a box on another
# class's object (`confusion`), a second box on a found object (`duplicate`) or a box on nothing
# (`background`); an object no box found is `missed`. Per class: AP@.5, precision and recall. All of it
# goes to `metrics.json` under `error_analysis`; `python -m helpers.app <run folder>` browses it.

# %%
from helpers.evaluate import error_analysis, format_errors

error_analyses = {"baseline": error_analysis(baseline_records, class_names), "finetuned": error_analysis(finetuned_records, class_names)}
print(format_errors(error_analyses))

# %% [markdown]
# With tiles, the trained model also answers each test image whole, as it would without slicing:

# %%
if slicing is not None:
    whole_records, metrics["finetuned_whole_image"] = evaluate_model(trainer.model, processor, splits["test"], **eval_settings)
    print(format_stages({"whole image": metrics["finetuned_whole_image"], "tile by tile": finetuned_metrics}))

# %% [markdown]
# ## 9. Reinforcement fine-tuning with GRPO
#
# With `grpo_steps` > 0 the SFT model goes on learning from its own answers: for each training image it
# samples `grpo_generations` answers, scores each with the detection reward, and moves towards the better
# ones of the group, held near the SFT model by a KL penalty (`grpo_beta`). The reward
# (`helpers.train.reward`) pairs predicted and true boxes per class by the assignment maximising their IoU
# and scores 2 x (summed IoU) / (predicted + true boxes): a missed box and an invented one cost alike, a
# copy counts as invented, an inflated or shrunk box pairs poorly, and an image without objects rewards the
# empty answer alone. Rollouts keep the loop control and never sample image or video tokens. Off by default.

# %% tags=["grpo_config"]
from trl import GRPOConfig

from helpers.train import suppressed_token_ids

grpo_args = GRPOConfig(
    output_dir=str(run_dir / "grpo_checkpoints"),  # beside SFT's checkpoints, in the run folder
    max_steps=max(grpo_steps, 1),  # optimizer steps (the stage runs only when grpo_steps > 0)
    per_device_train_batch_size=grpo_generations,  # one image's group of answers per device and step
    num_generations=grpo_generations,  # answers sampled per image, each judged against the group's mean
    temperature=grpo_temperature,
    beta=grpo_beta,  # KL towards the SFT model; 0 skips the reference copy
    learning_rate=grpo_learning_rate,
    max_completion_length=grpo_max_completion_length,
    generation_kwargs={"suppress_tokens": suppressed_token_ids(processor.tokenizer)},  # image/video pads, vision delimiters
    chat_template_kwargs=family.chat_template_kwargs,  # the family's template options (Qwen3.5: non-thinking)
    use_vllm=grpo_use_vllm,
    logging_steps=max(1, min(logging_steps, grpo_steps // 10)),
    save_steps=max(1, grpo_steps // 2),
    save_total_limit=save_total_limit,
    seed=seed,
    report_to=[] if report_to == "none" else [report_to],
    run_name=f"{run_name}-grpo",
    remove_unused_columns=False,  # the reward reads the true boxes and the image size
    disable_tqdm=is_headless(),
    **device_settings,
)

# %%
from helpers.evaluate import format_stages
from helpers.train import GRPO_CONSOLE_KEYS, DetectionReward, QwenVLGRPOTrainer, grpo_dataset, grpo_resume

final_trainer, stages = trainer, {"baseline": baseline_metrics, "SFT": finetuned_metrics}
if grpo_steps > 0:
    reward = DetectionReward(family, min_pixels=min_pixels, max_pixels=max_pixels, duplicate_iou=duplicate_iou, format_weight=grpo_format_weight)
    grpo_trainer = QwenVLGRPOTrainer(
        model=trainer.model, args=grpo_args, train_dataset=grpo_dataset(splits["train"]), processing_class=processor,
        reward=reward, loop_repeats=loop_repeats,
    )
    attach_callbacks(grpo_trainer, [ConsoleLogCallback(keys=GRPO_CONSOLE_KEYS)])
    grpo_trainer.train(resume_from_checkpoint=grpo_resume(resume_from_checkpoint, grpo_args.output_dir))
    grpo_records, metrics["grpo"] = evaluate_model(grpo_trainer.model, processor, splits["test"], **eval_settings, slicing=slicing)
    final_trainer, stages["GRPO"] = grpo_trainer, metrics["grpo"]
    error_analyses["grpo"] = error_analysis(grpo_records, class_names)
    print(f"rollouts ended for looping: {grpo_trainer.loops_stopped}")
print(format_stages(stages))

# %% [markdown]
# ## 10. Pictures
#
# The same test images before and after training (and after GRPO): ground truth solid green,
# predictions dashed magenta with their scores.

# %%
from helpers.evaluate import plot_stages

records_by_stage = {"baseline": baseline_records, "fine-tuned": finetuned_records} | ({"GRPO": grpo_records} if grpo_steps > 0 else {})
plot_stages(splits["test"], records_by_stage, n=n_plot_images, path=run_dir / "plots" / "predictions.png");

# %% [markdown]
# Per class, AP@.5, precision and recall before and after training (worst class on top), then, for each
# kind of error, the test images with most of it: ground truth green, the erring boxes (or the missed
# objects, dotted) drawn in the kind's colour.

# %%
from helpers.evaluate import judge_images, plot_error_examples, plot_per_class

saved_records = grpo_records if grpo_steps > 0 else finetuned_records  # the saved model's answers
plot_per_class({stage: analysis["per_class"] for stage, analysis in error_analyses.items()}, run_dir / "plots" / "per_class.png")
plot_error_examples(splits["test"], saved_records, judge_images(saved_records, class_names), path=run_dir / "plots" / "errors.png");

# %% [markdown]
# With tiles: one test image answered whole (left) and tile by tile (right, the tile grid drawn faintly,
# the merged boxes dashed).

# %%
from helpers.evaluate import plot_sliced

if slicing is not None:
    plot_sliced(splits["test"], whole_records, finetuned_records, grid=slicing.grid, path=run_dir / "plots" / "sliced.png");

# %% [markdown]
# Loss, gradient norm before and after clipping, held-out IoU and learning rate; then precision
# against recall at IoU 0.5, before and after.

# %%
from helpers.evaluate import plot_training_curves

plot_training_curves(trainer.state.log_history, run_dir / "plots" / "training_curves.png");

# %% [markdown]
# With GRPO: the reward and its spread in each group, the answers' length, the predicted-to-true area of the
# paired boxes (inflation shows above 1) and the share of duplicate boxes, step by step.

# %%
from helpers.evaluate import plot_grpo_curves

if grpo_steps > 0:
    plot_grpo_curves(grpo_trainer.state.log_history, run_dir / "plots" / "grpo_curves.png");

# %%
from helpers.evaluate import PR_CURVE_50, plot_pr_curves

plot_pr_curves({"baseline": baseline_metrics[PR_CURVE_50], "fine-tuned": finetuned_metrics[PR_CURVE_50]},
               run_dir / "plots" / "pr_curve.png");

# %% [markdown]
# ## 11. Saving
#
# The trained weights (the adapter alone with LoRA; after GRPO, its weights) and the processor go to
# `model/`, beside the metrics and every prediction.

# %%
from helpers.data import PREVIEW_FOLDER, write_previews
from helpers.detect import InferenceSettings, save_inference_settings
from helpers.runtime import barrier, is_main_process, write_jsonl
from helpers.train import kept_checkpoint, save_trained_model

save_trained_model(final_trainer, processor, run_dir / "model")  # the last stage's weights
inference = InferenceSettings(
    model_type=family.model_type, task=task, class_names=class_names, system_prompt=system_prompt, min_pixels=min_pixels,
    max_pixels=max_pixels, max_new_tokens=max_new_tokens, loop_repeats=loop_repeats, duplicate_iou=duplicate_iou,
    base_model=model_path if use_lora else "",  # an adapter needs its base; whole weights need nothing else
    tile_px=tile_px, tile_overlap_px=tile_overlap_px, tile_full_image_pass=tile_full_image_pass, tile_merge=tile_merge,
    tile_merge_threshold=tile_merge_threshold,  # a model trained on tiles detects tile by tile
)
save_inference_settings(run_dir / "model", inference)  # model/ alone is then enough to detect (section 12)
write_json(run_dir / "metrics.json", metrics | {"error_analysis": error_analyses, "train": train_metrics,
                                                 "kept": kept_checkpoint(trainer.state, keep_checkpoint)})
write_jsonl(run_dir / "predictions.jsonl", saved_records)
write_jsonl(run_dir / "predictions_baseline.jsonl", baseline_records)
write_json(run_dir / "log_history.json", trainer.state.log_history)
if grpo_steps > 0:
    write_jsonl(run_dir / "predictions_sft.jsonl", finetuned_records)
    write_json(run_dir / "grpo_log_history.json", grpo_trainer.state.log_history)
if is_main_process():
    write_previews(splits["test"], run_dir / PREVIEW_FOLDER)  # what python -m helpers.app shows beside the predictions
barrier()  # every rank reads model/ below only once the main process has written it

# %% [markdown]
# With `merge_adapter=True`, the base is loaded fresh and the adapter merged into it: `model_merged/`
# loads with `from_pretrained`, no PEFT needed.

# %%
from helpers.train import merge_adapter_into_base, merge_refusal

refusal = merge_refusal(quantization, use_lora) if merge_adapter else None
if refusal:
    print("merge_adapter:", refusal)
elif merge_adapter:
    merged_dir = merge_adapter_into_base(model_path, adapter_dir=run_dir / "model", out_dir=run_dir / "model_merged", dtype=dtype)
    print("merge_adapter: base and adapter merged into", merged_dir)
sorted(str(path.relative_to(run_dir)) for path in run_dir.iterdir())

# %% [markdown]
# ## 12. Inference with the saved model
#
# What you do after training: load the run's `model/` fresh, with the prompt, classes and settings saved
# beside it, and read boxes, with labels and scores, in the pixels of an image it has not trained on (here, a
# held-out test image). The same from a shell: `python -m helpers.detect <run folder> photo.jpg --out drawn.png`.

# %%
from helpers.detect import Detector
from helpers.runtime import release_model

release_model(model)  # the training copy's memory, before a second copy loads
detector = Detector.from_folder(run_dir, quantization=quantization, attn_implementation=attn_implementation)
detector.settings

# %%
from helpers.data import open_image
from helpers.evaluate import plot_image_grid

held_out = splits["test"][0]
new_image = open_image(held_out["image"])
result = detector(new_image, classes=[held_out["query"]] if task == "grounding" else None)
print("raw answer:", repr(result.raw_answer[:200]))
plot_image_grid(
    [new_image], box_sets=[[(result.boxes, "magenta", "--")]], titles=[f"{len(result.boxes)} boxes"],
    path=run_dir / "plots" / "inference.png", columns=1,
)
result.as_dict()["boxes"]
