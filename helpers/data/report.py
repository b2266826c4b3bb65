"""The load report: what a loader kept, fixed and skipped for one split, each problem named with its record and fix."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from helpers.families.labels import LABEL_PROBLEMS

MAX_EXAMPLES = 20  # problem messages kept per split in the report


# kind -> (what the loader does, how to fix the data). Record kinds skip the image, box kinds the box.
PROBLEMS: dict[str, tuple[str, str]] = {
    "missing_image": ("record skipped", "add the image file or remove the record"),
    "unreadable_image": ("record skipped", "replace the file with a valid image (it cannot be decoded, or is over 512 MB)"),
    "not_a_file": ("record skipped", "point the record at a regular image file (devices, FIFOs and folders are never read)"),
    "path_outside_dataset": ("record skipped", "give image paths relative to the dataset folder, without '..' or a leading '/'"),
    "extreme_aspect_ratio": ("record skipped", "crop the image: the processor refuses sides more than 200 times longer than the other"),
    "size_mismatch": ("record skipped", "re-export the annotations for the upright image (EXIF orientation applied)"),
    "malformed_record": ("record skipped", "give the record an image and a list of objects"),
    "duplicate_image_id": ("record skipped", "give every image entry its own id: boxes are attached to images by id"),
    "malformed_annotation": ("annotation skipped", "write each annotation as an object with an image_id, a bbox and a category_id"),
    "malformed_category": ("category skipped", "write each category as an object with a number id and a name"),
    "orphan_annotation": ("box skipped", "remove the annotation or add its image to 'images'"),
    "malformed_box": ("box skipped", "write the box as 4 finite numbers"),
    "unknown_category": ("box skipped", "add the class to the dataset's categories (or to dataset_classes)"),
    **{kind: ("box skipped", f"rename the class: a label that {why} is refused") for kind, why in LABEL_PROBLEMS.items()},
    "inverted_box": ("box skipped", "check bbox_format: x2 < x1 or y2 < y1 often means xywh read as xyxy"),
    "outside_box": ("box skipped", "the box lies entirely outside the image; check its coordinates"),
    "degenerate_box": ("box skipped", "the box is under 1 px wide or high; remove it"),
    "clipped_box": ("box clipped to the image", "make the box fit inside the image"),
    # YOLO label files (helpers.data.yolo)
    "malformed_label_line": ("box skipped", "write each line as 'class cx cy w h' (or 'class x1 y1 x2 y2 ...' for a polygon), numbers only"),
    "unknown_class_id": ("box skipped", "use a class id listed under 'names' in the dataset YAML, or add the class there"),
    "out_of_range_coordinates": ("box skipped", "write YOLO coordinates normalised to the image, between 0 and 1"),
    "orphan_label_file": ("label file skipped", "add its image under the images folder, or remove the label file"),
    # Pascal VOC annotation files (helpers.data.voc)
    "missing_annotation": ("record skipped", "add the XML, or remove its id from ImageSets/Main/<split>.txt"),
    "malformed_xml": ("record skipped", "re-export the annotation: it is not well-formed Pascal VOC XML"),
    "unsafe_xml": ("record skipped", "remove the DTD, entity declarations and external references from the XML"),
    "xml_size_ignored": ("the image's own size used", "re-export the annotation for the upright image so that <size> matches it"),
}


# What a loader kept, in the report's first rows.
KEPT_COUNTS = (
    "images_loaded", "images_without_objects", "images_without_label_file", "boxes_kept", "crowd_regions_kept", "images_cached",
    "images_from_cache",
)


class DataError(ValueError):
    """A dataset problem that stops loading: it names the record and the fix."""


@dataclass
class LoadReport:
    """What a loader kept, fixed and skipped for one split, with messages naming records."""

    source: str
    split: str
    strict: bool = False
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how the source was read (a split found under another name, ...)

    def problem(self, record: str, kind: str, detail: str) -> None:
        """Count one problem of ``kind`` (see ``PROBLEMS``), or raise it in strict mode."""
        action, fix = PROBLEMS[kind]
        message = f"{self.source} [{self.split}] {record}: {detail}"
        if self.strict:
            raise DataError(f"{message}. Fix: {fix}; or set data_strict=False to have it {action} and counted")
        self.counts[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{kind} ({action}): {message}")

    def as_dict(self) -> dict:
        """Counts and example messages as plain JSON-able values."""
        return {"source": self.source, "split": self.split, "counts": dict(self.counts), "examples": list(self.examples), "notes": list(self.notes)}


def short(value, limit: int = 60) -> str:
    """``repr`` of a value cut to ``limit`` characters, for messages about arbitrary data."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def format_data_report(reports: dict[str, LoadReport]) -> str:
    """A table of kept, fixed and skipped counts per split, with what each problem does."""
    names = list(reports)
    kinds = ["images_loaded", "images_without_objects", "boxes_kept"]
    kinds += [kind for kind in (*KEPT_COUNTS, *PROBLEMS) if kind not in kinds and any(report.counts[kind] for report in reports.values())]
    width = max(len(kind) for kind in kinds) + 2
    lines = [" " * width + "".join(f"{name:>10}" for name in names)]
    for kind in kinds:
        action = f"   ({PROBLEMS[kind][0]})" if kind in PROBLEMS else ""
        lines.append(f"{kind:<{width}}" + "".join(f"{reports[name].counts[kind]:>10}" for name in names) + action)
    lines += [f"{name}: {note}" for name, report in reports.items() for note in report.notes]
    return "\n".join(lines)
