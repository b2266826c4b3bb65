"""Detection data as it comes, in one schema: sources (hub, COCO, JSONL, YOLO, VOC, synthetic), the rules every loader follows, images, augmentation, tiles."""

from helpers.runtime.entry_points import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "sources": ("IMAGE_CACHE_FOLDER", "LoadOptions", "dataset_class_names", "image_cache_for", "load_detection_splits"),
    "records": ("ImageLoading",),
    "augment": ("AUGMENTATION_COUNTS", "augmented_examples", "augmenter_for", "batch_images_and_answers"),
    "report": ("DataError", "format_data_report"),
    "images": ("PREVIEW_FOLDER", "open_image", "write_previews"),
    "synthetic": ("synthetic_options", "make_synthetic_dataset"),
    "tiles": ("TILING_COUNTS", "TileGrid", "tile_split", "tile_writer_for"),
})
