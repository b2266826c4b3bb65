"""The notebook's parameter rules: the rule each parameter declares beside it, and the check of a whole set.

The parameters cell declares each knob as ``name: Annotated[type, rule] = default``. The runner
(``helpers.run_notebook``) checks the values before a kernel starts, and the notebook's first cell
checks them again for papermill or Jupyter used directly. Each allowed value is defined by the module
that acts on it and imported here; the rule classes are in ``helpers.runtime.checks``.
"""

from __future__ import annotations

from helpers.data.augment import AUGMENTATIONS
from helpers.data.records import BBOX_FORMATS
from helpers.evaluate.slicing import MERGES
from helpers.families.chat import TASKS
from helpers.runtime.checks import Choice, Either, NonEmpty, Range, RunName, check_parameters
from helpers.runtime.tracking import REPORT_TO_CHOICES
from helpers.train.model import ATTENTION_CHOICES, QUANTIZATION_CHOICES
from helpers.train.config import KEEP_CHOICES, SCHEDULES, best_checkpoint_problem

# The rules the parameters cell names (plain names, so papermill's --help-notebook still reads each line).
AT_LEAST_1 = Range(1)
AT_LEAST_0 = Range(0)
AT_LEAST_2 = Range(2)
POSITIVE = Range(0, above=True)
FRACTION = Range(0, 1)
SIDE_PX = Range(8)  # a synthetic image side: big enough for a shape
STEPS = Either((Choice((-1,)), AT_LEAST_1))  # -1: train by epochs
REPEATS = Either((Choice((0,)), Range(2)))  # 0: off; 1 would stop every answer at its first object
NON_EMPTY = NonEmpty()
RUN_NAME = RunName()
TASK, BBOX_FORMAT, QUANTIZATION = Choice(TASKS), Choice(BBOX_FORMATS), Choice(QUANTIZATION_CHOICES)
ATTENTION, SCHEDULE, REPORT_TO = Choice(ATTENTION_CHOICES), Choice(SCHEDULES), Choice(REPORT_TO_CHOICES)
KEEP, AUGMENTATION = Choice(KEEP_CHOICES), Choice(AUGMENTATIONS)
WORKERS = Either((Choice((-1,)), AT_LEAST_0))  # -1: chosen for the device (helpers.train.config.data_loader_settings)
TILE_PX = Either((Choice((0,)), Range(16)))  # 0: whole images
TILE_MERGE = Choice(MERGES)
# Pairs whose first value may not exceed the second.
ORDERED_PAIRS = (("synthetic_min_side_px", "synthetic_max_side_px"), ("min_pixels", "max_pixels"))


def check_notebook_parameters(values: dict, annotations: dict) -> dict:
    """Check the notebook's parameters against their declarations, ``ORDERED_PAIRS`` and the best-checkpoint rule; return them as a dict."""
    checked = check_parameters(values, annotations, ORDERED_PAIRS)
    if "keep_checkpoint" in checked:
        problem = best_checkpoint_problem(checked["keep_checkpoint"], checked["save_steps"], checked["eval_steps"], checked["iou_eval_images"])
        if problem:
            raise ValueError(f"parameter {problem}")
    return checked


def notebook_parameters(namespace: dict) -> dict:
    """The notebook's parameters, read from its namespace by their declarations and checked; number-like text becomes the number there too."""
    annotations = namespace["__annotations__"]
    params = check_notebook_parameters({name: namespace[name] for name in annotations}, annotations)
    namespace.update(params)  # papermill injected "1e-3" as text: the notebook's cells read the number
    return params


def parameter_table(params: dict, columns: int = 2, value_chars: int = 28) -> str:
    """The parameters as a compact table of ``name  value`` pairs, ``columns`` to a line, long values cut."""
    cells = [(name, repr(value) if len(repr(value)) <= value_chars else repr(value)[: value_chars - 3] + "...") for name, value in params.items()]
    name_width = max(len(name) for name, _ in cells)
    texts = [f"{name:<{name_width}}  {value:<{value_chars}}" for name, value in cells]
    rows = -(-len(texts) // columns)
    return "\n".join("   ".join(texts[row::rows]).rstrip() for row in range(rows))
