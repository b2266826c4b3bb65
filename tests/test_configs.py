"""The multi-GPU engine configs in configs/: each parses, goes through accelerate's own launcher code, and yields the plugin it promises."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
import transformers
import yaml
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from helpers.families.registry import FAMILY_NAMES, get_family

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
GPU_PRESET = REPO / "params" / "qwen2_vl_2b_gpu.yaml"  # the preset the README's launch lines use

# config -> (distributed_type, DeepSpeed JSON, ZeRO stage, optimizer offload, parameter offload)
ENGINES = {
    "ddp.yaml": ("MULTI_GPU", None, None, None, None),
    "fsdp2.yaml": ("FSDP", None, None, None, None),
    "deepspeed_zero2.yaml": ("DEEPSPEED", "deepspeed_zero2.json", 2, "none", "none"),
    "deepspeed_zero2_offload.yaml": ("DEEPSPEED", "deepspeed_zero2_offload.json", 2, "cpu", "none"),
    "deepspeed_zero3.yaml": ("DEEPSPEED", "deepspeed_zero3.json", 3, "none", "none"),
    "deepspeed_zero3_offload.yaml": ("DEEPSPEED", "deepspeed_zero3_offload.json", 3, "cpu", "cpu"),
}
DEEPSPEED_CONFIGS = [name for name, engine in ENGINES.items() if engine[0] == "DEEPSPEED"]

# Written from transformers 5.24's modeling files, independently of the family records: the text decoder layer and
# the vision block of each family, the units FSDP2 must shard. A new family fails here until it has its row.
WRAP_CLASSES = {
    "qwen2_vl": ("qwen2_vl", "Qwen2VLDecoderLayer", "Qwen2VLVisionBlock"),
    "qwen2_5_vl": ("qwen2_5_vl", "Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"),
    "qwen3_vl": ("qwen3_vl", "Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"),
    "qwen3_vl_moe": ("qwen3_vl_moe", "Qwen3VLMoeTextDecoderLayer", "Qwen3VLMoeVisionBlock"),
    "qwen3_5": ("qwen3_5", "Qwen3_5DecoderLayer", "Qwen3_5VisionBlock"),
    "qwen3_5_moe": ("qwen3_5_moe", "Qwen3_5MoeDecoderLayer", "Qwen3_5MoeVisionBlock"),
}
# Tiny widths so that every family's model builds on the meta device in milliseconds; keys a family lacks are ignored.
TINY_TEXT = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "num_experts": 4, "moe_intermediate_size": 32}
TINY_VISION = {"depth": 2, "hidden_size": 64, "embed_dim": 64, "num_heads": 4, "intermediate_size": 128, "out_hidden_size": 64}


def read_yaml(name: str) -> dict:
    """One accelerate config file as a mapping."""
    return yaml.safe_load((CONFIGS / name).read_text())


def read_deepspeed_json(name: str) -> dict:
    """The DeepSpeed JSON an accelerate config points to."""
    return json.loads((REPO / read_yaml(name)["deepspeed_config"]["deepspeed_config_file"]).read_text())


def launch_env(name: str, monkeypatch, *extra: str) -> tuple:
    """What `accelerate launch --config_file configs/NAME ...` hands its processes: (parsed args, environment)."""
    monkeypatch.chdir(REPO)  # the launch runs from the repository root, where the JSON paths point from
    cli = ["--config_file", f"configs/{name}", "--num_processes", "16", "--num_machines", "2", "--machine_rank", "1",
           "--main_process_ip", "10.0.0.1", "--main_process_port", "29500", *extra, "script.py"]
    args, defaults, mixed_precision_from_file = _validate_launch_command(launch_command_parser().parse_args(cli))
    if args.use_deepspeed:
        # launch_command's own step before deepspeed_launcher: which DeepSpeed fields came from the config file
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_file else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, env


def set_launch_env(env: dict, monkeypatch) -> None:
    """Put the launcher's accelerate, FSDP and DeepSpeed variables into this process, as a launched process sees them."""
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)


def meta_model(family: str) -> torch.nn.Module:
    """A tiny model of the family on the meta device (no memory, no weights), the class the notebook loads."""
    record = get_family(family)
    config = getattr(transformers, record.tiny.config_class)(text_config=TINY_TEXT, vision_config=TINY_VISION)
    with torch.device("meta"):
        return getattr(transformers, record.model_class)(config)


