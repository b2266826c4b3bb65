"""LoRA on a family's blocks (language model, vision tower, merger, MoE experts) and what trains, block by block."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

from helpers.families.registry import Family


# Qwen3.5-architecture checkpoints (Qwen3.5, 3.6, 3.8) ship a multi-token-prediction head, `mtp.*`, with its own
# q/k/v/o_proj and MLP. transformers 5.24 builds none and drops its weights on load; this keeps LoRA off it anyway.
NOT_MTP = r"(?!(?:.*\.)?mtp\.)"


def lora_config(family: Family, targets: list[str], rank: int, alpha: int, dropout: float) -> LoraConfig:
    """A LoRA config on the chosen blocks of the family (its record's ``lora_targets`` and ``lora_parameters``)."""
    blocks = list(family.lora_targets) + list(family.lora_parameters)
    unknown = sorted(set(targets) - set(blocks))
    if unknown or not targets:
        raise ValueError(f"lora_targets={targets!r}; choose one or more of {sorted(blocks)} for {family.name}")
    pattern = "|".join(f"(?:{regex})" for name, regex in family.lora_targets.items() if name in targets)
    if pattern:  # never the multi-token-prediction head, should a transformers version build it
        pattern = f"{NOT_MTP}(?:{pattern})"
    # MoE experts are fused 3-D parameters, which PEFT adapts by name rather than as Linear modules.
    parameters = [name for block, names in family.lora_parameters.items() if block in targets for name in names]
    if parameters and dropout:
        raise ValueError(f"lora_targets={targets!r} adapts fused expert weights, which PEFT does without dropout; set lora_dropout 0")
    return LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern or None, target_parameters=parameters or None,
        bias="none", task_type="CAUSAL_LM",
    )


def wrap_lora(model, config: LoraConfig):
    """Wrap ``model`` with LoRA adapters (QLoRA preparation first when the model is quantised)."""
    if getattr(model, "is_quantized", False):
        # QLoRA: cast norms to fp32 and let gradients reach the adapters through frozen int weights.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # With frozen embeddings and activation checkpointing, no checkpointed input would require
    # grad and the adapters would get none; this hook makes the embedding output require it.
    model.enable_input_require_grads()
    return get_peft_model(model, config)


def parameter_block(name: str) -> str:
    """The top-level block a parameter belongs to: vision, merger, language model, lm_head or other."""
    if ".visual.merger." in f".{name}" or ".visual.deepstack_merger_list." in f".{name}":
        return "merger"
    if ".visual." in f".{name}":
        return "vision"
    if ".language_model." in f".{name}":
        return "language model"
    if ".lm_head." in f".{name}":
        return "lm_head"
    return "other"


def summarize_trainables(model, print_fn=print) -> list[dict]:
    """Trainable vs total parameters per top-level block (LoRA weights count in their block); prints a table."""
    blocks = ("vision", "merger", "language model", "lm_head", "other")
    rows = {block: {"block": block, "trainable": 0, "total": 0} for block in blocks}
    for name, parameter in model.named_parameters():
        row = rows[parameter_block(name)]
        row["total"] += parameter.numel()
        row["trainable"] += parameter.numel() if parameter.requires_grad else 0
    table = [row for row in rows.values() if row["total"]]
    table.append({"block": "all", "trainable": sum(r["trainable"] for r in table), "total": sum(r["total"] for r in table)})
    lines = [f"{'block':<16}{'trainable':>14}{'total':>14}{'trainable %':>13}"]
    lines += [f"{r['block']:<16}{r['trainable']:>14,}{r['total']:>14,}{100 * r['trainable'] / r['total']:>12.2f}%" for r in table]
    print_fn("\n".join(lines))
    return table


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
