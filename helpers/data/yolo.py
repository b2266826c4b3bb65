"""YOLO detection folders: Ultralytics' ``images/<split>/`` + ``labels/<split>/``, or Roboflow's ``<split>/images/`` + ``<split>/labels/``.

A dataset YAML (``data.yaml``, or any ``*.yaml`` at the top with ``names``) names the classes, as a list
or as ``{id: name}``; its ``path`` and ``<split>`` keys may point to the image folders, inside the dataset
folder. Each image's label file is its path with the last ``images`` folder replaced by ``labels`` and the
extension by ``.txt`` (Ultralytics' rule). Each line is ``class cx cy w h``, normalised to the upright image;
a line with more numbers is a segmentation polygon ``class x1 y1 x2 y2 ...``, whose box is its extent. An
image without a label file, or with an empty one, is a negative image.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from datasets import Dataset

from helpers.data.records import PendingRecord, SplitOptions, confined_path, first_records, label_for, load_files, split_candidates
from helpers.data.report import DataError, LoadReport, short

# Image files Ultralytics reads (its IMG_FORMATS), by extension.
IMAGE_EXTENSIONS = frozenset({".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm", ".heic"})
COORDINATE_TOLERANCE = 0.01  # normalised coordinates up to this far outside [0, 1] are rounding of the export: clipped
YOLO_LAYOUTS = (
    "Ultralytics: data.yaml (names), images/<split>/*.jpg, labels/<split>/*.txt",
    "Roboflow YOLO export: data.yaml (names), <split>/images/*.jpg, <split>/labels/*.txt (the validation split is 'valid')",
)


@dataclass(frozen=True)
class YoloSplit:
    """Where one split's images are, and the name the folder gives it."""

    image_dirs: tuple[Path, ...]
    found_as: str  # the split's name in the folder ('valid' for a requested 'validation', ...)


def dataset_yaml(root: Path) -> Path | None:
    """The dataset YAML at the top of ``root``: ``data.yaml``, else the first ``*.yaml`` that has ``names``."""
    for path in [root / "data.yaml", *sorted(p for p in root.glob("*.y*ml") if p.name != "data.yaml")]:
        config = read_yaml(path) if path.is_file() else None
        if isinstance(config, dict) and "names" in config:
            return path
    return None


def read_yaml(path: Path) -> object:
    """A YAML file's content, or None when it does not parse."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def class_names(config: dict, path: Path) -> list[str | None]:
    """The class names by id from the YAML's ``names`` (a list, or ``{id: name}`` with gaps as None)."""
    names = config.get("names")
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return list(names)
    if isinstance(names, dict) and names and all(isinstance(k, int) and k >= 0 and isinstance(v, str) for k, v in names.items()):
        return [names.get(i) for i in range(max(names) + 1)]
    raise DataError(f"{path}: 'names' must be a list of class names or a mapping {{id: name}} with ids from 0, got {short(names)}")


def yaml_split_folders(root: Path, config: dict, name: str) -> tuple[Path, ...]:
    """The image folders the YAML's ``name`` key gives, relative to the dataset folder (or to its ``path`` inside it)."""
    entry = config.get(name)
    entries = entry if isinstance(entry, list) else [entry] if entry is not None else []
    # ``path`` often names the folder on the machine that wrote the YAML: it is tried second, and only inside.
    bases = ["", *([config["path"]] if isinstance(config.get("path"), str) else [])]
    folders = []
    for item in entries:
        candidates = [confined_path(root, os.path.join(base, item)) if isinstance(item, str) else None for base in bases]
        found = next((folder for folder in candidates if folder is not None and folder.is_dir()), None)
        if found is None:
            raise DataError(f"{root}: the YAML's {name}: {short(item)} is not a folder inside the dataset folder; give image folders "
                            "relative to it (image list files, .txt, are not read)")
        folders.append(found)
    return tuple(folders)


def find_split(root: Path, config: dict, split: str) -> YoloSplit | None:
    """The image folders of ``split``: by layout (Ultralytics, Roboflow), else by the YAML's key; None when absent."""
    for name in split_candidates(split):
        for folder in (root / "images" / name, root / name / "images"):
            if folder.is_dir():
                return YoloSplit((folder,), name)
    for name in split_candidates(split):
        folders = yaml_split_folders(root, config, name)
        if folders:
            return YoloSplit(folders, name)
    return None


