"""Batched greedy generation equals one-by-one, and evaluation restores the model's state."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForImageTextToText

from helpers.families.processors import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from helpers.families.registry import get_family
from helpers.families.chat import add_chat_columns, detection_prompt, format_detection_messages
from helpers.evaluate.generation import DUPLICATE_IOU, LOOP_REPEATS, Generation, generate, span_score, token_char_ends
from helpers.evaluate.evaluation import evaluate_model
from tests.support.notebook_cells import run_tagged_cells
from helpers.families.processors import load_processor
from tests.cases import FAMILIES
from helpers.data.synthetic import make_synthetic_dataset
from helpers.data.images import open_image, open_images
from helpers.evaluate.metrics import N_DUPLICATE_BOXES_DROPPED, N_LOOPING_ANSWERS
from helpers.evaluate.generation import GenerationSettings



@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_one_by_one(tiny_checkpoints, family):
    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family])
    ds = make_synthetic_dataset(4, seed=2)  # four different image sizes: prompts of different lengths
    images = open_images(ds["image"])
    prompts = [detection_prompt(family, ["red circle"])] * len(images)
    batched = generate(model, processor, images, prompts, GenerationSettings(max_new_tokens=12, batch_size=4))
    single = generate(model, processor, images, prompts, GenerationSettings(max_new_tokens=12, batch_size=1))
    assert [g.text for g in batched] == [g.text for g in single]
    for b, s in zip(batched, single):
        assert b.token_probs == pytest.approx(s.token_probs, abs=1e-4) and b.token_ends == s.token_ends
    assert all(isinstance(g.text, str) and "<|im_end|>" not in g.text for g in batched)
    in_pairs = generate(model, processor, images, prompts, GenerationSettings(max_new_tokens=12, batch_size=2))
    assert [g.text for g in in_pairs] == [g.text for g in single]


@pytest.mark.parametrize("family", FAMILIES)
def test_token_probabilities_are_those_of_the_chosen_tokens(tiny_checkpoints, family):
    # Recompute each generated token's probability with a plain forward pass over prompt + answer.
    import torch

    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family]).eval()
    image = open_image(make_synthetic_dataset(1, seed=4)[0]["image"])
    prompt = detection_prompt(family, ["red circle"])
    (generation,) = generate(model, processor, [image], [prompt], GenerationSettings(max_new_tokens=10, batch_size=1))
    answer_ids = generation.token_ids
    assert len(answer_ids) == len(generation.token_probs) == 10 and generation.token_ends[-1] == len(generation.text)
    text = processor.apply_chat_template(format_detection_messages(prompt), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[[image]], return_tensors="pt")
    n_prompt = inputs["input_ids"].shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([answer_ids])], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(answer_ids), dtype=torch.long)], dim=1)
    with torch.no_grad():
        probs = torch.softmax(model(**inputs).logits[0, n_prompt - 1 : -1].float(), dim=-1)
    expected = probs[torch.arange(len(answer_ids)), torch.tensor(answer_ids)].tolist()
    assert generation.token_probs == pytest.approx(expected, abs=1e-4)


def test_token_char_ends_cover_the_text(tiny_checkpoints):
    tokenizer = load_processor(tiny_checkpoints["qwen2_vl"], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS).tokenizer
    for text in ['[{"bbox_2d": [1, 2, 3, 4], "label": "red circle"}]', "<|box_start|>(1,2),(3,4)<|box_end|>", "é ü"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        ends = token_char_ends(tokenizer, ids)
        assert ends[-1] == len(text) and ends == sorted(ends)


@pytest.mark.parametrize(
    "span,expected",
    [((0, 2), 0.9), ((2, 4), 0.5), ((1, 3), (0.9 + 0.5) / 2), ((6, 9), 0.0)],
)
def test_span_score_averages_the_overlapping_tokens(span, expected):
    generation = Generation("abcdef", [1, 2, 3], [0.9, 0.5, 0.1], [2, 4, 6], (28, 28))  # tokens "ab", "cd", "ef"
    assert span_score(generation, span) == pytest.approx(expected)


def test_generation_probabilities_are_probabilities_and_deterministic(tiny_checkpoints):
    processor = load_processor(tiny_checkpoints["qwen2_vl"], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["qwen2_vl"])
    images = open_images(make_synthetic_dataset(3, seed=9)["image"])
    prompts = ["Detect."] * len(images)
    runs = [generate(model, processor, images, prompts, GenerationSettings(max_new_tokens=20, batch_size=2)) for _ in range(2)]
    assert runs[0] == runs[1]
    probs = [p for g in runs[0] for p in g.token_probs]
    assert probs and all(0.0 < p <= 1.0 for p in probs)  # every box score is a mean of these, so it lies in [0, 1]


def test_each_box_scores_its_own_tokens():
    from helpers.evaluate.evaluation import scored_predictions

    first = '{"bbox_2d": [10, 20, 30, 40], "label": "a"}'
    text = f'[{first}, {{"bbox_2d": [50, 60, 70, 80], "label": "b"}}]'
    # One token per character: 0.9 up to the end of the first object, 0.2 after it.
    probs = [0.9 if i < 1 + len(first) else 0.2 for i in range(len(text))]
    generation = Generation(text, list(range(len(text))), probs, list(range(1, len(text) + 1)), (1008, 1008))
    predictions = scored_predictions(generation, get_family("qwen3_vl"), (1000, 1000))
    assert [p["label"] for p in predictions] == ["a", "b"]
    assert [p["score"] for p in predictions] == pytest.approx([0.9, 0.2])
    assert predictions[0]["bbox_xyxy_px"] == [10, 20, 30, 40]


def argmax_answer(model, processor, image, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy decoding by hand: one full forward pass per token, the most probable one appended, until a stop token."""
    import torch

    from helpers.evaluate.generation import stop_token_ids

    text = processor.apply_chat_template(format_detection_messages(prompt), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[[image]], return_tensors="pt")
    answer: list[int] = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            token = int(model(**inputs).logits[0, -1].argmax())
        if token in stop_token_ids(model, processor):
            break
        answer.append(token)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([[token]])], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, 1, dtype=torch.long)], dim=1)
    return answer


