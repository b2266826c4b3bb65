"""Box-aware augmentation of training samples, with the answer written after the transform.

A VLM detector's target is text holding the boxes, so a geometric transform must rewrite the answer.
An image larger than the model's input is first shrunk to it (the processor would shrink it anyway), so
augmenting a 12-megapixel photo costs what augmenting the model's input costs.
Albumentations moves the image and its boxes together (clipping at the border and dropping an object
left with less than ``MIN_VISIBILITY`` of its area); the answer is then written from the moved boxes
by the family's own writer (``helpers.families.chat.answer_for``), in the frame of the image the
processor receives. Evaluation never augments: only training samples carry an ``AUGMENT_SEED``.

Reproducible: each sample's transform is seeded from (``seed``, epoch, index), so two runs give the
same batches whatever the number of data-loader workers, and a resumed run continues the sequence.
``EpochSampler`` shuffles each epoch from (``seed``, epoch) and hands the epoch to the data set as
part of the index (``epoch * n + i``), which reaches worker processes that never see the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from PIL import Image

from helpers.data.images import decode_image, image_bytes, open_image
from helpers.families.boxes import clip_xyxy, resized_size
from helpers.families.chat import answer_for
from helpers.families.registry import Family

if TYPE_CHECKING:
    import albumentations as A

AUGMENTATIONS = ("none", "standard")  # the policies offered; "none" trains on the images as they are
MIN_VISIBILITY = 0.3  # an object keeping less of its area after a crop or shift is dropped from the answer
AUGMENT_SEED = "augment_seed"  # the key a training sample's transform seed travels under
AUGMENTATION_COUNTS = "augmentation_counts"  # the batch key the collator reports its counts under (popped by the trainer)
COUNT_NAMES = ("images", "objects", "objects_kept", "objects_cut", "images_emptied")  # the order of the counts tensor
GREY_FILL = (114, 114, 114)  # what a shift or zoom-out uncovers: the neutral grey YOLO uses


def standard_transforms(horizontal_flip: bool) -> list:
    """The "standard" policy: flip (optional), scale and shift, crop, then brightness, contrast and hue."""
    import albumentations as A  # here, not above: the parameter rules read AUGMENTATIONS before any image library loads

    flips = [A.HorizontalFlip(p=0.5)] if horizontal_flip else []  # off for label sets with left/right meaning
    return flips + [
        A.Affine(scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), border_mode=0, fill=GREY_FILL, p=0.5),
        A.CropAndPad(percent=(-0.2, 0.0), keep_size=False, sample_independently=True, p=0.3),  # up to a fifth off each side
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.0, hue=(-0.03, 0.03), p=0.8),
    ]


def compose(transforms: list, min_visibility: float = MIN_VISIBILITY) -> A.Compose:
    """Transforms that move pixel boxes (``pascal_voc``: x1, y1, x2, y2) with the image, clipped, dropping barely visible ones."""
    import albumentations as A

    boxes = A.BboxParams(format="pascal_voc", label_fields=["object_index"], min_visibility=min_visibility, clip=True,
                         filter_invalid_bboxes=True)  # a box with no area left is cut (and counted), not an error
    return A.Compose(transforms, bbox_params=boxes, seed=0)


def policy_transform(policy: str, horizontal_flip: bool = True) -> A.Compose | None:
    """The transform of one of ``AUGMENTATIONS`` (None for "none")."""
    if policy not in AUGMENTATIONS:
        raise ValueError(f"augmentation={policy!r} is not one of {AUGMENTATIONS}")
    return None if policy == "none" else compose(standard_transforms(horizontal_flip))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The transform seed of sample ``index`` in ``epoch``: independent of order, process and worker."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@dataclass
class AugmentationCounts:
    """What augmentation did to a run's training samples: objects cut below the minimum visibility, images left empty."""

    images: int = 0
    objects: int = 0
    objects_kept: int = 0
    objects_cut: int = 0
    images_emptied: int = 0

    def add(self, other: AugmentationCounts) -> None:
        """Add ``other``'s counts to these."""
        for name in COUNT_NAMES:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_tensor(self) -> torch.Tensor:
        """The counts in ``COUNT_NAMES`` order, for a batch to carry back from a worker."""
        return torch.tensor([getattr(self, name) for name in COUNT_NAMES], dtype=torch.long)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> AugmentationCounts:
        """Counts from ``as_tensor``'s layout."""
        return cls(**dict(zip(COUNT_NAMES, (int(v) for v in values.tolist()))))

    def as_dict(self) -> dict:
        """The counts by name, for the data report."""
        return {name: getattr(self, name) for name in COUNT_NAMES}


@dataclass
class AugmentedSample:
    """One training sample after augmentation: the image the processor receives, its objects and the answer written from them."""

    image: Image.Image
    objects: list[dict]
    answer: str
    counts: AugmentationCounts = field(default_factory=AugmentationCounts)


