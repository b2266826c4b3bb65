"""Training speed and memory of the cookbook recipe against ours, at real size, on the same batches.

Two recipes train the same samples (synthetic images of varied sizes up to the GPU preset's
max_pixels, answers of 1 to 8 objects) for the same number of steps:

(a) cookbook: the Hugging Face cookbook's Qwen2-VL QLoRA recipe
    (https://huggingface.co/learn/cookbook/fine_tuning_vlm_trl): the whole model in 4-bit NF4 with double
    quantisation and bf16 compute, LoRA r=8 (alpha 16, dropout 0.05) on q_proj and v_proj, labels on every
    token but padding and vision tokens, padded batches in dataset order, gradient checkpointing.
(b) ours: the notebook's recipe on a GPU: bf16 weights, LoRA on every linear layer of the language model
    (the notebook's rank, alpha and dropout), assistant-only labels, activation checkpointing, and
    padding-free batches (TRL's padding_free, https://huggingface.co/docs/trl/main/en/reducing_memory#padding-free)
    with flash-attention's variable-length kernel where flash-attn is installed, else length-grouped
    padded batches (packing over sdpa attends over a dense mask of the whole row and saves nothing).
(b)+liger: (b) with Liger-kernel's Triton kernels (https://github.com/linkedin/Liger-Kernel: RMSNorm,
    SwiGLU, M-RoPE, fused linear cross-entropy), applied the way transformers' Trainer applies them
    (use_liger_kernel), only where liger_kernel imports and a GPU runs it; users report no memory gain on
    Qwen3-VL, so it is measured, not assumed.

Each recipe runs the step the Trainer runs (bf16 autocast on a GPU, forward, backward, fused AdamW) on
batches collated beforehand: image processing, which a data loader's workers overlap with training,
does not count. Printed per recipe: samples/s, tokens/s (real tokens, padding excluded), peak GPU memory,
model FLOPs per sample and MFU, then each recipe's ratios to (a). Before training it prints where the
tokens go (vision, prompt, answer, padding) and the FLOPs per sample of each recipe, which explain most
of the difference (``speed_accounting``).

    python benchmarks/train_throughput.py --family qwen2_vl                # real size, on a GPU
    python benchmarks/train_throughput.py --family qwen2_vl --count-only   # real-size token shares and FLOPs, on a CPU
    python benchmarks/train_throughput.py --tiny                           # the same code on the offline model (CPU)
"""

from __future__ import annotations

import argparse

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from offline_setup import (  # noqa: I001 (sets sys.path first)
    CLASSES, REAL_MAX_PIXELS, REAL_MIN_PIXELS, REAL_SIDES_PX, benchmark_parser, real_size_checkpoint,
)
import speed_accounting as acc

import torch
from peft import LoraConfig
from transformers import AutoConfig, AutoModelForImageTextToText, BitsAndBytesConfig
from transformers.utils import is_flash_attn_2_available

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.registry import get_family
from helpers.families.chat import add_chat_columns, detection_prompt
from helpers.runtime.device import clear_memory, peak_memory_report, reset_peak_memory
from helpers.train.lora import count_parameters, lora_config, wrap_lora
from helpers.train.model import load_model
from tests.support.notebook_cells import run_tagged_cells
from helpers.offline import build_tiny_checkpoint
from helpers.families.processors import load_processor
from tests.support.real_vocab import real_processor
from helpers.data.synthetic import make_synthetic_dataset

COOKBOOK = "cookbook"
OURS = "ours"
OURS_LIGER = "ours+liger"
# The cookbook's LoraConfig and BitsAndBytesConfig, as published (fine_tuning_vlm_trl).
COOKBOOK_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "bias": "none", "task_type": "CAUSAL_LM"}
MAX_OBJECTS = 8  # answers of 1..8 objects: variable-length targets
TINY_SIDES_PX = (64, 224)  # --tiny: small images within the offline bounds


@dataclass(frozen=True)
class Recipe:
    """One training recipe: how it labels, batches, stores and adapts the model."""

    name: str
    collator: str  # a collator class of the notebook's "collators" cells
    layout: str  # "padded" (dataset order), "length-grouped" or "packed"
    quantized: bool  # 4-bit NF4 weights (cookbook) or bf16 (ours); always unquantised on a CPU
    lora_targets: str | list[str]  # PEFT target_modules: names (suffix match) or one regex
    lora_rank: int
    checkpointing: bool
    liger: bool


