"""Detection data in one schema: image references + objects with ``label`` and ``bbox_xyxy_px``.

Every source is turned into records of ``{"image_id", "image", "width", "height", "objects":
[{"label", "bbox_xyxy_px"}], "crowd_regions": [...]}`` (``helpers.data.schema``). The image is a
reference (a file path, or a hub dataset's encoded bytes) that ``helpers.data.images.open_image``
decodes when a batch needs it, so memory does not grow with the number of images; ``width`` and
``height`` are those of the upright image (EXIF orientation applied) and boxes are ``[x1, y1, x2,
y2]`` in its pixels. Sources (``dataset_source`` in the notebook; the layout is recognised from the
files):

- ``"synthetic"``: the generator in ``helpers.data.synthetic``.
- a Hugging Face dataset, hub id or local ``save_to_disk`` folder, with an ``image`` column and an
  ``objects`` column of ``bbox`` + ``category`` (the common hub detection layout); ``bbox`` is COCO
  ``xywh`` or ``xyxy`` pixels, chosen by ``bbox_format``; class names come from the ``ClassLabel``.
- a COCO folder, one annotation file per split: ``<source>/<split>/annotations.json`` (or Roboflow's
  ``_annotations.coco.json``) with images under ``<source>/<split>/``, or COCO 2017's
  ``<source>/annotations/instances_<split>.json`` with images under ``<source>/<split>/``.
  COCO boxes are always ``xywh``. Crowd annotations (``iscrowd=1``) are never training targets:
  they are kept as ``crowd_regions``, which the metrics treat as COCO ignore regions.
- a JSONL folder, ``<source>/<split>.jsonl``, one image per line:
  ``{"image": "path relative to the folder", "objects": [{"label": "cat", "bbox": [...]}],
  "image_id": optional}`` with ``bbox`` in ``bbox_format`` (``bbox_xyxy_px`` is also accepted).
- a YOLO detection folder (Ultralytics or Roboflow's export; ``helpers.data.yolo``): normalised centre boxes.
- a Pascal VOC folder (devkit, CVAT, Roboflow's export, LabelImg; ``helpers.data.voc``): 1-based pixel corners.

A folder is in exactly one layout (``FOLDER_LAYOUTS``): two at once is an error naming both.

Images without objects are kept: they train the empty answer and their predictions count as false
positives. Image paths must stay inside the dataset folder and name regular files. Labels follow one
rule in every loader (``helpers.families.labels``). Every other problem is handled by a fixed rule
(``PROBLEMS``): a skip of the record, box or annotation, or a fix, counted in a ``LoadReport`` with
example messages naming the record. With ``strict=True`` the first problem raises a ``DataError``
that names the record and the fix instead.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from datasets import Dataset

from helpers.data.coco import COCO_LAYOUTS, find_coco_annotations, load_coco_split
from helpers.data.hub import load_hf_detection_split
from helpers.data.images import ImageCache, cache_key
from helpers.data.jsonl import load_jsonl_split
from helpers.families.labels import normalize_label
from helpers.data.records import ImageLoading, SplitOptions, split_candidates
from helpers.data.report import DataError, LoadReport
from helpers.data.synthetic import make_synthetic_dataset
from helpers.data.voc import VOC_LAYOUTS, is_devkit, load_voc_split, voc_splits
from helpers.data.yolo import YOLO_LAYOUTS, dataset_yaml, load_yolo_split, yolo_splits
from helpers.families.boxes import resized_size
from helpers.families.registry import Family
from helpers.runtime.checks import expand_path

IMAGE_CACHE_FOLDER = ".image_cache"  # under output_root, beside the offline model cache


@dataclass(frozen=True)
class LoadOptions:
    """How every split of a source is loaded: box format, accepted labels, strictness, image handling, and the synthetic generator's seed and settings."""

    bbox_format: str = "xywh"  # hub and JSONL pixel boxes (COCO files are always xywh)
    known_classes: list[str] | None = None  # labels accepted, normalised like every label (None or empty: all)
    strict: bool = False  # the first problem raises a DataError naming the record and the fix
    loading: ImageLoading = ImageLoading()
    seed: int = 0  # synthetic splits are generated from it, a distinct seed per split
    synthetic: dict = field(default_factory=dict)  # make_synthetic_dataset's keywords (helpers.data.synthetic.synthetic_options)


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name


