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
# You will fine-tune a Qwen-VL model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5, or their mixture-of-experts
# variants) to answer "where is every object?"
# with boxes in the model family's own coordinate convention, train on the answer tokens only, and
# measure the result before and after training on held-out images.
#
# **Hardware.** The default parameters run the *offline profile* (a tiny random-initialised
# Qwen-VL built locally and a synthetic dataset) on any CPU in minutes. A real model
# (`model_id="Qwen/Qwen2-VL-2B-Instruct"`) needs a CUDA GPU; `quantization="4bit"` with LoRA
# (QLoRA) keeps the memory of a 2B model small.
# Every knob is in the next cell, with the values it allows; papermill overrides them (`-p name value`
# or `-f preset.yaml`).

# %% tags=["parameters"]
from typing import Annotated  # each knob: name: Annotated[type, the values it allows] = default

from helpers.parameters import AT_LEAST_0, AT_LEAST_1, ATTENTION, BBOX_FORMAT, FRACTION, NON_EMPTY, POSITIVE, QUANTIZATION  # noqa: I001
from helpers.parameters import REPEATS, REPORT_TO, RUN_NAME, SCHEDULE, SIDE_PX, STEPS, TASK

model_id: Annotated[str, NON_EMPTY] = "offline:qwen2_vl"  # hub id, local checkpoint dir, or "offline:<model_type>" (tiny random model built here; see helpers.families)
task: Annotated[str, TASK] = "detection"  # "detection": find every class in one answer; "grounding": the prompt names one class to find
system_prompt: str = ""  # the system turn; empty keeps the family template's default (Qwen2/2.5-VL: a helpful assistant; Qwen3-VL: none)
offline_model_dir: Annotated[str, NON_EMPTY] = "outputs/.offline_models"  # cache of "offline:" checkpoints, built once
dataset_source: Annotated[str, NON_EMPTY] = "synthetic"  # "synthetic", a hub id, or a local folder: save_to_disk, COCO or JSONL (see helpers.data)
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
synthetic_classes: Annotated[list, NON_EMPTY] = ["red circle", "green square", "blue triangle"]  # see helpers.synthetic.CLASS_STYLES
synthetic_min_side_px: Annotated[int, SIDE_PX] = 96  # synthetic image sides are drawn from [min, max] independently
synthetic_max_side_px: Annotated[int, SIDE_PX] = 224  # upper bound of a synthetic image side
synthetic_max_objects: Annotated[int, AT_LEAST_1] = 4  # 1..N objects per synthetic image
synthetic_position_tint: bool = True  # red/green background tint along x/y: a sense of place for a random vision tower
synthetic_square_images: bool = False  # square images of varied size (all resized to one grid when min_pixels equals max_pixels)
synthetic_empty_fraction: Annotated[float, FRACTION] = 0.0  # share of synthetic images without objects (they teach the empty answer)
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
warmup_ratio: Annotated[float, FRACTION] = 0.05  # fraction of the total steps spent warming the learning rate up
lr_scheduler_type: Annotated[str, SCHEDULE] = "cosine"  # "cosine", "linear" or "constant_with_warmup"
weight_decay: Annotated[float, AT_LEAST_0] = 0.0  # AdamW decoupled weight decay
max_grad_norm: Annotated[float, AT_LEAST_0] = 1.0  # gradient-norm clipping (0: none)
logging_steps: Annotated[int, AT_LEAST_1] = 50  # log the training loss every N optimizer steps
eval_steps: Annotated[int, AT_LEAST_1] = 500  # compute the eval loss every N steps
save_steps: Annotated[int, AT_LEAST_1] = 750  # write a checkpoint every N steps
save_total_limit: Annotated[int, AT_LEAST_1] = 2  # checkpoints kept in the run folder
resume_from_checkpoint: Annotated[bool | str, NON_EMPTY] = False  # True: continue from this run's latest checkpoint; or a checkpoint path
merge_adapter: bool = False  # LoRA on an unquantised base: also save model_merged/, base and adapter in one
seed: Annotated[int, AT_LEAST_0] = 42  # seeds Python, NumPy, torch and the synthetic data
run_name: Annotated[str, RUN_NAME] = "offline-demo"  # the run writes outputs/<run_name>/ and nothing else
output_root: Annotated[str, NON_EMPTY] = "outputs"  # parent folder of every run folder (~ is expanded)
report_to: Annotated[str, REPORT_TO] = "none"  # "none", "wandb" or "tensorboard"; W&B honours WANDB_MODE (online, offline, disabled)
max_new_tokens: Annotated[int, AT_LEAST_1] = 160  # generation budget per answer; a JSON box is about 30 tokens
generation_batch_size: Annotated[int, AT_LEAST_1] = 8  # images per generate() call in evaluation
loop_repeats: Annotated[int, REPEATS] = 3  # stop an answer once one object's text has been written this many times: a loop (0: never)
duplicate_iou: Annotated[float, FRACTION] = 0.95  # before scoring, drop a box overlapping a higher-scored same-label box this much (0: keep all)
iou_eval_images: Annotated[int, AT_LEAST_0] = 16  # held-out images the IoU callback generates on at each evaluation (0: off)
n_plot_images: Annotated[int, AT_LEAST_1] = 8  # images in each picture grid
n_scaling_check_images: Annotated[int, AT_LEAST_1] = 3  # images in the coordinate-scaling check of section 2