def liger_available() -> bool:
    """True when Liger-kernel imports (its Triton kernels also need a GPU)."""
    try:
        import liger_kernel.transformers  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def make_recipes(family: str, packing: str, on_gpu: bool, liger: str, notebook: dict, count_only: bool) -> tuple[list[Recipe], list[str]]:
    """The recipes to compare and notes on what this machine changes about them."""
    notes = []
    flash = is_flash_attn_2_available()
    packed = packing == "on" or (packing == "auto" and flash)
    if get_family(family).padding_free_refusal and packed:
        notes.append(f"{get_family(family).name} refuses packing ({get_family(family).padding_free_refusal}): length-grouped batches")
        packed = False
    if packing == "auto" and not flash:
        notes.append("flash-attn is not installed: (b) uses length-grouped padded batches instead of packing")
    if packed and not flash:
        notes.append("packed over sdpa: a dense block-diagonal mask of the whole row (correct, no compute saved)")
    if not on_gpu and not count_only:
        notes.append("no GPU: (a) runs without 4-bit (bitsandbytes 4-bit training breaks on a CPU), in fp32 like (b); no memory figures")
    ours = Recipe(OURS, "PaddingFreeCollator" if packed else "AssistantOnlyCollator", "packed" if packed else "length-grouped", False,
                  get_family(family).lora_targets["language"], notebook["lora_rank"], True, False)
    recipes = [Recipe(COOKBOOK, "VisionAndPaddingMaskingCollator", "padded", on_gpu, COOKBOOK_LORA["target_modules"], COOKBOOK_LORA["r"], True, False), ours]
    use_liger = liger == "on" or (liger == "auto" and liger_available() and on_gpu)
    if liger == "auto" and not use_liger and not count_only:
        notes.append("Liger-kernel not used: " + ("it is not installed" if not liger_available() else "its Triton kernels need a GPU"))
    if use_liger:
        recipes.append(Recipe(**{**ours.__dict__, "name": OURS_LIGER, "liger": True}))
    return recipes, notes


def make_examples(family: str, n: int, tiny: bool, seed: int = 3) -> list[dict]:
    """``n`` synthetic detection examples with their chat columns: real-size images (or small ones with ``--tiny``), 1..8 objects each."""
    low, high = TINY_SIDES_PX if tiny else REAL_SIDES_PX
    bounds = (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS) if tiny else (REAL_MIN_PIXELS, REAL_MAX_PIXELS)
    dataset = make_synthetic_dataset(n, seed=seed, min_side_px=low, max_side_px=high, max_objects=MAX_OBJECTS)
    return list(add_chat_columns(dataset, get_family(family), detection_prompt(get_family(family), CLASSES), *bounds))


def batch_indexes(recipe: Recipe, samples: list[acc.SampleTokens], batch_size: int) -> list[list[int]]:
    """Which samples each step trains on: dataset order for padded and packed batches, similar lengths together for length-grouped."""
    if recipe.layout == "length-grouped":
        return acc.length_grouped(samples, batch_size)
    return [list(range(i, min(i + batch_size, len(samples)))) for i in range(0, len(samples), batch_size)]


def labelled_tokens(recipe: Recipe, sample: acc.SampleTokens) -> int:
    """Tokens of a sample that carry loss: the cookbook labels the prompt and the answer, ours the answer only."""
    return sample.answer + (sample.prompt if recipe.collator == "VisionAndPaddingMaskingCollator" else 0)


def recipe_spans(recipe: Recipe, batches: list[list[acc.SampleTokens]]) -> list[list[acc.Span]]:
    """Positions and attention context of every sample under the recipe's layout."""
    if recipe.layout == "packed":
        return acc.packed_spans(batches, varlen_attention=is_flash_attn_2_available())
    return acc.padded_spans(batches)


def account(recipes: list[Recipe], samples: list[acc.SampleTokens], batch_size: int, arch: acc.Architecture, lora: dict[str, int]) -> dict:
    """Per recipe: its batches, token shares and FLOPs per sample (executed, and model FLOPs for MFU)."""
    figures = {}
    for recipe in recipes:
        indexes = batch_indexes(recipe, samples, batch_size)
        batches = [[samples[i] for i in batch] for batch in indexes]
        spans = recipe_spans(recipe, batches)
        positions = sum(span.positions for batch_spans in spans for span in batch_spans)
        trained = sum(labelled_tokens(recipe, s) for b in batches for s in b)
        figures[recipe.name] = {
            "indexes": indexes, "spans": spans, "positions": positions, "trained_share": trained / positions,
            "shares": acc.token_shares(batches, spans),
            "flops": acc.training_flops(arch, batches, spans, lora[recipe.name], recipe.checkpointing),
            "model_flops": acc.model_flops(arch, batches, lora[recipe.name]),
        }
    return figures