def yolo_splits(root: Path) -> list[str]:
    """The split names a YOLO folder holds: its image folders by layout, and the YAML's split keys."""
    names = {p.name for p in (root / "images").iterdir() if p.is_dir()} if (root / "images").is_dir() else set()
    names |= {p.name for p in root.iterdir() if (p / "images").is_dir()}
    yaml_path = dataset_yaml(root)
    config = read_yaml(yaml_path) if yaml_path else {}
    names |= {key for key in ("train", "val", "test") if isinstance(config, dict) and config.get(key)}
    return sorted(names)


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the image's path with its last ``images`` folder replaced by ``labels``, and ``.txt``."""
    parts = list(image.parts)
    if "images" not in parts:
        return image.with_suffix(".txt")  # no images folder: the label file sits beside the image, as Ultralytics reads it
    index = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:index], "labels", *parts[index + 1 :]).with_suffix(".txt")


def parse_label_line(line: str, names: list[str | None]) -> tuple[str, tuple[int, list[float]] | str]:
    """``("ok", (class id, [cx, cy, w, h]))`` for one label line, else ``(problem kind, what is wrong)``."""
    fields = line.split()
    try:
        numbers = [float(v) for v in fields[1:]]
        class_id = int(fields[0])
    except (ValueError, IndexError):
        return "malformed_label_line", f"{short(line)} is not a class id followed by numbers"
    if len(numbers) < 4 or (len(numbers) > 4 and len(numbers) % 2):
        return "malformed_label_line", f"{short(line)} has {len(numbers)} coordinates; expected 4 (cx cy w h) or an even number (a polygon)"
    if not all(math.isfinite(v) for v in numbers):
        return "malformed_label_line", f"{short(line)} holds a value that is not a finite number"
    if not 0 <= class_id < len(names) or names[class_id] is None:
        return "unknown_class_id", f"class id {class_id} is not under 'names' ({len(names)} classes)"
    if any(v < -COORDINATE_TOLERANCE or v > 1 + COORDINATE_TOLERANCE for v in numbers):
        return "out_of_range_coordinates", f"{short(line)} has coordinates outside 0..1: YOLO boxes are normalised to the image"
    numbers = [min(max(v, 0.0), 1.0) for v in numbers]
    if len(numbers) == 4:
        return "ok", (class_id, numbers)
    xs, ys = numbers[0::2], numbers[1::2]  # a polygon: its box is its extent
    return "ok", (class_id, [(min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)])


def read_label_file(path: Path, record: str, names: list[str | None], known: frozenset[str] | None, report: LoadReport) -> list[tuple]:
    """The ``(bbox, label or None, class id)`` triples of one label file; bad lines counted with file and line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        report.problem(record, "malformed_label_line", f"{path.name} cannot be read as text ({error})")
        return []
    triples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        kind, parsed = parse_label_line(line, names)
        if kind != "ok":
            report.problem(f"{path}:{number}", kind, parsed)
            continue
        class_id, box = parsed
        triples.append((box, label_for(class_id, names, known), class_id))
    return triples


def split_images(split: YoloSplit) -> list[Path]:
    """The split's image files, in path order."""
    return sorted(p for folder in split.image_dirs for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def count_orphan_labels(split: YoloSplit, images: list[Path], report: LoadReport) -> None:
    """Count label files of the split that no image has."""
    wanted = {label_path(image) for image in images}
    for folder in split.image_dirs:
        labels = label_path(folder / "x.jpg").parent
        for path in sorted(labels.rglob("*.txt")) if labels.is_dir() else []:
            if path not in wanted:
                report.problem(str(path), "orphan_label_file", "no image of the split has this name")


def load_yolo_split(root: Path, options: SplitOptions) -> tuple[Dataset, LoadReport]:
    """Load one split of a YOLO detection folder (``YOLO_LAYOUTS``)."""
    yaml_path = dataset_yaml(root)
    if yaml_path is None:
        raise DataError(f"{root}: no dataset YAML with 'names' (data.yaml); a YOLO folder is one of: {'; '.join(YOLO_LAYOUTS)}")
    config = read_yaml(yaml_path)
    names = class_names(config, yaml_path)
    report = LoadReport(str(root), options.split, options.strict)
    split = find_split(root, config, options.split)
    if split is None:
        tried = ", ".join(split_candidates(options.split))
        raise DataError(f"{root}: no image folder for split {options.split!r} (looked for {tried} as images/<split>/, <split>/images/ "
                        f"or a key of {yaml_path.name}). Set the *_split parameters")
    if split.found_as != options.split:
        report.notes.append(f"split {options.split!r} read from the folder's {split.found_as!r}")
    images = split_images(split)
    count_orphan_labels(split, images, report)
    images = first_records(images, options, report)
    pending = []
    for image in images:
        record = str(image.relative_to(root))
        labels = label_path(image)
        if not labels.is_file():
            report.counts["images_without_label_file"] += 1
        triples = read_label_file(labels, record, names, options.known_classes, report) if labels.is_file() else []
        pending.append(PendingRecord(record, str(image.relative_to(root).with_suffix("")), None, triples, "cxcywh_norm"))
    return load_files(pending, root, [str(image.relative_to(root)) for image in images], report, options.loading), report
