"""The one dataset schema every detection source is turned into."""

from datasets import Features, Image, List, Value

# image_id: str (the source's id, or the row/line it came from); image: a reference, {"path", "bytes"}, decoded by
# helpers.data.images.open_image when a batch needs it (never held decoded); width/height: pixels of the upright
# (EXIF-applied) original image; objects: [{"label": str, "bbox_xyxy_px": [x1, y1, x2, y2]}] in pixels of that image;
# crowd_regions: COCO iscrowd regions in the same form, never targets, COCO ignore regions for the metrics.
BOXES = List({"label": Value("string"), "bbox_xyxy_px": List(Value("float32"), length=4)})
DETECTION_FEATURES = Features(
    {
        "image_id": Value("string"),
        "image": Image(decode=False),
        "width": Value("int32"),
        "height": Value("int32"),
        "objects": BOXES,
        "crowd_regions": BOXES,
    }
)