def print_accounting(title: str, figures: dict, n_samples: int) -> None:
    """Token shares and FLOPs per sample, one row per recipe."""
    print(title)
    print(f"{'recipe':<12}{'vision':>8}{'prompt':>8}{'answer':>8}{'padding':>9}{'trained':>9}{'vision FLOPs':>14}{'LM FLOPs':>11}{'total':>11}{'model':>11}")
    for name, f in figures.items():
        s, fl = f["shares"], f["flops"]
        print(f"{name:<12}{s['vision']:>8.1%}{s['prompt']:>8.1%}{s['answer']:>8.1%}{s['padding']:>9.1%}{f['trained_share']:>9.1%}"
              f"{fl['vision']:>14.3e}{fl['language']:>11.3e}{fl['total']:>11.3e}{f['model_flops']:>11.3e}")
    print(f"shares of all positions; FLOPs per sample over {n_samples} samples: the vision tower's forward, the language model's forward, "
          "backward and recomputation (speed_accounting.language_flops); model: without padding or recomputation, MFU's numerator")


def answer_span_fn(processor, cells: dict, chat_options: dict):
    """The assistant-only collator's own rule for the answer's token span, as a function of a sample's ids."""
    collator = cells["AssistantOnlyCollator"](processor, chat_options)

    def answer_span(ids: list[int]) -> tuple[int, int]:
        start = cells["find_subsequence_end"](ids, collator.answer_prefix_ids)
        return start, ids.index(collator.end_of_turn_id, start) + 1

    return answer_span


def load_recipe_model(recipe: Recipe, checkpoint: Path, family: str, device: str, dtype: torch.dtype, notebook: dict):
    """The recipe's model: 4-bit (cookbook, on a GPU) or unquantised, Liger kernels where asked, checkpointing, LoRA."""
    attention = "flash_attention_2" if recipe.layout == "packed" and is_flash_attn_2_available() else "sdpa"
    if recipe.quantized:
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=torch.bfloat16, quantization_config=bnb, device_map={"": device},
                                                            attn_implementation=attention)
    else:
        model = load_model(str(checkpoint), "none", attention, dtype, device)
    if recipe.liger:
        # transformers' Trainer(use_liger_kernel=True) patches the model instance this way, before PEFT wraps it.
        from liger_kernel.transformers import _apply_liger_kernel_to_instance  # noqa: PLC0415 (optional, imported only when used)

        _apply_liger_kernel_to_instance(model=model)
    if recipe.checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if recipe.name == COOKBOOK:
        config = LoraConfig(**COOKBOOK_LORA)
    else:
        config = lora_config(get_family(family), ["language"], notebook["lora_rank"], notebook["lora_alpha"], notebook["lora_dropout"])
    return wrap_lora(model, config)