@dataclass
class Augmenter:
    """Applies a transform to a decoded training sample and writes its answer in ``family``'s frame."""

    transform: A.Compose
    family: Family
    min_pixels: int
    max_pixels: int
    policy: str = "custom"

    def model_sized_image(self, example: dict) -> Image.Image:
        """The sample's image, no larger than ``max_pixels``: a bigger one is shrunk to the model's input first, as the image cache does."""
        target = resized_size(self.family, example["width"], example["height"], self.min_pixels, self.max_pixels)
        reference = example["image"]
        if isinstance(reference, Image.Image) or example["width"] * example["height"] <= self.max_pixels:
            image = open_image(reference)
        else:  # a JPEG decodes straight at a reduced scale; the transforms then work on what the processor keeps
            image = decode_image(image_bytes(reference), draft_size=target)
        return image.resize(target, Image.Resampling.BICUBIC) if image.width * image.height > self.max_pixels else image

    def __call__(self, example: dict, seed: int) -> AugmentedSample:
        """Decode ``example``'s image, transform it with its boxes under ``seed``, and write the answer."""
        image = self.model_sized_image(example)
        # A cached or shrunk image is smaller than the record says; the record's boxes are in original pixels.
        sx, sy = image.width / example["width"], image.height / example["height"]
        boxes = [clip_xyxy([x1 * sx, y1 * sy, x2 * sx, y2 * sy], image.width, image.height)
                 for x1, y1, x2, y2 in (obj["bbox_xyxy_px"] for obj in example["objects"])]
        self.transform.set_random_seed(seed)
        out = self.transform(image=np.asarray(image), bboxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                             object_index=list(range(len(boxes))))
        moved = Image.fromarray(out["image"])
        objects = [
            dict(example["objects"][int(index)], bbox_xyxy_px=[float(v) for v in box])
            for box, index in zip(out["bboxes"], out["object_index"])
        ]
        answer = answer_for(objects, self.family, moved.size, self.min_pixels, self.max_pixels)
        counts = AugmentationCounts(
            images=1, objects=len(boxes), objects_kept=len(objects), objects_cut=len(boxes) - len(objects),
            images_emptied=int(bool(boxes) and not objects),
        )
        return AugmentedSample(moved, objects, answer, counts)


def augmenter_for(policy: str, family: Family, min_pixels: int, max_pixels: int, horizontal_flip: bool = True) -> Augmenter | None:
    """The training augmenter of ``policy`` for ``family`` at these pixel bounds (None for "none")."""
    transform = policy_transform(policy, horizontal_flip)
    return None if transform is None else Augmenter(transform, family, min_pixels, max_pixels, policy)


def batch_images_and_answers(examples: list[dict], augmenter: Augmenter | None) -> tuple[list[Image.Image], list[str], AugmentationCounts | None]:
    """Each example's decoded image and answer; training samples (those with an ``AUGMENT_SEED``) augmented, with their counts."""
    if augmenter is None or not any(AUGMENT_SEED in ex for ex in examples):
        return [open_image(ex["image"]) for ex in examples], [ex["answer"] for ex in examples], None
    images, answers, counts = [], [], AugmentationCounts()
    for ex in examples:
        if AUGMENT_SEED not in ex:
            raise ValueError(f"example {ex.get('image_id')}: a batch mixes augmented training samples with plain ones")
        sample = augmenter(ex, ex[AUGMENT_SEED])
        images.append(sample.image)
        answers.append(sample.answer)
        counts.add(sample.counts)
    return images, answers, counts


def augmented_examples(dataset, augmenter: Augmenter, seed: int, n: int, epoch: int = 0) -> list[dict]:
    """The first ``n`` records as ``epoch`` augments them, as split rows (image decoded, size and objects moved)."""
    rows = []
    for index in range(min(n, len(dataset))):
        example = dataset[index]
        sample = augmenter(example, sample_seed(seed, epoch, index))
        rows.append(example | {"image": sample.image, "width": sample.image.width, "height": sample.image.height,
                               "objects": sample.objects, "answer": sample.answer})
    return rows


class EpochTaggedSplit(torch.utils.data.Dataset):
    """A training split whose item ``epoch * n + i`` is record ``i`` carrying its transform seed for that epoch."""

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int) -> dict:
        epoch, index = divmod(int(key), len(self.dataset))
        return dict(self.dataset[index], **{AUGMENT_SEED: sample_seed(self.seed, epoch, index)})

    def __iter__(self) -> Iterator[dict]:
        """The records of epoch 0 (every key is valid, so iterating by index would never end)."""
        return (self[index] for index in range(len(self)))


class EpochSampler(torch.utils.data.Sampler[int]):
    """Shuffles ``n`` records per epoch from (``seed``, epoch) and yields ``epoch * n + i``, so the epoch reaches the data set."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch (and on resume with the epoch it resumes)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        offset = self.epoch * self.n
        return iter((offset + torch.randperm(self.n, generator=generator)).tolist())
