"""Write a small detection dataset as a COCO or a YOLO folder, to walk through "your own data" (docs/own_data.md).

    .venv/bin/python examples/make_example_data.py --format yolo data/shapes-yolo
    .venv/bin/python examples/make_example_data.py --format coco data/shapes-coco

The images are the offline profile's coloured shapes (three classes, 1-4 per image, some images empty),
laid out exactly as Ultralytics / Roboflow exports lay out real data, with train, valid and test splits, and
one new image (new.png) that no split holds, to try the trained model on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from helpers.data.images import open_image
from helpers.data.synthetic import CLASS_STYLES, make_synthetic_dataset
from helpers.data.writers import write_coco_split, write_yolo_split

SPLIT_SIZES = {"train": 48, "valid": 8, "test": 8}  # Roboflow's split names; the notebook finds "valid" for eval_split "validation"


def main(argv: list[str] | None = None) -> Path:
    """Write the folder and say what is in it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the dataset (created)")
    parser.add_argument("--format", choices=["coco", "yolo"], default="coco")
    args = parser.parse_args(argv)
    if args.folder.exists() and any(args.folder.iterdir()):
        raise SystemExit(f"{args.folder} exists and is not empty; choose a new folder")
    names = sorted(CLASS_STYLES)
    for offset, (split, size) in enumerate(SPLIT_SIZES.items()):
        dataset = make_synthetic_dataset(size, seed=500 + offset, empty_fraction=0.1)
        writer = write_coco_split if args.format == "coco" else write_yolo_split
        writer(dataset, args.folder, split, names)
    open_image(make_synthetic_dataset(1, seed=999)[0]["image"]).save(args.folder / "new.png")
    print(f"{args.format} folder {args.folder}: {SPLIT_SIZES} images, classes {names}; a new image to try: {args.folder / 'new.png'}")
    return args.folder


if __name__ == "__main__":
    main()