# %% [markdown]
# The next cell checks every parameter against the type and values declared beside it, so a typo in
# a papermill call (`-p learning_rate 2e-4x`, `-p per_device_train_batch_size 0`) stops here with a
# message naming the parameter instead of deep inside training (`helpers.run_notebook` checks the same
# before a kernel starts), and derives the values that depend on them (papermill does not recompute
# derived values).

# %%
from helpers.parameters import check_parameters

params = check_parameters({name: globals()[name] for name in __annotations__}, __annotations__)
split_names = {"train": train_split, "eval": eval_split, "test": test_split}
split_sizes = {"train": train_size, "eval": eval_size, "test": test_size}
params

# %% [markdown]
# ## 1. Set-up
#
# Seed everything, pick the device and dtype (bf16 on a modern GPU, fp32 on CPU), create the run
# folder (every file this run writes goes under it) and point the logging backend at it. W&B
# reads its key from the environment (`WANDB_API_KEY`); without one, online mode falls back to
# offline instead of failing. Secrets are never printed or saved.
#
# Then read the **model family** from the checkpoint's config (`model_type`), never from the id's
# spelling, because the family decides how boxes are written, and load the model and processor:
# the class comes from the config, weights from safetensors, no remote code. `quantization`
# `4bit` (NF4, double quantisation, bf16 compute) is QLoRA's setting and needs CUDA; `8bit` also
# runs on CPU; the vision tower and `lm_head` always stay unquantised. The processor is the family's
# stock one (it needs torchvision, for its video processor), and the resolution bounds go to its
# image processor's `size`, the supported knob.

# %%
import torch
from transformers import set_seed

from helpers.distributed import main_process_first, quiet_unless_main, start_process_group
from helpers.modeling import load_model_and_processor, pick_device_and_dtype, weights_dtype
from helpers.processing import read_family
from helpers.run import environment_report, prepare_run_dir, resolve_model_path, write_json
from helpers.tracking import configure_reporting

set_seed(seed)
device, dtype = pick_device_and_dtype()  # under a launcher: the GPU of this process's LOCAL_RANK
start_process_group(device)  # one process (papermill, Jupyter): nothing; under a launcher: gloo on CPU, NCCL on GPUs
quiet_unless_main()  # under a launcher only the main process prints, writes files and draws
with main_process_first():  # built once by the main process, then read by the others
    run_dir = prepare_run_dir(output_root, run_name)
    model_path = resolve_model_path(model_id, offline_model_dir)
