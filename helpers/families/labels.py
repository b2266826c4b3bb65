"""One label rule for every loader, the targets and the metrics.

A label is written inside the answer the model learns (``<|object_ref_start|>cat<|object_ref_end|>``
or ``{"label": "cat"}``), so a label holding markup rewrites the target: ``cat<|im_end|>`` ends the
turn early, ``<|box_start|>`` text adds a box, a brace breaks the JSON reader, ``<|image_pad|>`` asks
for an image that is not there. Loaders normalise every label with ``normalize_label`` and refuse
the ones ``label_problem`` names; the answer reader normalises predicted labels the same way, so a
metric compares like with like.
"""

from __future__ import annotations

import re

MAX_LABEL_CHARS = 100  # longer than any class name in COCO, LVIS or Objects365; a longer one is a data error
# Any <...> tag: Qwen's special tokens (<|im_end|>, <|box_start|>, <|image_pad|>) and the added tags of
# newer templates (<think>, <tool_call>) alike.
MARKUP = re.compile(r"<[^<>]*>")
LINE_BREAKS = re.compile(r"[\n\r\v\f\x85\u2028\u2029]")

# problem kind -> what is wrong with such a label (the kinds are counted by the loaders: helpers.data.report.PROBLEMS)
LABEL_PROBLEMS = {
    "empty_label": "is empty",
    "label_with_markup": "holds a tag like <|...|>, a line break or a brace, which would rewrite the answer text",
    "long_label": f"is longer than {MAX_LABEL_CHARS} characters",
}


def normalize_label(text: str) -> str:
    """Strip the label and collapse each run of spaces or tabs inside it into one space."""
    return " ".join(re.split(r"[ \t]+", text.strip()))


def label_problem(text: str) -> str | None:
    """The ``LABEL_PROBLEMS`` kind that refuses a label (already normalised), or None when it is usable."""
    if not text:
        return "empty_label"
    if MARKUP.search(text) or LINE_BREAKS.search(text) or "{" in text or "}" in text:
        return "label_with_markup"
    if len(text) > MAX_LABEL_CHARS:
        return "long_label"
    return None
