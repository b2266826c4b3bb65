"""Helpers for the Qwen-VL object-detection fine-tuning notebook."""