reporting = configure_reporting(report_to, run_dir)
environment = environment_report(device, dtype)
write_json(run_dir / "params.json", {"parameters": params, "environment": environment})
family = read_family(model_path)
model, processor = load_model_and_processor(
    model_path, quantization, attn_implementation, weights_dtype(dtype, use_lora), device, min_pixels, max_pixels
)
print(f"run folder: {run_dir}; reporting: {reporting}")
print(f"{type(model).__name__} (family {family}), attention {model.config._attn_implementation}, quantization {quantization}")
print(f"{type(processor).__name__}: {type(processor.image_processor).__name__}, {type(processor.video_processor).__name__}")
environment

# %% [markdown]
# ## 2. Data
#
# Every source is loaded into one schema: a reference to the image (its file, or the hub's encoded
# bytes, decoded only when a batch needs it) and a list of objects, each a `label` and a
# `bbox_xyxy_px` box (`[x1, y1, x2, y2]` in pixels of the upright image, EXIF orientation applied).
# With `image_cache`, each image is also saved once, downscaled to the size the model sees, so a
# folder of 12-megapixel photos trains as fast as one of small ones. COCO crowd regions are kept
# aside for the metrics, never trained on. Bad records are never silently lost: a missing,
# unreadable or non-file image, a path leaving the dataset folder, a size that disagrees with the
# annotations, a box that is inverted, empty or outside the image, an unknown class, or a label
# holding markup is skipped (a box partly outside is clipped), and each is counted below and
# saved in `data_report.json`. With `data_strict=True` the first one stops the run instead,
# naming the record. The synthetic images vary in size (and, unless
# `synthetic_square_images`, in aspect ratio) on purpose: the processor resizes each one
# differently, which is exactly where coordinate bugs hide. The faint red/green background tint
# (`synthetic_position_tint`) tells a vision tower that starts from random weights where in the
# image a patch lies; pretrained towers learnt that from their data.

# %%
from helpers.data import IMAGE_CACHE_FOLDER, ImageLoading, dataset_class_names, format_data_report, image_cache_for, load_detection_splits
from helpers.parameters import expand_path
from helpers.plotting import plot_samples

synthetic_options = {
    "class_names": synthetic_classes,
    "min_side_px": synthetic_min_side_px,
    "max_side_px": synthetic_max_side_px,
    "max_objects": synthetic_max_objects,
    "position_tint": synthetic_position_tint,
    "square": synthetic_square_images,
    "empty_fraction": synthetic_empty_fraction,
}
cache = image_cache_for(expand_path(output_root) / IMAGE_CACHE_FOLDER, dataset_source, family, min_pixels, max_pixels) if image_cache else None
with main_process_first():  # the image cache is built once
    splits, load_reports = load_detection_splits(
        dataset_source,
        split_names,
        split_sizes,
        dataset_bbox_format,
        seed,
        synthetic_options=synthetic_options,
        known_classes=dataset_classes,
        strict=data_strict,
        loading=ImageLoading(cache=cache),
    )
class_names = dataset_class_names(splits["train"])
write_json(run_dir / "data_report.json", {name: report.as_dict() for name, report in load_reports.items()})
print({name: len(ds) for name, ds in splits.items()}, "classes:", class_names)
print(format_data_report(load_reports))
for report in load_reports.values():
    for message in report.examples[:5]:
        print("  ", message)

# %%
plot_samples(splits["train"], n_plot_images, run_dir / "plots" / "samples.png");

# %% [markdown]
# **Coordinate-scaling check.** Each family writes boxes in its own frame: Qwen2-VL as
# `<|box_start|>(x1,y1),(x2,y2)<|box_end|>` in 0..1000 of the image side, Qwen2.5-VL as JSON in
# pixels *of the resized image the model sees* (sides rounded to multiples of 28 within the
# min/max pixel bounds), Qwen3-VL as JSON in 0..1000. Left: the original image with its ground
# truth. Right: the image rebuilt from the processor's own pixel values, with the boxes decoded
# from the target text. They must sit on the same objects, and the worst round-trip error must
# stay within one unit of the format; otherwise the run stops here, before teaching wrong boxes.

# %%
from helpers.scaling_check import check_coordinate_scaling

