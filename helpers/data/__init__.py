"""Detection data as it comes, in one schema: sources (hub, COCO, JSONL, synthetic), the rules every loader follows, images."""

from helpers.runtime.entry_points import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "sources": ("IMAGE_CACHE_FOLDER", "LoadOptions", "dataset_class_names", "image_cache_for", "load_detection_splits"),
    "records": ("ImageLoading",),
    "report": ("DataError", "format_data_report"),
    "images": ("open_image",),
    "synthetic": ("synthetic_options", "make_synthetic_dataset"),
})
