"""Helpers of the fine-tuning notebook. Importing the package silences the known warnings nobody can act on."""

import logging
import warnings

# tqdm.auto, which transformers and datasets use, looks for ipywidgets (not a dependency) in a kernel, warns,
# and falls back to text bars, which render in Jupyter and in papermill logs alike.
warnings.filterwarnings("ignore", message="IProgress not found")
# bitsandbytes (imported by peft) looks for an optional CPU 4-bit kernel package at import; 4-bit training runs
# on CUDA only here, so its absence changes nothing.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
