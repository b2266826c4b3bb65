"""What a model finds: batched generation with scores, evaluation and metrics, what it gets wrong, sliced inference, the coordinate-scaling check, pictures."""

from helpers.runtime.entry_points import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "generation": ("GenerationSettings", "decoding_config", "explicit_settings", "unused_generation_settings"),
    "evaluation": ("detect", "detect_with_answer", "evaluate_model"),
    "errors": ("error_analysis", "format_errors", "judge_images", "ERROR_KINDS"),
    "metrics": ("MAP_50", "MAP_SMALL", "MEAN_IOU", "N_LOOPING_ANSWERS", "PARSE_FAILURE_RATE", "PR_CURVE_50", "format_comparison",
                "format_stages"),
    "plotting": ("plot_augmentations", "plot_before_after", "plot_image_grid", "plot_pr_curves", "plot_samples", "plot_sliced",
                 "plot_stages", "plot_training_curves", "plot_grpo_curves", "plot_per_class", "plot_error_examples"),
    "scaling_check": ("check_coordinate_scaling", "scaling_summary"),
    "slicing": ("slicing_for",),
})