scaling = check_coordinate_scaling(
    splits["train"], processor, family, min_pixels, max_pixels, n_scaling_check_images, run_dir / "plots" / "coordinate_check.png"
)
for item in scaling["examples"]:
    print(f"image {item['image_id']}: {item['image_size']} px -> model input {item['processor_size']} px, "
          f"worst error {item['max_error_px']:.2f} px (one format unit: {item['allowed_px']:.2f} px)")
if not scaling["ok"]:
    raise RuntimeError(f"coordinate-scaling check failed: {scaling['examples']}")

# %% [markdown]
# ## 3. Formatting as chat messages
#
# Each example becomes a user turn (the image and an instruction naming the classes and the answer
# syntax) and the assistant's target answer, after the system turn the family's own chat template
# writes by default (Qwen2-VL and Qwen2.5-VL: "You are a helpful assistant."; Qwen3-VL: none), or
# `system_prompt` when you set one. Training, the baseline and the fine-tuned evaluation all use the
# same one. `helpers.boxes` writes the targets, and the same code reads the model's answers back in
# evaluation.
#
# Two tasks. `detection` asks for every object of every class in one answer. `grounding` asks for
# one class at a time: each image becomes one record per class it holds, the prompt names that
# class, and the answer lists only its boxes ("Locate every red circle in the image."). Each
# record keeps its own prompt, and evaluation asks exactly the question training taught.

# %%
from helpers.boxes import resized_size, visual_token_count
from helpers.families import get_family
from helpers.formatting import add_chat_columns, expand_for_grounding, format_detection_messages, task_prompts

if task == "grounding":  # one record per (image, class present), the prompt naming that class
    splits = {name: expand_for_grounding(ds) for name, ds in splits.items()}
for name in splits:
    prompts = task_prompts(splits[name], family, task, class_names)
    splits[name] = add_chat_columns(splits[name], family, prompts, min_pixels, max_pixels, system_prompt)

example = splits["train"][0]
model_size = resized_size(family, example["width"], example["height"], min_pixels, max_pixels)
n_visual = visual_token_count(family, example["width"], example["height"], min_pixels, max_pixels)
print(f"image {example['width']}x{example['height']}px -> model sees {model_size[0]}x{model_size[1]}px, "
      f"{n_visual} visual tokens (min_pixels {min_pixels}, max_pixels {max_pixels})")
messages = format_detection_messages(example["prompt"], example["answer"], example["system_prompt"])
print(processor.apply_chat_template(messages, tokenize=False, **get_family(family).chat_template_kwargs))

# %% [markdown]
# Generation stops after `max_new_tokens`, so an answer longer than that is cut and its last boxes
# are lost. Count how many test answers would not fit (digits are one token each in Qwen's
# vocabulary, so a JSON box costs about 30 tokens).

# %%
answer_tokens = [len(processor.tokenizer(answer, add_special_tokens=False).input_ids) + 1 for answer in splits["test"]["answer"]]
too_long = sum(n > max_new_tokens for n in answer_tokens)
print(f"test answers: {min(answer_tokens)}..{max(answer_tokens)} tokens (with end-of-turn); max_new_tokens={max_new_tokens}")
if too_long:
    print(f"WARNING: {too_long} of {len(answer_tokens)} test answers exceed max_new_tokens and will be cut; raise it")

# %% [markdown]
# ## 4. LoRA and what trains
#
# On a real model, LoRA adapters on the language model's attention and MLP projections train a
# fraction of a percent of the weights (Qwen3.5's Gated DeltaNet projections too). The targets come
# from the family's record (`helpers.families`): regexes anchored on each block, so a projection name
# shared with the vision tower is not adapted by accident. `lora_targets` can add the vision tower,
# the merger that feeds its features to the language model and, in a mixture of experts, the experts
# (fused 3-D weights that PEFT adapts by parameter name; the routers stay frozen). The offline model
# starts from random weights, so it is fully fine-tuned instead (`use_lora=False`): adapters on a
# random model have nothing to adapt.

# %%
from helpers.modeling import lora_config, summarize_trainables, wrap_lora