def source_location(source: str) -> str | Path:
    """Where a ``dataset_source`` is: ``"synthetic"`` and hub ids (``org/name``) as given, a local path absolute with ``~`` expanded.

    A hub id is only taken where no local path of that name exists: a folder always wins.
    """
    if source == "synthetic" or (HUB_ID.fullmatch(source) and not Path(source).exists()):
        return source
    return expand_path(source)


def image_cache_for(cache_root: str | Path, source: str, family: Family, min_pixels: int, max_pixels: int) -> ImageCache:
    """The cache of ``source``'s images at the model's input size for ``family`` and the pixel bounds."""
    resize_key = f"factor={family.resize_factor},min_pixels={min_pixels},max_pixels={max_pixels}"
    folder = Path(cache_root) / cache_key(str(source_location(source)), resize_key)[:16]
    return ImageCache(folder, lambda width, height: resized_size(family, width, height, min_pixels, max_pixels), resize_key)


# Each folder layout: how it is recognised, and the tree it expects (named in the error for an unknown folder).
FOLDER_LAYOUTS: dict[str, tuple[Callable[[Path], bool], tuple[str, ...]]] = {
    "hf_disk": (lambda root: (root / "dataset_dict.json").exists() or (root / "dataset_info.json").exists(),
                ("a `save_to_disk` dataset: dataset_dict.json with one folder per split",)),
    "jsonl": (lambda root: any(root.glob("*.jsonl")), ("JSONL: <split>.jsonl, one image per line",)),
    "coco": (lambda root: any(any(root.glob(layout.format(split="*"))) for layout in COCO_LAYOUTS),
             tuple(f"COCO: {layout} with images under <split>/" for layout in COCO_LAYOUTS)),
    "yolo": (lambda root: dataset_yaml(root) is not None, YOLO_LAYOUTS),
    "voc": (lambda root: is_devkit(root) or any(root.glob("*/*.xml")), VOC_LAYOUTS),
}


def detect_source_kind(source: str) -> str:
    """``"synthetic"``, ``"hub"``, or the one folder layout (``FOLDER_LAYOUTS``) a ``dataset_source`` folder is in."""
    location = source_location(source)
    if isinstance(location, str):
        return "synthetic" if location == "synthetic" else "hub"
    if not location.is_dir():
        raise DataError(f"dataset_source={source!r}: expected a folder at {location}, found none there (nor is it a hub id, "
                        "org/name); give the folder holding your data, or a hub dataset id (docs/data.md)")
    kinds = [kind for kind, (matches, _tree) in FOLDER_LAYOUTS.items() if matches(location)]
    if len(kinds) > 1:
        raise DataError(f"dataset_source={source!r} holds {' and '.join(kinds)} layouts at once; point it at a folder with one of them")
    if not kinds:
        trees = "\n".join(f"  - {tree}" for _matches, trees in FOLDER_LAYOUTS.values() for tree in trees)
        raise DataError(f"dataset_source={source!r} is a folder in no supported layout; the layouts are:\n{trees}")
    return kinds[0]


def available_splits(location: Path, kind: str) -> list[str] | None:
    """The split names a local folder of ``kind`` holds (None: a single-split dataset, which any split name reads)."""
    if kind == "hf_disk":
        listing = location / "dataset_dict.json"
        return json.loads(listing.read_text()).get("splits", []) if listing.is_file() else None
    if kind == "jsonl":
        return sorted(p.stem for p in location.glob("*.jsonl"))
    if kind == "coco":
        found = set()
        for layout in COCO_LAYOUTS:
            for path in location.glob(layout.format(split="*")):
                found.add(path.stem.removeprefix("instances_") if layout.startswith("annotations/") else path.parent.name)
        return sorted(found)
    if kind == "yolo":
        return yolo_splits(location)
    return voc_splits(location)


def check_splits(source: str, split_names: dict[str, str]) -> None:
    """Before any work: a local ``dataset_source`` exists in one layout and holds every named split; otherwise a ``DataError`` saying what it holds."""
    kind = detect_source_kind(source)
    if kind in ("synthetic", "hub"):
        return
    present = available_splits(source_location(source), kind)
    for ours, theirs in split_names.items():
        names = (theirs,) if kind == "hf_disk" else split_candidates(theirs)  # a saved DatasetDict names its splits exactly
        if present is None or any(name in present for name in names):
            continue
        close = [match for name in names for match in difflib.get_close_matches(name, present, n=1)]
        hint = f"; did you mean -p {ours}_split {close[0]}?" if close else ""
        raise DataError(f"dataset_source={source!r} ({kind}) has no split {theirs!r} for {ours}_split; it holds {present}{hint}")