@pytest.mark.parametrize(
    "family,extra_settings",
    [
        (get_family("qwen2_vl"), {}),  # as published: repetition_penalty 1.05, do_sample, temperature 0.1, top_p 0.001, top_k 1
        (get_family("qwen2_5_vl"), {}),  # the same published settings
        # Qwen3-VL publishes repetition_penalty 1.0, so each of these alone would change its answers.
        (get_family("qwen3_vl"), {"repetition_penalty": 1.05}),
        (get_family("qwen3_vl"), {"no_repeat_ngram_size": 2}),
        (get_family("qwen3_vl"), {"num_beams": 3, "length_penalty": 2.0}),
    ],
)
def test_decoding_is_plain_greedy_whatever_the_checkpoint_says(tiny_checkpoints, tmp_path, family, extra_settings):
    import json
    import shutil

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoints[family], checkpoint)
    config_path = checkpoint / "generation_config.json"
    settings = json.loads(config_path.read_text()) | extra_settings
    config_path.write_text(json.dumps(settings))
    processor = load_processor(checkpoint, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    assert model.generation_config.repetition_penalty == settings["repetition_penalty"]
    images = open_images(make_synthetic_dataset(3, seed=4)["image"])
    prompt = detection_prompt(family, ["red circle"])
    ours = [g.token_ids for g in generate(model, processor, images, [prompt] * 3, GenerationSettings(max_new_tokens=24, batch_size=3))]
    assert ours == [argmax_answer(model, processor, image, prompt, 24) for image in images]
    assert model.generation_config.to_dict() == AutoModelForImageTextToText.from_pretrained(checkpoint).generation_config.to_dict()  # left as found
    if family != "qwen3_vl" and not extra_settings:
        # The trap is real for this checkpoint: do_sample=False alone inherits the penalty and decodes differently.
        inputs = [processor(text=[processor.apply_chat_template(format_detection_messages(prompt), tokenize=False, add_generation_prompt=True)],
                            images=[[image]], return_tensors="pt") for image in images]
        naive = [model.generate(**x, do_sample=False, max_new_tokens=24)[0, x["input_ids"].shape[1]:].tolist() for x in inputs]
        assert [answer[: len(mine)] for answer, mine in zip(naive, ours)] != ours


def test_the_decoding_settings_are_greedy_and_keep_the_checkpoints_stop_tokens(tiny_checkpoints):
    from helpers.evaluate.generation import GREEDY_DECODING, decoding_config, explicit_settings, unused_generation_settings

    processor = load_processor(tiny_checkpoints["qwen2_vl"], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["qwen2_vl"])
    settings = explicit_settings(decoding_config(model, processor, 160))
    assert GREEDY_DECODING == {"do_sample": False, "num_beams": 1}
    assert {key: settings.get(key) for key in ("do_sample", "num_beams", "max_new_tokens", "repetition_penalty", "temperature")} == {
        "do_sample": False, "num_beams": 1, "max_new_tokens": 160, "repetition_penalty": None, "temperature": None}
    assert settings["eos_token_id"] == sorted(model.generation_config.eos_token_id)
    assert settings["pad_token_id"] == processor.tokenizer.pad_token_id
    # What the notebook prints as set aside: the published sampling fields and penalty, not the token ids.
    assert unused_generation_settings(model) == {"do_sample": True, "temperature": 0.1, "top_k": 1, "top_p": 0.001, "repetition_penalty": 1.05}


def cookbook_inputs(image_path, base_url: str) -> dict:
    """The same image as each form Qwen's cookbooks accept."""
    import base64
    from pathlib import Path

    from PIL import Image

    encoded = base64.b64encode(Path(image_path).read_bytes()).decode()
    return {
        "PIL image": Image.open(image_path),
        "path": str(image_path),
        "pathlib.Path": Path(image_path),
        "file:// URL": f"file://{image_path}",
        "http URL": f"{base_url}/{Path(image_path).name}",
        "base64 data URI": f"data:image/jpeg;base64,{encoded}",
    }


def test_detect_accepts_every_image_form_of_qwens_cookbooks(tiny_checkpoints, tmp_path):
    import functools
    import http.server
    import threading

    import numpy as np
    from PIL import Image

    from helpers.evaluate.evaluation import detect, load_image_input

    # A JPEG stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to display): 120x80 upright.
    upright = open_image(make_synthetic_dataset(1, seed=3)[0]["image"]).resize((120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        inputs = cookbook_inputs(tmp_path / "photo.jpg", f"http://127.0.0.1:{server.server_address[1]}")
        loaded = {name: load_image_input(source) for name, source in inputs.items()}
    finally:
        server.shutdown()
    reference = np.asarray(loaded["path"])
    assert loaded["path"].size == (120, 80) and loaded["path"].mode == "RGB"  # EXIF applied, never resized
    for name, image in loaded.items():
        assert np.array_equal(np.asarray(image), reference), name

    processor = load_processor(tiny_checkpoints["qwen2_5_vl"], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["qwen2_5_vl"])
    prompt = detection_prompt(get_family("qwen2_5_vl"), ["red circle"])
    answers = [detect(model, processor, inputs[name], family=get_family("qwen2_5_vl"), prompt=prompt, max_new_tokens=12) for name in ("path", "file:// URL", "base64 data URI")]
    assert answers[0] == answers[1] == answers[2]


@pytest.mark.parametrize(
    "source,error",
    [("no/such/image.jpg", "no such file"), ("file:///no/such.png", "no such file"), (b"bytes", "expected a path, a URL")],
)
def test_a_bad_image_input_is_named(source, error):
    from helpers.evaluate.evaluation import load_image_input

    with pytest.raises((FileNotFoundError, TypeError), match=error):
        load_image_input(source)


@pytest.mark.parametrize(
    "width,height,min_pixels,max_pixels,qwen_vl_utils_size,processor_size",
    [
        (196, 9, 3136, 50176, (196, 28), (280, 28)),  # thin images: the two smart_resize functions disagree
        (10, 1990, 3136, 50176, (0, 3136), (28, 812)),  # qwen-vl-utils gives a side of 0
        (640, 480, 3136, 50176, (252, 168), (252, 168)),  # typical images: they agree
    ],
)
def test_qwen_vl_utils_resize_is_not_the_processors(width, height, min_pixels, max_pixels, qwen_vl_utils_size, processor_size):
    # Why the project never resizes with qwen-vl-utils: the processor's own grid is the frame truth.
    from qwen_vl_utils import smart_resize

    from helpers.families.boxes import resized_size

    resized_h, resized_w = smart_resize(height, width, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    assert (resized_w, resized_h) == qwen_vl_utils_size
    assert resized_size(get_family("qwen2_5_vl"), width, height, min_pixels, max_pixels) == processor_size


@pytest.mark.parametrize("family", FAMILIES)
def test_boxes_follow_the_processors_grid_after_a_second_resize(tiny_checkpoints, family):
    # qwen_vl_utils.fetch_image resizes 640x480 to 112x84 at min = max = 12544 pixels; the processor then
    # resizes that to its own grid. Boxes must be read in the grid the model saw and land on the image given.
    from qwen_vl_utils import fetch_image
    from PIL import Image

    from helpers.families.boxes import resized_size
    from helpers.evaluate.evaluation import scored_predictions
    from helpers.families.processors import model_input_size

    processor = load_processor(tiny_checkpoints[family], 12544, 12544)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family])
    patch = processor.image_processor.patch_size
    once = fetch_image({"image": Image.new("RGB", (640, 480)), "min_pixels": 12544, "max_pixels": 12544}, image_patch_size=patch)
    (generation,) = generate(model, processor, [once], ["Detect."], GenerationSettings(max_new_tokens=1, batch_size=1))
    grid = processor.image_processor(images=[once], return_tensors="pt")["image_grid_thw"][0]
    assert generation.model_size == model_input_size(processor, grid) != once.size  # resized twice
    assert generation.model_size != resized_size(family, 640, 480, 12544, 12544)  # a prediction from the original size is wrong
    # An answer boxing the whole model input, in the family's frame, covers the whole image that was given.
    width, height = generation.model_size
    corner = (1000, 1000) if family.relative else (width, height)
    full = f'[{{"bbox_2d": [0, 0, {corner[0]}, {corner[1]}], "label": "all"}}]'
    generation.text, generation.token_ends, generation.token_probs = full, [len(full)], [1.0]
    assert scored_predictions(generation, family, once.size)[0]["bbox_xyxy_px"] == [0, 0, *once.size]


@pytest.mark.parametrize("family", [f for f in FAMILIES if "moe" in f.model_type])
def test_a_mixture_set_up_for_its_auxiliary_loss_still_generates(tiny_checkpoints, family):
    # TRL's trainer turns router logits on for the load-balancing loss; generation must not compute that loss.
    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family])
    images = open_images(make_synthetic_dataset(3, seed=2)["image"])  # different sizes: a padded batch
    prompts = [detection_prompt(family, ["red circle"])] * 3
    plain = generate(model, processor, images, prompts, GenerationSettings(max_new_tokens=6, batch_size=3))
    model.config.get_text_config().output_router_logits = True
    assert [g.token_ids for g in generate(model, processor, images, prompts, GenerationSettings(max_new_tokens=6, batch_size=3))] == [g.token_ids for g in plain]