if use_lora:
    model = wrap_lora(model, lora_config(family, lora_targets, lora_rank, lora_alpha, lora_dropout))
trainables = summarize_trainables(model)

# %% [markdown]
# ## 5. Data collators
#
# The collator turns examples into tensors and decides what the model learns: positions whose label
# is -100 carry no loss. Three collators, each given the processor and the family's chat-template
# options explicitly (Qwen3.5 is rendered in non-thinking mode):
#
# 1. `VisionAndPaddingMaskingCollator`, what most tutorials do: labels are the input ids with
#    padding and vision tokens masked. It still trains the model to reproduce the system prompt and
#    the instruction, which are identical in every sample: that dilutes the loss with tokens the
#    model can predict perfectly and spends capacity on text it will never have to write.
# 2. `AssistantOnlyCollator`, the default: only the **answer and its end-of-turn token** carry
#    labels. The answer span is found from the tokenised chat structure: the answer starts after
#    the last generation prompt the template writes (`<|im_start|>assistant\n`; for Qwen3.5 also
#    the empty think block `<think>\n\n</think>\n\n`, which the prompt holds at inference) and
#    ends at the next `<|im_end|>` (ids taken from the tokenizer). A sample without an answer, or
#    whose answer was cut off, is an error, not a silent zero-loss row.
# 3. `PaddingFreeCollator`: the assistant-only batch packed into one row without padding. The
#    model finds the sample boundaries from `position_ids` of shape (4, 1, L): a text row that
#    restarts at 0 for each sample, plus the three M-RoPE rows (time, height, width) computed per
#    sample by the model's own `get_rope_index`. With no attention mask and the cache off, this
#    transformers version builds block-diagonal attention for `sdpa` and `eager`, and
#    flash-attention uses its variable-length kernel. Only flash-attention saves compute that way;
#    `sdpa`/`eager` attend over a dense mask of the whole packed row, so `padding_free` is off by
#    default. Qwen3.5's Gated DeltaNet layers carry a recurrent state from token to token and get no
#    sample boundaries, so those families refuse packing and say why.

# %% tags=["collators"]
import torch

from helpers.families import Family
from helpers.formatting import IGNORE_INDEX, format_detection_messages, generation_prompt, vision_token_ids
from helpers.images import open_image


def encode_chat_batch(processor, examples: list[dict], chat_template_kwargs: dict | None = None) -> dict:
    """Render each example's chat (system, user with image, assistant answer) and tokenise the batch."""
    texts = [
        processor.apply_chat_template(
            format_detection_messages(ex["prompt"], ex["answer"], ex["system_prompt"]), tokenize=False, **(chat_template_kwargs or {})
        )
        for ex in examples
    ]
    images = [[open_image(ex["image"])] for ex in examples]  # decoded here, one batch at a time
    return processor(text=texts, images=images, return_tensors="pt", padding=True)


def find_subsequence_end(ids: list[int], pattern: list[int]) -> int:
    """Index just after the last occurrence of ``pattern`` in ``ids``, or -1 when absent."""
    for start in range(len(ids) - len(pattern), -1, -1):
        if ids[start : start + len(pattern)] == pattern:
            return start + len(pattern)
    return -1


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


class AssistantOnlyCollator:
    """Batch examples; labels only on the assistant's answer and its end-of-turn token."""

    def __init__(self, processor, chat_template_kwargs: dict | None = None):
        self.processor = processor
        self.chat_template_kwargs = chat_template_kwargs
        tokenizer = processor.tokenizer
        # The answer starts right after the generation prompt the template writes: "<|im_start|>assistant\n",
        # or for Qwen3.5 in non-thinking mode "<|im_start|>assistant\n<think>\n\n</think>\n\n", which the
        # prompt then holds at inference, so it is not trained.
        self.answer_prefix_ids = tokenizer.encode(generation_prompt(processor, chat_template_kwargs), add_special_tokens=False)
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def __call__(self, examples: list[dict]) -> dict:
        batch = encode_chat_batch(self.processor, examples, self.chat_template_kwargs)
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


