"""A tolerant reader of the objects in a model's answer: never raises, linear in the answer's length.

What it reads, wherever it appears in the text (prose, code fences and several blocks included):
- JSON, and what models write instead: trailing commas, Python literals (single quotes, ``True``,
  ``False``, ``None``, tuples), unquoted words as strings, a missing colon or closing bracket;
- nested values (``{"bbox_2d": [..], "attributes": {..}}``) and strings holding braces or brackets;
- a cut-off tail: every object closed before the end is kept, an unclosed one is dropped (its last
  number may itself be cut);
- Qwen2-VL's tags, ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``,
  with prose between the parts; a box without its own label takes the previous one.

Nothing is evaluated: tokens are matched by regular expressions and turned into values by hand
(a quoted string's escapes are decoded by ``json.loads``, or ``ast.literal_eval`` on that one literal).
Why not a library: ``json`` and ``ast.literal_eval`` stop at the first flaw and lose every box
(Qwen's own ODinW evaluator uses ``ast.literal_eval``); ``json_repair`` closes a cut-off object,
which invents a box from a cut number; and none of them gives each object's place in the text,
which the box scores need. Numbers become floats, so a 5,000-digit number is ``inf`` rather than
an error; nesting deeper than ``MAX_DEPTH`` is skipped over, not recursed into.
"""

from __future__ import annotations

import ast
import json
import math
import re
import warnings
from dataclasses import dataclass, field

MAX_DEPTH = 64  # containers nested deeper are skipped (their closing brackets are still matched)

_OPENER_RE = re.compile(r"[{\[]")  # outside any container only these start something; quotes are prose there
_TOKEN_RE = re.compile(  # whitespace before a token is taken with it: one step per token
    r"""\s*(?:
        (?P<punct>[{}\[\]():,])
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<number>[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<open_quote>["'])
      | (?P<other>[^\s{}\[\]():,"'A-Za-z0-9_+.\-]+|.)
    )""",
    re.VERBOSE | re.DOTALL,
)
_WORDS = {"true": True, "false": False, "null": None, "none": None, "nan": math.nan, "infinity": math.inf}
_TAG_RE = re.compile(r"<\|(object_ref_start|object_ref_end|box_start|box_end)\|>")
_NUM = r"([-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
_TAG_BOX_RE = re.compile(rf"\({_NUM},{_NUM}\),?\({_NUM},{_NUM}\)")  # matched on the box text with whitespace removed
_ABSENT = object()  # no key waiting for its value


@dataclass(slots=True)
class _Frame:
    """An open container: a dict (with the key waiting for its value) or a list."""

    is_dict: bool
    start: int
    value: dict | list = field(default_factory=list)
    key: object = _ABSENT


def _string_value(token: str) -> str:
    """The text of a quoted token: JSON escapes in a JSON string, Python's in a Python one, else as written."""
    inner = token[1:-1]
    if "\\" not in inner:
        return inner
    try:
        return json.loads(token)
    except ValueError:
        pass
    try:
        with warnings.catch_warnings():  # an invalid escape such as "\B" only warns, and stays as written
            warnings.simplefilter("ignore")
            value = ast.literal_eval(token)  # a single string literal, matched as such: nothing is evaluated
    except (ValueError, SyntaxError, MemoryError):
        return inner
    return value if isinstance(value, str) else inner


def _scalar(kind: str, token: str):
    """The value of a string, number or bare-word token."""
    if kind == "string":
        return _string_value(token)
    if kind == "number":
        return float(token)  # never an int: huge integers would overflow later
    return _WORDS.get(token.lower(), token)