def train_steps(model, batches: list[dict], warmup: int, device: str) -> float:
    """Train on every batch (AdamW; bf16 autocast on a GPU); return the seconds the batches after the first ``warmup`` took."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, fused=device == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    model.train()
    start = 0.0
    for step, batch in enumerate(batches):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        inputs = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        with autocast:
            loss = model(**inputs, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def check_layout(batch: dict, recipe: Recipe, spans: list[acc.Span], samples: list[acc.SampleTokens]) -> None:
    """Stop when a collated batch is not the layout the accounting assumed (then its figures would be wrong)."""
    expected = (1, sum(s.length for s in samples)) if recipe.layout == "packed" else (len(samples), spans[0].positions)
    _, real = acc.batch_positions(batch)
    trained = sum(labelled_tokens(recipe, s) for s in samples)
    if tuple(batch["input_ids"].shape) != expected or real != sum(s.length for s in samples) or acc.trained_tokens(batch) != trained:
        raise RuntimeError(f"{recipe.name}: collated input_ids {tuple(batch['input_ids'].shape)} with {real} real and "
                           f"{acc.trained_tokens(batch)} trained tokens; the accounting expected {expected} with "
                           f"{sum(s.length for s in samples)} and {trained}")


def run_recipe(recipe: Recipe, figures: dict, examples: list[dict], samples: list[acc.SampleTokens], args, setup: dict) -> dict:
    """Collate the recipe's batches, train on them and return its speed, memory and MFU."""
    cells, processor, rope_index = setup["cells"], setup["processor"], setup["rope_index"]
    options = get_family(args.family).chat_template_kwargs
    collator = (cells[recipe.collator](processor, rope_index, options) if recipe.collator == "PaddingFreeCollator"
                else cells[recipe.collator](processor, options))
    batches = []
    for indexes, spans in zip(figures["indexes"], figures["spans"]):
        batch = collator([examples[i] for i in indexes])
        check_layout(batch, recipe, spans, [samples[i] for i in indexes])
        batches.append(batch)
    clear_memory()
    reset_peak_memory()
    model = load_recipe_model(recipe, setup["checkpoint"], args.family, setup["device"], setup["dtype"], setup["notebook"])
    trainable, _ = count_parameters(model)
    seconds = train_steps(model, batches, args.warmup_steps, setup["device"])
    timed = batches[args.warmup_steps :]
    n_samples = sum(len(indexes) for indexes in figures["indexes"][args.warmup_steps :])
    tokens = sum(acc.batch_positions(batch)[1] for batch in timed)
    memory = peak_memory_report()
    del model
    clear_memory()
    samples_per_s = n_samples / seconds
    peak = setup["peak_tflops"]
    return {
        "samples_per_s": samples_per_s, "tokens_per_s": tokens / seconds, "trained_tokens": sum(acc.trained_tokens(b) for b in timed),
        "peak_memory_gib": memory.get("gpu_peak_allocated_gib"), "trainable_parameters": trainable,
        "mfu": figures["model_flops"] * samples_per_s / (peak * 1e12) if peak else None,
    }


def ratios_to_cookbook(speed: dict[str, dict]) -> dict[str, dict]:
    """Each recipe's figures divided by the cookbook's (memory only where both were measured)."""
    base = speed[COOKBOOK]
    out = {}
    for name, figures in speed.items():
        if name == COOKBOOK:
            continue
        out[name] = {key: figures[key] / base[key] for key in ("samples_per_s", "tokens_per_s")}
        if figures["peak_memory_gib"] and base["peak_memory_gib"]:
            out[name]["peak_memory_gib"] = figures["peak_memory_gib"] / base["peak_memory_gib"]
    return out