def preset_args(world_size: int) -> SimpleNamespace:
    """The TrainingArguments values DeepSpeed's "auto" is filled from: the GPU preset's, on world_size bf16 GPUs."""
    from trl import SFTConfig

    preset = yaml.safe_load(GPU_PRESET.read_text())
    config = SFTConfig(
        output_dir="unused", per_device_train_batch_size=preset["per_device_train_batch_size"],
        gradient_accumulation_steps=preset["gradient_accumulation_steps"], learning_rate=preset["learning_rate"],
        max_grad_norm=1.0, bf16=False,  # bf16=True is refused on this CPU; set below as a bf16 GPU has it
    )
    values = {name: getattr(config, name) for name in config.to_dict()}
    return SimpleNamespace(**values | {"bf16": True, "world_size": world_size, "get_warmup_steps": config.get_warmup_steps})


@pytest.mark.parametrize("name", ENGINES)
def test_config_parses_with_the_promised_keys(name):
    distributed_type, deepspeed_json, *_ = ENGINES[name]
    raw = read_yaml(name)
    cluster = ClusterConfig.from_yaml_file(CONFIGS / name)  # refuses keys this accelerate does not know
    assert cluster.distributed_type.value == distributed_type
    assert raw["num_processes"] == -1, "the GPU count must come from --num_processes, not the file"
    if deepspeed_json is None:
        assert raw["mixed_precision"] == "bf16"
    else:
        assert "mixed_precision" not in raw, "accelerate refuses mixed_precision beside deepspeed_config_file"
        assert raw["deepspeed_config"]["deepspeed_config_file"] == f"configs/{deepspeed_json}"
    if distributed_type == "FSDP":
        fsdp = raw["fsdp_config"]
        assert fsdp["fsdp_version"] == 2
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert fsdp["fsdp_activation_checkpointing"] is True
        assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp, "one class list cannot fit all six families"


@pytest.mark.parametrize("name", ENGINES)
def test_launcher_refuses_to_start_without_num_processes(name, monkeypatch):
    monkeypatch.chdir(REPO)
    args = launch_command_parser().parse_args(["--config_file", f"configs/{name}", "script.py"])
    with pytest.raises(ValueError, match="--num_processes"):
        _validate_launch_command(args)


@pytest.mark.parametrize("name", ENGINES)
def test_two_nodes_of_eight(name, monkeypatch):
    args, env = launch_env(name, monkeypatch)
    # --num_processes counts both machines: accelerate starts 16 // 2 per node
    assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("8", "2", 1)
    # torchrun's rendezvous address, as --rdzv_endpoint or --master_addr/--master_port depending on --same_network
    endpoint = getattr(args, "rdzv_endpoint", None) or f"{args.master_addr}:{args.master_port}"
    assert endpoint == "10.0.0.1:29500"
    expected = {"MULTI_GPU": {}, "FSDP": {"ACCELERATE_USE_FSDP": "true"}, "DEEPSPEED": {"ACCELERATE_USE_DEEPSPEED": "true"}}
    assert expected[ENGINES[name][0]].items() <= env.items()
    assert env["ACCELERATE_MIXED_PRECISION"] == ("no" if ENGINES[name][1] else "bf16")


def test_fsdp2_plugin_from_the_launch(monkeypatch):
    _, env = launch_env("fsdp2.yaml", monkeypatch)
    set_launch_env(env, monkeypatch)
    plugin = FullyShardedDataParallelPlugin()  # reads the launcher's FSDP_* variables, as the Trainer's Accelerator does
    assert plugin.fsdp_version == 2
    assert plugin.activation_checkpointing is True
    assert plugin.reshard_after_forward is True
    assert plugin.cpu_ram_efficient_loading is False  # every rank loads the whole model: the baseline runs on it before sharding
    assert plugin.transformer_cls_names_to_wrap is None  # so the model's _no_split_modules decide
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_fsdp2_wraps_each_decoder_layer_and_vision_block(family, monkeypatch):
    module, decoder_layer, vision_block = WRAP_CLASSES[family]
    modeling = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
    expected = {getattr(modeling, decoder_layer), getattr(modeling, vision_block)}  # the classes exist in transformers
    _, env = launch_env("fsdp2.yaml", monkeypatch)
    set_launch_env(env, monkeypatch)
    model = meta_model(family)
    policy = fsdp2_prepare_auto_wrap_policy(FullyShardedDataParallelPlugin(), model)
    wrapped = {type(m) for m in model.modules() if policy(m)}
    assert wrapped == expected
    n_blocks = TINY_TEXT["num_hidden_layers"] + TINY_VISION["depth"]
    assert sum(policy(m) for m in model.modules()) == n_blocks  # every block its own unit, nothing else


