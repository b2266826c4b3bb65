"""Pascal VOC folders: one XML per image, from the VOC devkit, CVAT, Roboflow or LabelImg.

Layouts (``VOC_LAYOUTS``): the devkit's ``Annotations/`` + ``JPEGImages/`` + ``ImageSets/Main/<split>.txt``
(VOC2007/2012, and CVAT's "PASCAL VOC 1.1" export), or one folder per split with each image beside its XML
(Roboflow's VOC export, LabelImg). An XML's ``<path>`` names the machine that wrote it, so the image is
found by ``<filename>``: beside the XML, then under ``JPEGImages/``. Boxes are the devkit's 1-based pixel
corners (``helpers.data.records.voc_to_xyxy_px``); ``difficult`` objects become ignore regions for the metrics,
as COCO crowds are; the image's own size wins over ``<size>``, and a size that differs is counted. XML is read
with defusedxml: a DTD, an entity or an external reference refuses that one file, which is counted.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as SafeElementTree
from datasets import Dataset

from helpers.data.records import PendingRecord, SplitOptions, confined_path, first_records, label_for, load_files, split_candidates
from helpers.data.report import DataError, LoadReport, short

DEVKIT_FOLDERS = ("Annotations", "JPEGImages", "ImageSets/Main")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")  # tried, in order, when <filename> is missing
VOC_LAYOUTS = (
    "VOC devkit or CVAT: Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/<split>.txt",
    "Roboflow VOC export or LabelImg: <split>/*.xml, each image beside its XML",
)


def is_devkit(root: Path) -> bool:
    """True for the devkit layout: an ``Annotations`` folder of XML files."""
    return (root / "Annotations").is_dir() and any((root / "Annotations").glob("*.xml"))


def voc_splits(root: Path) -> list[str]:
    """The split names a VOC folder holds: its ImageSets listings, or its folders of XML files."""
    if is_devkit(root):
        return sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.xml")))


def split_xml_files(root: Path, split: str, report: LoadReport) -> list[Path]:
    """The XML files of ``split`` in either layout; a split found under another name is noted in the report."""
    for name in split_candidates(split):
        if is_devkit(root):
            listing = root / "ImageSets" / "Main" / f"{name}.txt"
            if not listing.is_file():
                continue
            ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
            files = [root / "Annotations" / f"{image_id}.xml" for image_id in ids]
        elif (root / name).is_dir() and any((root / name).glob("*.xml")):
            files = sorted((root / name).glob("*.xml"))
        else:
            continue
        if name != split:
            report.notes.append(f"split {split!r} read from the folder's {name!r}")
        return files
    raise DataError(f"{root}: no split {split!r} (splits there: {voc_splits(root)}). Set the *_split parameters")


def parse_voc_xml(path: Path) -> ElementTree.Element:
    """The annotation's root element, parsed with no DTD, entity or external reference allowed."""
    return SafeElementTree.parse(path, forbid_dtd=True, forbid_entities=True, forbid_external=True).getroot()


def number_or_text(text: str | None) -> float | str | None:
    """A coordinate as a float, or as written when it is not a number (the box is then counted as malformed)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def declared_size(annotation: ElementTree.Element) -> tuple:
    """``(width, height)`` from ``<size>``, each an int or None when missing or not a number."""
    values = []
    for field in ("width", "height"):
        value = number_or_text(annotation.findtext(f"size/{field}"))
        values.append(int(value) if isinstance(value, float) and value.is_integer() else None)
    return tuple(values)


def voc_objects(annotation: ElementTree.Element, known: frozenset[str] | None) -> tuple[list[tuple], list[tuple]]:
    """The ``(bbox, label or None, name as written)`` triples of the objects to train on, and of the ``difficult`` ones."""
    objects, difficult = [], []
    for element in annotation.findall("object"):
        name = element.findtext("name")
        box = [number_or_text(element.findtext(f"bndbox/{corner}")) for corner in ("xmin", "ymin", "xmax", "ymax")]
        is_difficult = (element.findtext("difficult") or "0").strip() in ("1", "true", "True")
        (difficult if is_difficult else objects).append((box, label_for(name, None, known) if isinstance(name, str) else None, name))
    return objects, difficult


def image_for(root: Path, xml_path: Path, annotation: ElementTree.Element) -> str:
    """The image's path relative to ``root``: ``<filename>`` beside the XML, else under ``JPEGImages/``; the first candidate when none exists."""
    filename = (annotation.findtext("filename") or "").strip()
    names = [filename] if filename else [xml_path.stem + extension for extension in IMAGE_EXTENSIONS]
    candidates = [confined_path(folder, name) for name in names for folder in (xml_path.parent, root / "JPEGImages")]
    candidates = [path for path in candidates if path is not None]
    if not candidates:
        return filename  # a <filename> leaving the folder: counted as path_outside_dataset by load_files
    found = next((path for path in candidates if path.is_file()), candidates[0])
    return str(found.relative_to(root))


def load_voc_split(root: Path, options: SplitOptions) -> tuple[Dataset, LoadReport]:
    """Load one split of a Pascal VOC folder (``VOC_LAYOUTS``)."""
    report = LoadReport(str(root), options.split, options.strict)
    files = split_xml_files(root, options.split, report)
    files = first_records(files, options, report)
    pending, paths = [], []
    for xml_path in files:
        record = str(xml_path.relative_to(root))
        try:
            annotation = parse_voc_xml(xml_path)
        except FileNotFoundError:
            report.problem(record, "missing_annotation", "the split lists this annotation, which does not exist")
            continue
        except defusedxml.DefusedXmlException as error:
            report.problem(record, "unsafe_xml", f"refused: {type(error).__name__} ({short(str(error))})")
            continue
        except (ElementTree.ParseError, OSError, UnicodeDecodeError) as error:
            report.problem(record, "malformed_xml", f"not readable XML ({short(str(error))})")
            continue
        if annotation.tag != "annotation":
            report.problem(record, "malformed_xml", f"the root element is <{short(annotation.tag)}>, not <annotation>")
            continue
        objects, difficult = voc_objects(annotation, options.known_classes)
        image_id = str(xml_path.relative_to(root).with_suffix(""))
        pending.append(PendingRecord(record, image_id, declared_size(annotation), objects, "voc", difficult, size_problem="xml_size_ignored"))
        paths.append(image_for(root, xml_path, annotation))
    return load_files(pending, root, paths, report, options.loading), report