class ScriptedAnswer:
    """A logits processor that makes the model write ``token_ids`` over and over, whatever it would write."""

    def __init__(self, token_ids: list[int], prompt_length: int):
        self.token_ids, self.prompt_length = token_ids, prompt_length

    def __call__(self, input_ids, scores):
        forced = self.token_ids[(input_ids.shape[1] - self.prompt_length) % len(self.token_ids)]
        scores[:] = torch.finfo(scores.dtype).min
        scores[:, forced] = 0.0
        return scores


def looping_model(tiny_checkpoints, family: str, one_object: str):
    """A tiny model and processor, and a way to make it write ``one_object`` forever."""
    processor = load_processor(tiny_checkpoints[family], DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints[family])
    loop_ids = processor.tokenizer.encode(one_object, add_special_tokens=False)
    return model, processor, lambda prompt_length: [ScriptedAnswer(loop_ids, prompt_length)]


LOOPS = {"qwen2_vl": "<|object_ref_start|>red circle<|object_ref_end|><|box_start|>(100,100),(300,300)<|box_end|>",
         "qwen2_5_vl": '{"bbox_2d": [10, 10, 30, 30], "label": "red circle"}, '}


@pytest.mark.parametrize("family,repeats", [(get_family("qwen2_vl"), 3), (get_family("qwen2_5_vl"), 2), (get_family("qwen2_5_vl"), 5)])
def test_a_looping_answer_stops_after_the_object_is_repeated(tiny_checkpoints, family, repeats):
    model, processor, loop = looping_model(tiny_checkpoints, family, LOOPS[family.model_type])
    images = [open_image(make_synthetic_dataset(1, seed=3)[0]["image"])] * 2
    prompts = [detection_prompt(family, ["red circle"])] * 2
    stopped = generate(model, processor, images, prompts, GenerationSettings(200, 2, loop_repeats=repeats, batch_logits_processors=loop))
    endless = generate(model, processor, images, prompts, GenerationSettings(200, 2, loop_repeats=0, batch_logits_processors=loop))
    one = LOOPS[family.model_type].removesuffix(", ")
    for g in stopped:
        assert g.loop_stopped and g.text.count(one) == repeats and len(g.token_ids) == len(g.token_probs) == len(g.token_ends)
    assert all(not g.loop_stopped and len(g.token_ids) == 200 and g.text.count(one) > repeats for g in endless)


