"""Training: the model and LoRA, TRL's trainer with its configuration and resume, callbacks, export, collator diagnostics."""

from helpers.runtime.entry_points import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "model": ("load_model", "load_model_and_processor", "weights_dtype"),
    "lora": ("count_parameters", "lora_config", "summarize_trainables", "wrap_lora"),
    "config": ("best_model_settings", "data_loader_settings", "device_defaults", "kept_checkpoint", "print_training_config"),
    "resume": ("resolve_resume",),
    "trainer": ("QwenVLSFTTrainer",),
    "callbacks": ("ConsoleLogCallback", "GradNormCallback", "IoUEvalCallback", "attach_callbacks"),
    "export": ("load_trained_model", "merge_adapter_into_base", "merge_refusal", "save_trained_model"),
    "collator_debug": ("VerboseCollator", "analyze_token_distribution"),
    "reward": ("DetectionReward",),
    "grpo": ("GRPO_CONSOLE_KEYS", "QwenVLGRPOTrainer", "grpo_dataset", "grpo_resume", "suppressed_token_ids"),
})