class _DictReader:
    """The reader's state while it walks one answer: the open containers, how many are skipped, the dicts found."""

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys
        self.found: list[tuple[dict, tuple[int, int]]] = []
        self.stack: list[_Frame] = []
        self.skipped = 0  # containers open beyond MAX_DEPTH

    def deliver(self, value) -> None:
        """Give a finished value to the innermost open container."""
        if self.skipped or not self.stack:
            return
        frame = self.stack[-1]
        if not frame.is_dict:
            frame.value.append(value)
        elif frame.key is _ABSENT:
            frame.key = value if isinstance(value, str) else _ABSENT  # only strings name fields
        else:
            if isinstance(frame.key, str):
                frame.value[frame.key] = value
            frame.key = _ABSENT

    def open(self, is_dict: bool, start: int) -> None:
        """Open a container, or count it as skipped beyond MAX_DEPTH."""
        if len(self.stack) >= MAX_DEPTH or self.skipped:
            self.skipped += 1
        else:
            self.stack.append(_Frame(is_dict, start, {} if is_dict else []))

    def close(self, want_dict: bool, end: int) -> None:
        """Close the innermost container of the kind; containers left open inside it close with it."""
        if self.skipped:
            self.skipped -= 1
            return
        if not (self.stack and self.stack[-1].is_dict == want_dict) and not any(frame.is_dict == want_dict for frame in self.stack):
            return  # a stray closing bracket (the common case, a matching one on top, skips the search)
        while True:
            frame = self.stack.pop()
            if frame.is_dict and any(key in frame.value for key in self.keys):
                self.found.append((frame.value, (frame.start, end)))
            self.deliver(frame.value)
            if frame.is_dict == want_dict:
                return

    def read(self, text: str) -> list[tuple[dict, tuple[int, int]]]:
        """Walk ``text`` token by token and return the dicts found."""
        pos, end_of_text = 0, len(text)
        while pos < end_of_text:
            if not self.stack and not self.skipped:
                opener = _OPENER_RE.search(text, pos)
                if opener is None:
                    break
                pos = opener.start()
            token = _TOKEN_RE.match(text, pos)
            if token is None:
                break  # only whitespace is left
            kind, value, pos = token.lastgroup, token.group(token.lastgroup), token.end()
            if kind == "punct":
                if value in "{[(":
                    self.open(value == "{", token.start())
                elif value in "}])":
                    self.close(value == "}", pos)
                elif value == "," and self.stack and self.stack[-1].is_dict:
                    self.stack[-1].key = _ABSENT  # "a": , or a key left without value
            elif kind == "open_quote":
                break  # a string cut off by the end of the answer: nothing after it closes
            elif kind in ("string", "number", "word"):
                self.deliver(_scalar(kind, value))
        return self.found


def read_dicts(text: str, keys: tuple[str, ...]) -> list[tuple[dict, tuple[int, int]]]:
    """Every dict closed in ``text`` that holds one of ``keys``, innermost first, with its ``(start, end)`` characters."""
    return _DictReader(keys).read(text)


def read_tag_boxes(text: str) -> list[tuple[str, list[float], tuple[int, int]]]:
    """``(label, [x1, y1, x2, y2], span)`` for every complete Qwen2-VL box tag, numbers as written."""
    found = []
    label, label_start, label_is_fresh = "", None, False
    ref_start = box_start = None
    for marker in _TAG_RE.finditer(text):
        name = marker.group(1)
        if name == "object_ref_start":
            ref_start = marker.start()
        elif name == "object_ref_end" and ref_start is not None:
            label = text[ref_start + len("<|object_ref_start|>") : marker.start()].strip()
            label_start, label_is_fresh, ref_start = ref_start, True, None
        elif name == "box_start":
            box_start = marker.start()
        elif name == "box_end" and box_start is not None:
            content = "".join(text[box_start + len("<|box_start|>") : marker.start()].split())
            numbers = _TAG_BOX_RE.fullmatch(content)
            if numbers:
                coords = [float(v) for v in numbers.groups()]
                start = label_start if label_is_fresh else box_start
                found.append((label, coords, (start, marker.end())))
                label_is_fresh = False
            box_start = None
    return found