@pytest.mark.parametrize(
    "family, override, error",
    [
        ("qwen2_vl", "Qwen2VLDecoderLayer,Qwen2VLVisionBlock", None),  # the README's override for one family
        ("qwen3_vl", "Qwen3VLTextDecoderLayer,Qwen3VLVisionBlock", None),
        ("qwen3_vl", "Qwen2VLDecoderLayer,Qwen3VLTextDecoderLayer,Qwen3VLVisionBlock", "Could not find the transformer layer class"),
    ],
)
def test_class_override_on_the_command_line(family, override, error, monkeypatch):
    _, env = launch_env("fsdp2.yaml", monkeypatch, "--fsdp_transformer_layer_cls_to_wrap", override)
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == override
    set_launch_env(env, monkeypatch)
    plugin, model = FullyShardedDataParallelPlugin(), meta_model(family)
    if error:  # a class absent from the model stops accelerate: why fsdp2.yaml lists none
        with pytest.raises(ValueError, match=error):
            fsdp2_prepare_auto_wrap_policy(plugin, model)
    else:
        policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
        assert {type(m).__name__ for m in model.modules() if policy(m)} == set(override.split(","))


def test_fsdp2_as_sft_config(tmp_path):
    """The same FSDP2 settings given to SFTConfig (the torchrun route), with the Trainer's own checkpointing off."""
    from trl import SFTConfig

    fsdp_config = {key.removeprefix("fsdp_"): value for key, value in read_yaml("fsdp2.yaml")["fsdp_config"].items()}
    # TRL's SFTConfig turns activation checkpointing on by default, and the Trainer refuses it beside FSDP's own:
    # it must be switched off explicitly.
    assert SFTConfig(output_dir=str(tmp_path), bf16=False).activation_checkpointing is True
    config = SFTConfig(output_dir=str(tmp_path), fsdp=True, fsdp_config=fsdp_config, activation_checkpointing=False, bf16=False)
    assert config.fsdp_plugin_args["fsdp_version"] == 2
    assert config.fsdp_plugin_args["activation_checkpointing"] is True
    plugin = FullyShardedDataParallelPlugin(**config.fsdp_plugin_args)
    assert (plugin.fsdp_version, plugin.activation_checkpointing, plugin.reshard_after_forward) == (2, True, True)


@pytest.mark.parametrize("name", DEEPSPEED_CONFIGS)
def test_deepspeed_json_leaves_trainer_values_to_the_trainer(name):
    _, _, stage, offload_optimizer, offload_param = ENGINES[name]
    config = read_deepspeed_json(name)
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto", key
    assert config["bf16"] == {"enabled": "auto"} and config["fp16"] == {"enabled": "auto"}
    zero = config["zero_optimization"]
    assert zero["stage"] == stage
    assert zero.get("offload_optimizer", {}).get("device", "none") == offload_optimizer
    assert zero.get("offload_param", {}).get("device", "none") == offload_param
    if stage == 3:  # else save_model writes an empty model.safetensors and a DeepSpeed checkpoint instead
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    # With ZeRO-Offload DeepSpeed needs its own (CPU) Adam; without, the Trainer's torch AdamW runs.
    if offload_optimizer == "cpu":
        assert config["optimizer"]["type"] == "AdamW"
        assert set(config["optimizer"]["params"].values()) == {"auto"}
    else:
        assert "optimizer" not in config


@pytest.mark.parametrize("name", DEEPSPEED_CONFIGS)
def test_deepspeed_plugin_from_the_launch(name, monkeypatch):
    _, _, stage, offload_optimizer, offload_param = ENGINES[name]
    _, env = launch_env(name, monkeypatch)
    assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == read_yaml(name)["deepspeed_config"]["deepspeed_config_file"]
    set_launch_env(env, monkeypatch)
    plugin = DeepSpeedPlugin()  # what TrainingArguments builds when ACCELERATE_USE_DEEPSPEED is set
    assert plugin.zero_stage == stage
    assert (plugin.offload_optimizer_device, plugin.offload_param_device) == (offload_optimizer, offload_param)
    assert plugin.zero3_init_flag is (stage == 3)
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert plugin.deepspeed_config[key] == "auto", key


