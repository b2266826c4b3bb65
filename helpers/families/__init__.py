"""Each Qwen-VL family's conventions: its record, box frames, answers written and read, chat prompts, processors."""

from helpers.runtime.entry_points import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "registry": ("Family", "FAMILIES", "FAMILY_NAMES", "get_family"),
    "boxes": ("resized_size", "visual_token_count", "to_model_answer", "parse_model_answer"),
    "chat": ("IGNORE_INDEX", "add_chat_columns", "answer_budget_report", "detection_prompt", "expand_for_grounding",
             "format_detection_messages", "generation_prompt", "grounding_prompt", "task_prompts", "vision_token_ids"),
    "processors": ("read_family", "load_processor", "load_saved_processor"),
})