class PaddingFreeCollator:
    """Assistant-only labels, the batch packed into one row with per-sample (4, 1, L) position ids."""

    def __init__(self, processor, rope_index_fn, chat_template_kwargs: dict | None = None):
        self.assistant_only = AssistantOnlyCollator(processor, chat_template_kwargs)
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
        return packed


# Attention implementations that separate packed samples by their restarting position ids in this
# transformers version: flash-attention through its variable-length kernel, sdpa and eager through
# a block-diagonal mask built when no attention mask is given.
PACKED_ATTENTION = ("flash_attention_2", "sdpa", "eager")


def rope_index_fn(model):
    """The model's M-RoPE position function, under a PEFT wrapper too."""
    base_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base_model.model.get_rope_index


def choose_training_collator(processor, model, padding_free: bool, family: Family):
    """The collator to train with, and why: assistant-only, or padding-free where the family and the attention allow it."""
    chat_options = family.chat_template_kwargs
    if not padding_free:
        return AssistantOnlyCollator(processor, chat_options), "assistant-only (padding_free is off)"
    if family.padding_free_refusal:
        return AssistantOnlyCollator(processor, chat_options), f"assistant-only: {family.name} cannot be packed: {family.padding_free_refusal}"
    attention = model.config._attn_implementation
    if attention not in PACKED_ATTENTION:
        return AssistantOnlyCollator(processor, chat_options), f"assistant-only: attention {attention!r} cannot separate packed samples"
    note = "" if attention.startswith("flash_attention") else ", correct but over a dense mask of the packed row"
    return PaddingFreeCollator(processor, rope_index_fn(model), chat_options), f"padding-free with {attention}{note}"


# %% [markdown]
# The three collators on the same batch: how many tokens each trains on, and the shapes they
# produce. The assistant-only and padding-free collators must train on exactly the same tokens.
# The labelled tokens of the assistant-only batch, decoded back to text, must read as exactly the
# target answers followed by `<|im_end|>`.

# %%
from helpers.collator_debug import VerboseCollator, analyze_token_distribution
from helpers.families import get_family

chat_options = get_family(family).chat_template_kwargs  # the family's template options, e.g. Qwen3.5's non-thinking mode
collators = {
    "vision+padding masking": VisionAndPaddingMaskingCollator(processor, chat_options),
    "assistant-only": AssistantOnlyCollator(processor, chat_options),
    "padding-free": PaddingFreeCollator(processor, rope_index_fn(model), chat_options),
}
demo_examples = [splits["train"][i] for i in range(4)]
for name, candidate in collators.items():
    demo_batch = candidate(demo_examples)
    trained = int((demo_batch["labels"] != IGNORE_INDEX).sum())
    print(f"{name:>24}: input_ids {tuple(demo_batch['input_ids'].shape)}, {trained} trained tokens")
VerboseCollator(collators["assistant-only"], processor, max_samples=1)(demo_examples[:2]);

# %% [markdown]
# Which collator trains, and where its tokens go over a few batches: image tokens dominate the
# sequence, and padding is wasted compute that the padding-free collator removes.

# %%
collator, why = choose_training_collator(processor, model, padding_free, get_family(family))
print("training collator:", why)
token_stats = analyze_token_distribution(collator, splits["train"], processor, n=4 * per_device_train_batch_size, batch_size=per_device_train_batch_size)

# %% [markdown]
# ## 6. Baseline before training
#
# Generate on the held-out test images with greedy decoding, parse the answers with the same box
# code used for the targets, and match predictions to ground truth. The untrained model is the
# reference every later number is compared with.
#
# Greedy means the most probable token at every step and nothing else. A checkpoint's
# `generation_config.json` may say otherwise (the Qwen2-VL and Qwen2.5-VL Instruct ones sample
# and set `repetition_penalty` 1.05, which penalises every digit already written), so evaluation
# sets its own decoding and keeps only the checkpoint's stop tokens; the saved model keeps the
# checkpoint's config for you. Boxes are read in the grid the processor actually produced.
#
# Qwen-VL models can loop: the same box again and again until `max_new_tokens`. An answer stops
# once one object has been written `loop_repeats` times, and boxes duplicating a higher-scored box
# of their label (IoU of at least `duplicate_iou`) are dropped before scoring; the metrics count both.

