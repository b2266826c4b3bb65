"""TRL's ``SFTTrainer`` with the two fixes Qwen-VL needs: resume restores full-model weights, and padding-free token counts."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers.trainer import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from trl import SFTTrainer

from helpers.data.augment import AUGMENTATION_COUNTS, AugmentationCounts, EpochSampler, EpochTaggedSplit


class QwenVLCheckpoints:
    """For TRL's trainers: a resume that restores a Qwen-VL checkpoint's full-model weights (see ``QwenVLSFTTrainer``), and no model card."""

    def create_model_card(self, *args, **kwargs) -> None:
        # TRL writes a README.md into every checkpoint naming the base model by its hub id; for a local or offline
        # checkpoint it reads "fine-tuned version of [None]" with a text-generation example. The run folder
        # documents the run instead (params.json, metrics.json, model/inference.json).
        return None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.model if model is None else model
        folder = Path(resume_from_checkpoint)
        has_full_weights = (folder / SAFE_WEIGHTS_NAME).is_file() or (folder / SAFE_WEIGHTS_INDEX_NAME).is_file()
        if hasattr(model, "peft_config") or not has_full_weights:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        saved = type(model).from_pretrained(str(folder), dtype=dtype, use_safetensors=True)  # converts the keys
        model.load_state_dict(saved.state_dict(), strict=True)  # every weight, or an error
        del saved


class QwenVLSFTTrainer(QwenVLCheckpoints, SFTTrainer):
    """TRL's ``SFTTrainer`` with two Qwen-VL fixes (resume restores full-model weights, padding-free token counts) and seeded augmentation.

    Resume: ``save_pretrained`` writes Qwen-VL weights in the original hub layout (``model.layers``,
    ``visual``), while the loaded model names them ``model.language_model`` / ``model.visual``.
    transformers 5.24's resume loads the file with ``load_state_dict(strict=False)`` on the raw
    keys, so nothing matches and training silently restarts from the initial weights with the
    restored optimizer state (huggingface/transformers#43701). Loading the checkpoint through
    ``from_pretrained`` applies the key conversion; LoRA checkpoints take the trainer's own path.

    Token count: without an attention mask TRL counts a batch's tokens as ``position_ids.size(1)``,
    which for Qwen-VL's (4, 1, L) packed positions is 1; the logged ``num_tokens`` gets the rest.

    Augmentation (``augment=True``, the collator holding an augmenter): the training loader reads the split through
    ``EpochTaggedSplit`` with an ``EpochSampler``, so each training sample carries its transform seed
    for the epoch, in any worker; the evaluation loader reads the plain split and is never augmented.
    The counts each augmented batch carries are added up here (``augmentation_counts``).
    """

    def __init__(self, *args, augment: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.augment = augment
        self._augmentation_counts = AugmentationCounts()

    def get_train_dataloader(self):
        if not self.augment:
            return super().get_train_dataloader()
        seed = self.args.seed  # the run's seed: transforms and order are drawn from it per sample and epoch
        return self._get_dataloader(
            dataset=EpochTaggedSplit(self.train_dataset, seed), description="Training", batch_size=self._train_batch_size,
            sampler_fn=lambda dataset: EpochSampler(len(dataset), seed), is_training=True,
        )

    def training_step(self, model, inputs, num_items_in_batch=None):
        counts = inputs.pop(AUGMENTATION_COUNTS, None)  # the model takes no such argument
        if counts is not None:
            self._augmentation_counts.add(AugmentationCounts.from_tensor(counts))
        return super().training_step(model, inputs, num_items_in_batch)

    def augmentation_counts(self) -> AugmentationCounts:
        """What augmentation did to the samples trained on so far, summed over every process (all must call this)."""
        counts = self._augmentation_counts.as_tensor().to(self.accelerator.device)
        return AugmentationCounts.from_tensor(self.accelerator.reduce(counts, reduction="sum").cpu())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        packed = "attention_mask" not in inputs and inputs.get("position_ids") is not None and inputs["position_ids"].dim() == 3
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if packed and model.training:
            missing = inputs["input_ids"].numel() - inputs["position_ids"].size(1)
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(torch.tensor(missing, device=inputs["input_ids"].device)).sum())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result