@pytest.mark.parametrize("family", [get_family(name) for name in LOOPS])
def test_evaluation_counts_looping_answers_and_dropped_duplicates(tiny_checkpoints, family):
    model, processor, loop = looping_model(tiny_checkpoints, family, LOOPS[family.model_type])
    prompt = detection_prompt(family, ["red circle"])
    dataset = add_chat_columns(make_synthetic_dataset(3, seed=5), family, prompt, DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    settings = GenerationSettings(max_new_tokens=120, batch_size=3, batch_logits_processors=loop)
    records, metrics = evaluate_model(model, processor, dataset, family=family, settings=settings)  # the defaults: both controls on
    assert metrics[N_LOOPING_ANSWERS] == 3 and metrics[N_DUPLICATE_BOXES_DROPPED] == 3 * (LOOP_REPEATS - 1)
    assert all(r["loop_stopped"] and r["duplicates_dropped"] == LOOP_REPEATS - 1 and len(r["predictions"]) == 1 for r in records)
    records_off, metrics_off = evaluate_model(
        model, processor, dataset, family=family, settings=replace(settings, loop_repeats=0), duplicate_iou=0
    )
    assert metrics_off[N_LOOPING_ANSWERS] == metrics_off[N_DUPLICATE_BOXES_DROPPED] == 0
    assert all(len(r["predictions"]) > LOOP_REPEATS for r in records_off)


def test_the_notebook_defaults_are_the_helpers_defaults():
    parameters = run_tagged_cells("parameters")
    assert (parameters["loop_repeats"], parameters["duplicate_iou"]) == (LOOP_REPEATS, DUPLICATE_IOU)
