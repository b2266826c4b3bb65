"""Processor pixel bounds (``min_pixels``, ``max_pixels``) that the tests, the benchmarks and the notebook share.

The notebook's parameters cell keeps its defaults as literals (papermill reads them there);
``tests/test_notebook.py`` checks that they equal these.
"""

# The notebook's defaults: 56*56 .. 224*224 pixels, so a Qwen2-VL image (patch 14, merge 2) gets 4 to 64 visual tokens.
DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS = 3136, 50176
# transformers' Qwen2VLImageProcessor defaults, 56*56 .. 28*28*1280 pixels (4 to 1280 visual tokens): real-size images.
QWEN2_VL_MIN_PIXELS, QWEN2_VL_MAX_PIXELS = 3136, 1003520
