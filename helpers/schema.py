"""The one dataset schema every detection source is turned into."""

from datasets import Features, Image, List, Value

# image_id: str (the source's id, or the row/line it came from); image: RGB, EXIF-upright; width/height: pixels of that image;
# objects: [{"label": str, "bbox_xyxy_px": [x1, y1, x2, y2]}] in pixels of that image.
DETECTION_FEATURES = Features(
    {
        "image_id": Value("string"),
        "image": Image(),
        "width": Value("int32"),
        "height": Value("int32"),
        "objects": List({"label": Value("string"), "bbox_xyxy_px": List(Value("float32"), length=4)}),
    }
)