def with_split_note(loaded: tuple[Dataset, LoadReport], asked: str, found: str) -> tuple[Dataset, LoadReport]:
    """A loaded split whose report says when it was found under another name (Roboflow's 'valid' for 'validation')."""
    if found != asked:
        loaded[1].notes.append(f"split {asked!r} read from the folder's {found!r}")
    return loaded


def load_split(location: str | Path, kind: str, options: SplitOptions) -> tuple[Dataset, LoadReport]:
    """Load one split of a non-synthetic source of the given ``kind`` (``location`` from ``source_location``)."""
    split = options.split
    if kind in ("hf_disk", "hub"):
        return load_hf_detection_split(location, options)
    if kind == "coco":
        found = next(((name, f) for name in split_candidates(split) if (f := find_coco_annotations(location, name))), None)
        if found is None:
            tried = [str(location / layout.format(split=split)) for layout in COCO_LAYOUTS]
            raise DataError(f"{location}: no COCO annotations for split {split!r}; looked for {tried}. Set the *_split parameters")
        return with_split_note(load_coco_split(*found[1], options), split, found[0])
    if kind == "jsonl":
        found = next((name for name in split_candidates(split) if (location / f"{name}.jsonl").is_file()), None)
        if found is None:
            present = sorted(p.stem for p in location.glob("*.jsonl"))
            raise DataError(f"{location}: no {split}.jsonl (splits there: {present}). Set the *_split parameters")
        return with_split_note(load_jsonl_split(location / f"{found}.jsonl", options), split, found)
    if kind == "yolo":
        return load_yolo_split(location, options)
    if kind == "voc":
        return load_voc_split(location, options)
    raise ValueError(f"unknown source kind {kind!r}")


def synthetic_split(size: int, name: str, seed: int, options: LoadOptions) -> tuple[Dataset, LoadReport]:
    """A generated split of exactly ``size`` images, with its report."""
    if size < 1:
        raise ValueError(f"{name}_size must be >= 1 for synthetic data, got {size}")
    split = make_synthetic_dataset(size, seed=seed, **options.synthetic)
    report = LoadReport("synthetic", name, options.strict)
    report.counts.update(images_loaded=size, boxes_kept=sum(len(o) for o in split["objects"]))
    return split, report


def dataset_class_names(dataset: Dataset) -> list[str]:
    """Sorted label names present in a detection dataset."""
    return sorted({obj["label"] for objects in dataset["objects"] for obj in objects})


def load_detection_splits(
    source: str, split_names: dict[str, str], sizes: dict[str, int], options: LoadOptions = LoadOptions()
) -> tuple[dict[str, Dataset], dict[str, LoadReport]]:
    """Load the ``train``/``eval``/``test`` splits from any supported source, with a report per split.

    ``split_names`` maps our split to the source's split name; ``sizes`` caps each split's image count
    (0 = all; synthetic splits are generated at exactly that size, each from its own seed).
    """
    kind = detect_source_kind(source)
    location = source_location(source)
    known = frozenset(normalize_label(name) for name in options.known_classes) if options.known_classes else None
    splits: dict[str, Dataset] = {}
    reports: dict[str, LoadReport] = {}
    for offset, (ours, theirs) in enumerate(split_names.items()):
        if sizes[ours] < 0:
            raise ValueError(f"{ours}_size must be >= 0 (0: all images), got {sizes[ours]}")
        if kind == "synthetic":
            splits[ours], reports[ours] = synthetic_split(sizes[ours], ours, options.seed * 1000 + offset, options)
        else:
            split_options = SplitOptions(theirs, sizes[ours] or None, options.bbox_format, known, options.strict, options.loading)
            splits[ours], reports[ours] = load_split(location, kind, split_options)
        if len(splits[ours]) == 0:
            raise DataError(f"{source} [{theirs}]: no usable images; problems: {dict(reports[ours].counts)}, e.g. {reports[ours].examples[:3]}")
    return splits, reports