# %%
from helpers.inference import decoding_config, evaluate_model, explicit_settings, unused_generation_settings

print("evaluation decodes with:", explicit_settings(decoding_config(model, processor, max_new_tokens)))
print("not used from the checkpoint's generation config:", unused_generation_settings(model))
eval_settings = dict(family=family, max_new_tokens=max_new_tokens, batch_size=generation_batch_size, class_names=class_names,
                     loop_repeats=loop_repeats, duplicate_iou=duplicate_iou)
baseline_records, baseline_metrics = evaluate_model(model, processor, splits["test"], **eval_settings)
print("first answer:", repr(baseline_records[0]["raw_text"][:200]))
baseline_metrics

# %% [markdown]
# ## 7. Training with TRL's `SFTTrainer`
#
# `create_sft_config` turns the parameters into TRL's `SFTConfig`. Our collator does the
# tokenisation, so TRL is told to leave the dataset alone (`skip_prepare_dataset`), to keep the
# image and text columns the collator needs (`remove_unused_columns=False`), and not to truncate
# (`max_length=None`: a cut answer would teach the model to stop early). Per device: bf16 and
# activation checkpointing on a GPU, fp32 on CPU, pinned memory only with CUDA. Checkpoints go to
# the run folder; `resume_from_checkpoint=True` continues the latest one after an interruption
# (`QwenVLSFTTrainer` works around a transformers bug that would silently restart from the
# initial weights).
#
# Three callbacks: `GradNormCallback` logs the gradient norm after clipping (the trainer's own
# `grad_norm` is before clipping), `IoUEvalCallback` generates on a few held-out images at each
# evaluation and logs their mean IoU and parse-failure rate, which the eval loss cannot show, and
# `ConsoleLogCallback` prints one line per log so a headless run can be followed.

# %%
from helpers.callbacks import ConsoleLogCallback, GradNormCallback, IoUEvalCallback, attach_callbacks
from helpers.gpu import clear_memory, peak_memory_report, reset_peak_memory
from helpers.training import QwenVLSFTTrainer, create_sft_config, print_training_config, resolve_resume

training_args = create_sft_config(params, run_dir, device, dtype)
print_training_config(training_args, len(splits["train"]))
trainer = QwenVLSFTTrainer(  # TRL's SFTTrainer, with a resume that restores Qwen-VL weights (see helpers.training)
    model=model,
    args=training_args,
    train_dataset=splits["train"],
    eval_dataset=splits["eval"],
    data_collator=collator,
    processing_class=processor,
)
callbacks = [GradNormCallback(), ConsoleLogCallback()]
if iou_eval_images > 0:
    callbacks.append(IoUEvalCallback(processor, splits["eval"], n_images=iou_eval_images, **eval_settings))
attach_callbacks(trainer, callbacks)
resume_from = resolve_resume(resume_from_checkpoint, training_args.output_dir)
if resume_from:
    print(f"resuming from {resume_from}")
clear_memory()
reset_peak_memory()
train_result = trainer.train(resume_from_checkpoint=resume_from)
train_metrics = train_result.metrics | peak_memory_report()  # measured before evaluation adds its own peak
train_metrics

# %% [markdown]
# ## 8. Evaluation after training
#
# The same function on the same images as the baseline, so the two columns compare like with like.
# COCO's mAP needs a confidence per box to rank the predictions; a VLM's answer has none, so each
# box is scored with the mean probability of the tokens that spell it (see `helpers.inference`).
# mAP@[.5:.95] averages AP over IoU thresholds from 0.5 to 0.95, so it rewards tight boxes;
# mean IoU, precision and recall at 0.5 come from greedy one-to-one matching within each class;
# `accuracy_50` (images with one object: is the top box right?) is the grounding metric.

# %%
from helpers.metrics import format_comparison