def print_speed(speed: dict[str, dict], ratios: dict[str, dict]) -> None:
    """One row per recipe, then each recipe's ratios to the cookbook."""
    print(f"{'recipe':<12}{'samples/s':>11}{'tokens/s':>11}{'peak GiB':>10}{'MFU':>8}")
    for name, f in speed.items():
        memory = f"{f['peak_memory_gib']:.2f}" if f["peak_memory_gib"] is not None else "n/a"
        mfu = f"{f['mfu']:.1%}" if f["mfu"] is not None else "n/a"
        print(f"{name:<12}{f['samples_per_s']:>11.3f}{f['tokens_per_s']:>11.1f}{memory:>10}{mfu:>8}")
    for name, r in ratios.items():
        memory = f"{r['peak_memory_gib']:.2f}x" if "peak_memory_gib" in r else "n/a"
        print(f"{name} / {COOKBOOK}: samples/s {r['samples_per_s']:.2f}x, tokens/s {r['tokens_per_s']:.2f}x, peak memory {memory}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The benchmark's options on top of the shared ones (family, model folder)."""
    parser = benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the offline tiny model and small images: the same code on a CPU")
    parser.add_argument("--count-only", action="store_true", help="token shares and FLOPs only, from the config on the meta device: no weights, no GPU")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per step (the cookbook's per_device_train_batch_size)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per recipe")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first (kernel selection, allocator warm-up)")
    parser.add_argument("--packing", choices=["auto", "on", "off"], default="auto", help="auto: pack where flash-attn is installed")
    parser.add_argument("--liger", choices=["auto", "on", "off"], default="auto", help="auto: add (b)+liger where liger_kernel imports on a GPU")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak for MFU (default: from its name)")
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    return parser.parse_args(argv)


def model_source(args: argparse.Namespace) -> tuple:
    """``(config, processor, pixel bounds, checkpoint or None)``: the tiny offline model, or the published architecture at real size."""
    if args.tiny:
        checkpoint = build_tiny_checkpoint(get_family(args.family), Path(args.model_dir) / args.family)
        bounds = (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
        return AutoConfig.from_pretrained(checkpoint), load_processor(checkpoint, *bounds), bounds, checkpoint
    bounds = (REAL_MIN_PIXELS, REAL_MAX_PIXELS)
    return acc.real_size_config(args.family), real_processor(get_family(args.family), *bounds), bounds, None


def time_recipes(recipes: list[Recipe], figures: dict, examples: list[dict], samples: list, args: argparse.Namespace, setup: dict) -> dict:
    """Train each recipe for the timed steps; an optional kernel library that fails is reported in the notes, not fatal."""
    speed: dict = {}
    for recipe in recipes:
        try:
            speed[recipe.name] = run_recipe(recipe, figures[recipe.name], examples, samples, args, setup)
        except Exception as error:
            if not recipe.liger:
                raise
            setup["notes"].append(f"{recipe.name} failed, so it has no figures: {type(error).__name__}: {error}")
            print("note:", setup["notes"][-1])
            clear_memory()
        print(f"{recipe.name}: {speed.get(recipe.name)}", flush=True)
        write_json(args.json, setup["results"] | {"speed": speed})  # a run cut short keeps the recipes it finished
    return speed


def main(argv: list[str] | None = None) -> dict:
    """Account, train and print; return every figure."""
    args = parse_args(argv)
    torch.manual_seed(0)
    on_gpu = torch.cuda.is_available() and not args.count_only
    device, dtype = ("cuda", torch.bfloat16) if on_gpu else ("cpu", torch.float32)
    notebook = run_tagged_cells("parameters")  # the notebook's LoRA rank, alpha and dropout
    cells = run_tagged_cells("collators")
    config, processor, bounds, checkpoint = model_source(args)
    meta = acc.meta_model(config)
    recipes, notes = make_recipes(args.family, args.packing, on_gpu, args.liger, notebook, args.count_only)
    lora = {r.name: acc.lora_parameters(meta, r.lora_targets, r.lora_rank) for r in recipes}

    n_samples = (args.warmup_steps + args.steps) * args.batch_size
    examples = make_examples(args.family, n_samples, args.tiny)
    answer_span = answer_span_fn(processor, cells, get_family(args.family).chat_template_kwargs)
    samples = [acc.sample_tokens(processor, ex, args.family, *bounds, answer_span) for ex in examples]
    figures = account(recipes, samples, args.batch_size, acc.architecture(meta), lora)
    size = "tiny offline" if args.tiny else "real-size"
    print(f"{size} {get_family(args.family).name}: {sum(p.numel() for p in meta.parameters()) / 1e9:.3f} B parameters, batch {args.batch_size}, "
          f"{args.warmup_steps} + {args.steps} steps, pixels {bounds[0]}..{bounds[1]}, {device}")
    for note in notes:
        print("note:", note)
    print_accounting("where the tokens go, and FLOPs per sample:", figures, n_samples)
    results = {"family": args.family, "tiny": args.tiny, "device": device, "notes": notes, "lora_parameters": lora,
               "recipes": [r.__dict__ for r in recipes],
               "accounting": {name: {k: v for k, v in f.items() if k not in ("indexes", "spans")} for name, f in figures.items()}}
    if not args.count_only:
        checkpoint = checkpoint or real_size_checkpoint(args.family, Path(args.model_dir) / f"real-{args.family}", device)
        name = torch.cuda.get_device_name(0) if on_gpu else "cpu"
        results["gpu"] = name
        setup = {"cells": cells, "processor": processor, "rope_index": meta.model.get_rope_index, "checkpoint": checkpoint, "device": device,
                 "dtype": dtype, "notebook": notebook, "peak_tflops": args.peak_tflops or (acc.peak_tflops(name) if on_gpu else None),
                 "notes": notes, "results": results}
        results["speed"] = time_recipes(recipes, figures, examples, samples, args, setup)
        results["ratios"] = ratios_to_cookbook(results["speed"])
        print_speed(results["speed"], results["ratios"])
    write_json(args.json, results)
    return results


def write_json(path: str | None, results: dict) -> None:
    """Write the figures to ``path`` when one is given."""
    if path:
        Path(path).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
