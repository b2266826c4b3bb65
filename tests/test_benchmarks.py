"""The benchmark scripts run and report every figure, and their bookkeeping adds up (they time nothing inside the suite)."""

from __future__ import annotations

import re

import pytest

from helpers.families.boxes import visual_token_count
from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.chat import add_chat_columns, detection_prompt
from tests.support.notebook_cells import run_tagged_cells
from tests.support.real_vocab import real_processor
from helpers.data.synthetic import make_synthetic_dataset
from helpers.families.registry import get_family


def test_collator_throughput_reports_each_collator_and_the_training_step(tmp_path, capsys, load_benchmark):
    results = load_benchmark("collator_throughput").main(["--batches", "2", "--batch-size", "2", "--model-dir", str(tmp_path),
                                                          "--workers", "0", "1"])
    fed = {f"{kind} {policy} {workers} workers" for kind in ("fed", "data wait share") for policy in ("none", "standard") for workers in (0, 1)}
    assert set(results) == {"vision+padding masking", "assistant-only", "padding-free", "training step"} | fed
    assert all(rate > 0 for rate in results.values())
    assert all(0 <= results[f"data wait share {policy} {workers} workers"] < 1 for policy in ("none", "standard") for workers in (0, 1))
    out = capsys.readouterr().out
    assert "vs training" in out and "data wait" in out


