"""What loop control buys on a model that loops: mAP, precision and generation time with the controls on and off.

A run's trained model is made to loop the way Qwen-VL models are reported to (QwenLM/Qwen3-VL#718):
where it would end its answer, ``ForcedLoop`` makes it write its last object again, and again, until
``max_new_tokens``. The same test images are then evaluated four ways: the model as it is and
looping, each with the controls off (``loop_repeats`` 0, ``duplicate_iou`` 0) and on (the defaults).

    python benchmarks/loop_control.py --run-dir outputs/offline-demo
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the benchmarks run as scripts from anywhere

import torch  # noqa: E402
from transformers import LogitsProcessor  # noqa: E402

from helpers.families.boxes import object_spans  # noqa: E402
from helpers.data.sources import dataset_class_names, load_detection_splits  # noqa: E402
from helpers.train.export import load_trained_model  # noqa: E402
from helpers.families.chat import add_chat_columns, expand_for_grounding, task_prompts  # noqa: E402
from helpers.evaluate.generation import DUPLICATE_IOU, LOOP_REPEATS, GenerationSettings, stop_token_ids  # noqa: E402
from helpers.evaluate.evaluation import evaluate_model  # noqa: E402
from helpers.evaluate.metrics import MAP_50, N_DUPLICATE_BOXES_DROPPED, N_LOOPING_ANSWERS, N_PREDICTIONS, PRECISION_50, RECALL_50  # noqa: E402
from helpers.runtime.device import pick_device_and_dtype  # noqa: E402
from helpers.families.processors import read_family  # noqa: E402
from helpers.offline import resolve_model_path  # noqa: E402
from helpers.data.sources import LoadOptions


class ForcedLoop(LogitsProcessor):
    """Where the model would end an answer that holds an object, force it to write its last object again, forever."""

    def __init__(self, tokenizer, stop_ids: set[int], prompt_length: int):
        self.tokenizer, self.stop_ids, self.prompt_length = tokenizer, stop_ids, prompt_length
        self.loops: dict[int, list[int]] = {}  # row -> the token ids it repeats
        self.written: dict[int, int] = {}  # row -> forced tokens so far

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, chosen in enumerate(scores.argmax(dim=-1).tolist()):
            if row not in self.loops and chosen in self.stop_ids:
                answer = self.tokenizer.decode(input_ids[row, self.prompt_length :], skip_special_tokens=False)
                spans = object_spans(answer)
                if spans:
                    last = answer[slice(*max(spans))]  # the object written last, as written
                    again = last if last.startswith("<|") else ", " + last
                    self.loops[row], self.written[row] = self.tokenizer.encode(again, add_special_tokens=False), 0
            if row in self.loops:
                loop = self.loops[row]
                forced = loop[self.written[row] % len(loop)]
                self.written[row] += 1
                scores[row] = torch.finfo(scores.dtype).min
                scores[row, forced] = 0.0
        return scores


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="outputs/offline-demo", help="a finished run: its params.json and model/")
    parser.add_argument("--images", type=int, default=0, help="test images (0: the run's test_size)")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="generation budget (0: the run's max_new_tokens)")
    return parser.parse_args(argv)


def load_run(run_dir: Path, n_images: int):
    """The run's trained model and processor, family, parameters and test split, as its notebook built them."""
    params = json.loads((run_dir / "params.json").read_text())["parameters"]
    device, dtype = pick_device_and_dtype()
    base = resolve_model_path(params["model_id"], REPO_ROOT / params["offline_model_dir"])
    model, processor = load_trained_model(run_dir / "model", base, params["quantization"], params["attn_implementation"], dtype, device)
    family = read_family(base)
    synthetic = {"class_names": params["synthetic_classes"], "min_side_px": params["synthetic_min_side_px"],
                 "max_side_px": params["synthetic_max_side_px"], "max_objects": params["synthetic_max_objects"],
                 "position_tint": params["synthetic_position_tint"], "square": params["synthetic_square_images"]}
    names = {"train": params["train_split"], "eval": params["eval_split"], "test": params["test_split"]}
    sizes = {"train": params["train_size"], "eval": params["eval_size"], "test": params["test_size"]}
    splits, _reports = load_detection_splits(params["dataset_source"], names, sizes, LoadOptions(bbox_format=params["dataset_bbox_format"], seed=params["seed"], known_classes=params["dataset_classes"], strict=False, synthetic=synthetic))
    test = splits["test"].select(range(min(n_images or len(splits["test"]), len(splits["test"]))))
    test = expand_for_grounding(test) if params["task"] == "grounding" else test
    class_names = dataset_class_names(splits["train"])
    prompts = task_prompts(test, family, params["task"], class_names)
    test = add_chat_columns(test, family, prompts, params["min_pixels"], params["max_pixels"], params["system_prompt"])
    return model, processor, family, params, test, class_names


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Evaluate the four ways; print a table and return the figures."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    model, processor, family, params, test, class_names = load_run(REPO_ROOT / args.run_dir, args.images)
    max_new_tokens = args.max_new_tokens or params["max_new_tokens"]
    generation = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=params["generation_batch_size"])
    stops = stop_token_ids(model, processor)
    results = {}
    for looping in (False, True):
        for controls in (False, True):
            start = time.perf_counter()
            _, metrics = evaluate_model(
                model, processor, test, family=family, class_names=class_names, duplicate_iou=DUPLICATE_IOU if controls else 0.0,
                settings=replace(
                    generation, loop_repeats=LOOP_REPEATS if controls else 0,
                    batch_logits_processors=(lambda prompt_length: [ForcedLoop(processor.tokenizer, stops, prompt_length)]) if looping else None,
                ),
            )
            name = f"{'looping' if looping else 'as trained'}, controls {'on' if controls else 'off'}"
            results[name] = {"generation_s": time.perf_counter() - start, **{k: metrics[k] for k in (
                MAP_50, PRECISION_50, RECALL_50, N_PREDICTIONS, N_LOOPING_ANSWERS, N_DUPLICATE_BOXES_DROPPED)}}
    print(f"{args.run_dir}: {family.name}, {len(test)} test images, max_new_tokens {max_new_tokens}")
    print(f"{'model':34s} {'mAP@.5':>7s} {'P@.5':>6s} {'R@.5':>6s} {'boxes':>6s} {'looping':>8s} {'dropped':>8s} {'seconds':>8s}")
    for name, r in results.items():
        print(f"{name:34s} {r[MAP_50]:7.3f} {r[PRECISION_50]:6.3f} {r[RECALL_50]:6.3f} {r[N_PREDICTIONS]:6d} "
              f"{r[N_LOOPING_ANSWERS]:8d} {r[N_DUPLICATE_BOXES_DROPPED]:8d} {r['generation_s']:8.1f}")
    return results


if __name__ == "__main__":
    main()