def test_accelerate_refuses_mixed_precision_beside_a_deepspeed_json(monkeypatch):
    """Why the DeepSpeed YAMLs have no mixed_precision: accelerate stops on it."""
    _, env = launch_env("deepspeed_zero3.yaml", monkeypatch, "--mixed_precision", "bf16")
    set_launch_env(env, monkeypatch)
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", env["ACCELERATE_CONFIG_DS_FIELDS"] + ",mixed_precision")
    with pytest.raises(ValueError, match="will be ignored"):
        DeepSpeedPlugin()


@pytest.fixture
def trainer_deepspeed_config():
    """transformers' HfTrainerDeepSpeedConfig, the Trainer's filler of "auto", usable without deepspeed installed."""
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations import deepspeed as hf_deepspeed

    if hf_deepspeed.is_deepspeed_available():
        yield hf_deepspeed.HfTrainerDeepSpeedConfig
    else:
        # Without deepspeed, transformers gives the class a dummy `object` base in place of accelerate's
        # HfDeepSpeedConfig and checks at construction that deepspeed is installed. Adding accelerate's class as the
        # base again restores the method order it has with deepspeed installed (HfTrainerDeepSpeedConfig,
        # transformers' HfDeepSpeedConfig, accelerate's HfDeepSpeedConfig), so the filling code run is the Trainer's own.
        rebased = type("HfTrainerDeepSpeedConfig", (hf_deepspeed.HfTrainerDeepSpeedConfig, HfDeepSpeedConfig), {})
        with mock.patch.object(hf_deepspeed, "dep_version_check"):
            yield rebased
    hf_deepspeed.unset_hf_deepspeed_config()  # it registers itself globally, where is_deepspeed_zero3_enabled looks


@pytest.mark.parametrize("name", DEEPSPEED_CONFIGS)
@pytest.mark.parametrize("world_size", [1, 8, 16])
def test_trainer_fills_a_consistent_batch(name, world_size, trainer_deepspeed_config):
    args = preset_args(world_size)
    config = trainer_deepspeed_config(copy.deepcopy(read_deepspeed_json(name)))
    config.trainer_config_process(args)  # the Trainer's own filling of "auto", at TrainingArguments time
    filled = config.config
    assert filled["train_micro_batch_size_per_gpu"] == args.per_device_train_batch_size
    assert filled["gradient_accumulation_steps"] == args.gradient_accumulation_steps
    # DeepSpeed's own check at start: train_batch_size == micro_batch_per_gpu * gradient_acc_step * world_size
    assert filled["train_batch_size"] == args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    assert (filled["bf16"]["enabled"], filled["fp16"]["enabled"]) == (True, False)
    assert filled["gradient_clipping"] == args.max_grad_norm
    if "optimizer" in filled:
        assert filled["optimizer"]["params"]["lr"] == args.learning_rate
    # The hidden-size "auto" keys are filled once the model is known; Qwen-VL configs keep it in text_config.
    model = SimpleNamespace(config=transformers.Qwen2VLConfig(text_config={"hidden_size": 1536}))
    config.trainer_config_finalize(args, model, num_training_steps=100)
    assert filled["zero_optimization"]["reduce_bucket_size"] == 1536 * 1536
    assert "auto" not in json.dumps(filled), "every auto value filled"
    assert config.mismatches == []


@pytest.mark.parametrize("name", DEEPSPEED_CONFIGS)
def test_sft_config_takes_the_deepspeed_json(name, tmp_path, monkeypatch):
    """The torchrun route: SFTConfig(deepspeed=...) builds its DeepSpeed plugin; needs deepspeed installed."""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed here; the parsing above ran without it")
    from trl import SFTConfig

    monkeypatch.chdir(REPO)
    path = read_yaml(name)["deepspeed_config"]["deepspeed_config_file"]
    config = SFTConfig(output_dir=str(tmp_path), deepspeed=path, per_device_train_batch_size=4, gradient_accumulation_steps=4, bf16=False)
    filled = config.hf_deepspeed_config.config
    assert filled["train_batch_size"] == 4 * 4 * config.world_size
    assert config.deepspeed_plugin.zero_stage == ENGINES[name][2]