def test_data_path_measures_each_worker_against_the_gpu(tmp_path, capsys, load_benchmark):
    rows = load_benchmark("data_path").main(["--n", "2", "--photo-size", "640x480", "--families", "qwen2_vl", "--folder", str(tmp_path)])
    assert [(row["cache"], row["augmentation"]) for row in rows] == [(True, "none"), (True, "standard"), (False, "none"), (False, "standard")]
    for row in rows:
        assert row["worker_samples_per_s"] > 0 and row["flops_per_sample"] > 1e12  # a 2B model on a photo: teraFLOPs
        assert row["workers_needed"] == -(-row["gpu_samples_per_s"] // row["worker_samples_per_s"])
    assert "| Qwen2-VL | cached | none |" in capsys.readouterr().out


def test_eval_throughput_generates_the_same_answers_both_ways_and_prints_their_rates(tmp_path, capsys, load_benchmark):
    results = load_benchmark("eval_throughput").main(["--tiny", "--model-dir", str(tmp_path)])
    batched, single = results["batched"], results["one-by-one"]
    assert results["identical_answers"] == 1.0
    assert batched["images"] == single["images"] == results["images"] == 4
    assert (batched["batch_size"], single["batch_size"]) == (2, 1)
    assert batched["generated_tokens"] == single["generated_tokens"] <= 4 * 4  # the same answers, at most 4 new tokens each
    assert batched["images_per_s"] > 0 and single["images_per_s"] > 0
    out = capsys.readouterr().out
    printed = {name: float(re.search(rf"^{re.escape(name)} \(\d+ per call\)\s+([\d.]+)", out, re.M).group(1)) for name in ("batched", "one-by-one")}
    printed_ratio = float(re.search(r"^ratio\s+([\d.]+)x", out, re.M).group(1))
    assert printed_ratio == pytest.approx(printed["batched"] / printed["one-by-one"], abs=0.02, rel=0.02)
    assert "identical answers: 100%" in out


def small_architecture(acc, windows=(0, 0)):
    """A hand-sized architecture: every number small enough to compute on paper."""
    return acc.Architecture(patch_params=10, merged_params=6, merge_size=2, vision_width=4, vision_windows=windows,
                            lm_params=100, head_params=20, lm_layers=2, lm_width=8)


def test_flops_formulas_match_a_hand_computation(load_benchmark):
    acc = load_benchmark("speed_accounting")
    arch = small_architecture(acc)
    # Vision, 16 patches (4 merged tokens), two full-attention blocks: 2*10*16 + 2*6*4 + 2 * 4*4*16*16
    assert acc.vision_flops(arch, 16) == 320 + 48 + 8192
    # Qwen2.5-VL-like windows: block 0 attends over 4 patches, block 1 over the whole image
    assert acc.vision_flops(small_architecture(acc, windows=(4, 0)), 16) == 320 + 48 + 4 * 4 * 16 * 4 + 4 * 4 * 16 * 16
    span = acc.Span(positions=5, context=5)
    # Without checkpointing, LoRA of 3 weights: per position 2*100*2 + 2*3*3 + 2*20*2 = 498; attention 4*2*8*5*3 = 960
    assert acc.language_flops(arch, span, lora_params=3, checkpointing=False) == 5 * (498 + 960)
    # Checkpointing recomputes the decoder layers' forward: 2*100*3 + 2*3*4 + 80 = 704; attention 4*2*8*5*4 = 1280
    assert acc.language_flops(arch, span, lora_params=3, checkpointing=True) == 5 * (704 + 1280)


def test_layouts_and_token_shares_add_up(load_benchmark):
    acc = load_benchmark("speed_accounting")
    samples = [acc.SampleTokens(vision=10, prompt=3, answer=2, patches=40), acc.SampleTokens(vision=4, prompt=3, answer=1, patches=16),
               acc.SampleTokens(vision=12, prompt=3, answer=5, patches=48)]
    batches = [samples[:2], samples[2:]]
    padded, packed = acc.padded_spans(batches), acc.packed_spans(batches, varlen_attention=True)
    assert [[s.positions for s in b] for b in padded] == [[15, 15], [20]]
    assert [[(s.positions, s.context) for s in b] for b in packed] == [[(15, 15), (8, 8)], [(20, 20)]]
    assert [[s.context for s in b] for b in acc.packed_spans(batches, varlen_attention=False)] == [[23, 23], [20]]  # a dense mask over the row
    shares = acc.token_shares(batches, padded)
    assert sum(shares.values()) == pytest.approx(1)
    assert shares["padding"] == pytest.approx(7 / 50)
    assert acc.token_shares(batches, packed)["padding"] == 0
    assert acc.length_grouped(samples, 2) == [[2, 0], [1]]
    # Model FLOPs count real tokens only: the padded layout's padding does not enter MFU.
    arch = small_architecture(acc)
    assert acc.model_flops(arch, batches, 0) == acc.training_flops(arch, batches, packed, 0, checkpointing=False)["total"]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_sample_counts_equal_what_the_collator_builds_on_the_real_vocabulary(family, load_benchmark):
    acc, train = load_benchmark("speed_accounting"), load_benchmark("train_throughput")
    processor = real_processor(get_family(family), DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    cells = run_tagged_cells("collators")
    dataset = make_synthetic_dataset(3, seed=5, max_objects=4)
    examples = list(add_chat_columns(dataset, get_family(family), detection_prompt(get_family(family), ["red circle"]), DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS))
    span = train.answer_span_fn(processor, cells, {})
    for example in examples:
        counted = acc.sample_tokens(processor, example, family, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS, span)
        batch = cells["AssistantOnlyCollator"](processor)([example])
        assert counted.length == batch["input_ids"].shape[1]
        assert counted.answer == int((batch["labels"] != -100).sum())
        assert counted.vision == visual_token_count(get_family(family), example["width"], example["height"], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS) + 2
        assert counted.patches == int(batch["image_grid_thw"].prod())


def test_real_size_architectures_are_read_from_the_published_configs(load_benchmark):
    acc = load_benchmark("speed_accounting")
    qwen2 = acc.architecture(acc.meta_model(acc.real_size_config("qwen2_vl")))
    assert (qwen2.lm_layers, qwen2.lm_width, qwen2.head_params, qwen2.vision_width) == (28, 1536, 151936 * 1536, 1280)
    assert qwen2.vision_windows == (0,) * 32  # full attention in every block
    qwen25 = acc.architecture(acc.meta_model(acc.real_size_config("qwen2_5_vl")))
    assert [i for i, w in enumerate(qwen25.vision_windows) if w == 0] == [7, 15, 23, 31] and set(qwen25.vision_windows) == {0, 64}
    with pytest.raises(FileNotFoundError, match="no published config.json"):
        acc.real_size_config("qwen3_5")


def test_train_throughput_count_only_at_real_size(capsys, load_benchmark):
    results = load_benchmark("train_throughput").main(["--family", "qwen2_vl", "--count-only", "--batch-size", "2", "--steps", "2", "--warmup-steps", "0"])
    accounting = results["accounting"]
    assert "speed" not in results
    for figures in accounting.values():
        assert sum(figures["shares"].values()) == pytest.approx(1)
        assert figures["flops"]["total"] == pytest.approx(figures["flops"]["vision"] + figures["flops"]["language"])
    cookbook, ours = accounting["cookbook"], accounting["ours"]
    assert cookbook["flops"]["vision"] == ours["flops"]["vision"]  # the same images, a frozen tower
    assert ours["shares"]["padding"] <= cookbook["shares"]["padding"]  # length grouping never pads more
    assert cookbook["trained_share"] > ours["trained_share"]  # the cookbook also trains on the prompt
    # LoRA r=8 on q/v of 28 layers (1536 -> 1536 and 1536 -> 256) against rank 16 on every language projection
    assert results["lora_parameters"]["cookbook"] == 28 * 8 * ((1536 + 1536) + (1536 + 256))
    assert "2.209 B parameters" in capsys.readouterr().out


def test_train_throughput_tiny_trains_both_recipes_and_prints_consistent_ratios(tmp_path, capsys, load_benchmark):
    results = load_benchmark("train_throughput").main(
        ["--tiny", "--batch-size", "2", "--steps", "1", "--warmup-steps", "1", "--packing", "on", "--model-dir", str(tmp_path), "--json", str(tmp_path / "f.json")]
    )
    accounting, speed = results["accounting"], results["speed"]
    assert set(speed) == {"cookbook", "ours"} and results["device"] == "cpu"
    assert accounting["ours"]["shares"]["padding"] == 0  # packed
    positions = {name: f["positions"] for name, f in accounting.items()}
    for kind in ("vision", "prompt", "answer"):  # the same samples under both layouts
        assert accounting["cookbook"]["shares"][kind] * positions["cookbook"] == pytest.approx(accounting["ours"]["shares"][kind] * positions["ours"])
    assert speed["cookbook"]["trainable_parameters"] == results["lora_parameters"]["cookbook"]  # PEFT's count equals the accounting's
    assert speed["ours"]["trainable_parameters"] == results["lora_parameters"]["ours"]
    assert all(f["samples_per_s"] > 0 and f["tokens_per_s"] > 0 and f["peak_memory_gib"] is None for f in speed.values())
    out = capsys.readouterr().out
    assert "(a) runs without 4-bit" in out  # said plainly: no 4-bit on a CPU
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(cookbook|ours)\s+([\d.]+)\s", out, re.M)}
    printed_ratio = float(re.search(r"^ours / cookbook: samples/s ([\d.]+)x", out, re.M).group(1))
    assert printed_ratio == pytest.approx(rows["ours"] / rows["cookbook"], abs=0.01, rel=0.01)
    assert (tmp_path / "f.json").is_file()


@pytest.mark.slow
def test_data_loading_builds_the_cache_once_and_reads_it_back(tmp_path, capsys, load_benchmark):
    figures = load_benchmark("data_loading").main(["--n", "1", "--photo-size", "640x480", "--batch-size", "1",
                                                "--folder", str(tmp_path / "photos"), "--model-dir", str(tmp_path / "models")])
    for n_images, result in figures["results"].items():
        assert result["images"] == n_images
        assert result["first_load_counts"]["images_cached"] == n_images  # every photo is shrunk to the model's size once
        assert result["second_load_counts"]["images_from_cache"] == n_images and result["second_load_counts"]["images_cached"] == 0
        assert result["batch_tokens"] > 0 and result["peak_rss_mib"] > 0
    assert sorted(figures["results"]) == [1, 4]
    assert "peak RSS 4 / 1 photos" in capsys.readouterr().out


def test_augmentation_table_gives_each_arms_mean_and_gain(load_benchmark):
    rows = [{"arm": arm, "seed": seed, "finetuned_map_50": m50, "finetuned_map_50_95": m, "train_s": 1.0}
            for arm, seed, m50, m in (("none", 1, 0.1, 0.02), ("standard", 1, 0.3, 0.1), ("none", 2, 0.2, 0.04), ("standard", 2, 0.2, 0.06))]
    table = load_benchmark("augmentation").format_table(rows)
    assert "| **none**, mean | | 0.150 | 0.030 | |" in table
    assert "| **standard**, mean | | 0.250 | 0.080 | (+0.100 mAP@.5 over none) |" in table


def test_slicing_table_gives_each_arms_mean(load_benchmark):
    slicing = load_benchmark("slicing")
    rows = [{"seed": seed, **{f"{arm}_{key}": value for arm, values in arms.items() for key, value in zip(slicing.KEYS, values)}}
            for seed, arms in ((1, {"whole image": (0.0, 0.0, 0.0), "sliced": (0.6, 0.3, 0.25)}),
                               (2, {"whole image": (0.1, 0.0, 0.02), "sliced": (0.5, 0.2, 0.15)}))]
    table = slicing.format_table(rows)
    assert "| whole image | 2 | 0.100 | 0.000 | 0.020 |" in table
    assert "| **whole image**, mean | | 0.050 | 0.000 | 0.010 |" in table and "| **sliced**, mean | | 0.550 | 0.250 | 0.200 |" in table


def test_grpo_table_gives_each_arms_mean(load_benchmark):
    grpo = load_benchmark("grpo")
    rows = [{"arm": arm, "seed": seed, "steps": 10, **dict(zip(grpo.KEYS, values))}
            for arm, seed, values in (("continued SFT", 1, (0.3, 0.6, 0.5, 1.0, 0.0)), ("GRPO", 1, (0.4, 0.7, 0.6, 1.1, 0.0)),
                                      ("continued SFT", 2, (0.2, 0.5, 0.4, 1.2, 0.1)), ("GRPO", 2, (0.2, 0.6, 0.5, 0.9, 0.0)))]
    table = grpo.format_table(rows)
    assert "| GRPO | 2 | 10 | 0.200 | 0.600 | 0.500 | 0.900 | 0.000 |" in table
    assert "| **continued SFT**, mean | | | 0.250 | 0.550 | 0.450 | 1.100 | 0.050 |" in table
    assert "| **GRPO**, mean | | | 0.300 | 0.650 | 0.550 | 1.000 | 0.000 |" in table