finetuned_records, finetuned_metrics = evaluate_model(trainer.model, processor, splits["test"], **eval_settings)
metrics = {"baseline": baseline_metrics, "finetuned": finetuned_metrics}
print(format_comparison(baseline_metrics, finetuned_metrics))

# %% [markdown]
# ## 9. Pictures
#
# Ground truth (solid green) against the fine-tuned model's predictions with their scores (dashed
# magenta); the training curves from the trainer's log history (loss, gradient norm before and
# after clipping, held-out IoU from the callback, learning rate); and the precision-recall curve
# at IoU 0.5 before and after training.

# %%
from helpers.plotting import plot_pr_curves, plot_predictions, plot_training_curves

plot_predictions(splits["test"], finetuned_records, n_plot_images, run_dir / "plots" / "predictions.png");

# %%
plot_training_curves(trainer.state.log_history, run_dir / "plots" / "training_curves.png");

# %%
plot_pr_curves({"baseline": baseline_metrics["pr_curve_50"], "fine-tuned": finetuned_metrics["pr_curve_50"]},
               run_dir / "plots" / "pr_curve.png");

# %% [markdown]
# ## 10. Saving
#
# The trained weights (the adapter alone when LoRA was used) and the processor go to `model/`,
# next to the metrics and every prediction, so the run can be inspected and reused later. With
# `merge_adapter=True`, the base model is loaded fresh, the adapter merged into it, and the result
# saved to `model_merged/`: one checkpoint that loads with `from_pretrained`, no PEFT needed.

# %%
from helpers.distributed import barrier
from helpers.export import merge_adapter as merge_adapter_into_base
from helpers.export import merge_refusal, save_processor
from helpers.run import write_jsonl

trainer.save_model(str(run_dir / "model"))  # every rank takes part: FSDP and ZeRO-3 gather the sharded weights
save_processor(processor, run_dir / "model")
write_json(run_dir / "metrics.json", metrics | {"train": train_metrics})
write_jsonl(run_dir / "predictions.jsonl", finetuned_records)
write_jsonl(run_dir / "predictions_baseline.jsonl", baseline_records)
write_json(run_dir / "log_history.json", trainer.state.log_history)
if merge_adapter:
    refusal = merge_refusal(quantization, use_lora)
    if refusal:
        print("merge_adapter:", refusal)
    else:
        print("merged model:", merge_adapter_into_base(model_path, run_dir / "model", run_dir / "model_merged", dtype))
barrier()  # every rank reads model/ below only once the main process has written it
sorted(str(path.relative_to(run_dir)) for path in run_dir.iterdir())

# %% [markdown]
# ## 11. Inference with the saved model
#
# What you do after training: load `model/` fresh (the adapter on its base model, or the full
# weights), give it a new image, and read boxes with labels and scores in that image's pixels.

# %%
from helpers.export import load_trained_model
from helpers.images import open_image
from helpers.formatting import detection_prompt, grounding_prompt
from helpers.inference import detect
from helpers.plotting import plot_image_grid
from helpers.synthetic import make_synthetic_dataset

del trainer, model, collators, collator  # free the training copy (the collators hold its rope function) first
clear_memory()
saved_model, saved_processor = load_trained_model(run_dir / "model", model_path, quantization, attn_implementation, dtype, device)
if dataset_source == "synthetic":  # an image no split has seen
    new_record = make_synthetic_dataset(1, seed=seed + 12345, **synthetic_options)[0]
else:
    new_record = splits["test"][0]
new_image = open_image(new_record["image"])
if task == "grounding":  # ask for a class the image holds
    new_prompt = grounding_prompt(family, new_record["objects"][0]["label"] if new_record["objects"] else class_names[0])
else:
    new_prompt = detection_prompt(family, class_names)
print("prompt:", new_prompt)
boxes = detect(saved_model, saved_processor, new_image, family, new_prompt, max_new_tokens, system_prompt, loop_repeats, duplicate_iou)
plot_image_grid([new_image], [[(boxes, "magenta", "--")]], [f"{len(boxes)} boxes"], run_dir / "plots" / "inference.png", columns=1)
boxes
