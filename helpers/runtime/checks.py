"""Parameter rules and the check run before any work: each names the parameter, the value and what is allowed.

The rule classes are what a declaration ``name: Annotated[type, rule] = default`` carries; the
notebook's own rule instances, with the allowed values imported from the modules they govern, are
in ``helpers.parameters``.
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path

RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # one path component: no separator, no "..", no leading dot


@dataclass(frozen=True)
class Range:
    """A number within ``[low, high]`` (either end open when None); ``above`` makes ``low`` exclusive."""

    low: float | None = None
    high: float | None = None
    above: bool = False

    def allows(self, value) -> bool:
        """True when ``value`` is a finite number in range."""
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        """What is allowed, in words."""
        low = "" if self.low is None else (f"> {self.low}" if self.above else f">= {self.low}")
        high = "" if self.high is None else f"<= {self.high}"
        return "a number " + " and ".join(part for part in (low, high) if part)


@dataclass(frozen=True)
class Choice:
    """One of the listed values."""

    values: tuple

    def allows(self, value) -> bool:
        """True when ``value`` is one of the choices."""
        return any(value == choice and type(value) is type(choice) for choice in self.values)

    def describe(self) -> str:
        """What is allowed, in words."""
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass(frozen=True)
class Either:
    """Allowed by any of the rules."""

    rules: tuple

    def allows(self, value) -> bool:
        """True when one of the rules allows ``value``."""
        return any(rule.allows(value) for rule in self.rules)

    def describe(self) -> str:
        """What is allowed, in words."""
        return " or ".join(rule.describe() for rule in self.rules)


@dataclass(frozen=True)
class NonEmpty:
    """A string or list with at least one element (a string of more than spaces)."""

    def allows(self, value) -> bool:
        """True for a non-blank string or a non-empty list."""
        return bool(value.strip()) if isinstance(value, str) else bool(value)

    def describe(self) -> str:
        """What is allowed, in words."""
        return "not empty"


@dataclass(frozen=True)
class RunName:
    """One folder name of safe characters: letters, digits, ``.``, ``_``, ``-``, not starting with a dot."""

    def allows(self, value) -> bool:
        """True for a safe single path component."""
        return isinstance(value, str) and RUN_NAME_RE.fullmatch(value) is not None

    def describe(self) -> str:
        """What is allowed, in words."""
        return "a folder name of letters, digits, '.', '_' and '-' (at most 128, not starting with '.' or '-'; no '/')"


def split_annotation(annotation) -> tuple[object, list]:
    """The type and the rules of an ``Annotated[type, rule, ...]`` annotation (no rules for a bare type)."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *rules = typing.get_args(annotation)
        return base, rules
    return annotation, []


def type_name(annotation) -> str:
    """How a declared type reads: ``int``, ``bool | str``, ``list``."""
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _allowed_types(annotation) -> tuple[type, ...]:
    """The runtime types a value of ``annotation`` may have (ints are fine floats: papermill types 1 as int)."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        allowed = tuple(typing.get_origin(t) or t for t in typing.get_args(annotation))
    else:
        allowed = (origin or annotation,)
    return allowed + ((int,) if float in allowed else ())


def check_value(name: str, value, annotation) -> None:
    """Raise an error naming ``name``, ``value`` and what is allowed when the value breaks its type or rule."""
    base, rules = split_annotation(annotation)
    allowed = _allowed_types(base)
    if isinstance(value, bool) and bool not in allowed:
        allowed = ()  # bool is an int subclass: a flag given for a number is a mistake
    if not isinstance(value, allowed):
        raise TypeError(
            f"parameter {name}={value!r} is {type(value).__name__}, expected {type_name(base)}; "
            "with papermill use -p for numbers and booleans, -r for raw strings, -y/-f for lists"
        )
    for rule in rules:
        # A rule constrains the value's main type; a bool alongside (resume_from_checkpoint: bool | str) is its own switch.
        if not (isinstance(value, bool) and bool in allowed) and not rule.allows(value):
            raise ValueError(f"parameter {name}={value!r} is not allowed: expected {rule.describe()}")


def unknown_names_message(names: set, known: list[str], origin: str) -> str:
    """What to say of parameter names nobody declared: each with the closest known name, where one is close."""
    guesses = {name: difflib.get_close_matches(str(name), known, n=1) for name in names}
    hints = "; ".join(f"{name!r}: did you mean {close[0]!r}?" for name, close in sorted(guesses.items()) if close)
    return f"{origin}: unknown parameters {sorted(names)}" + (f" ({hints})" if hints else "") + f"; the notebook's parameters are {sorted(known)}"


def numbers_from_text(values: dict, annotations: dict) -> dict:
    """``values`` with numeric parameters given as number-like text made numbers: YAML 1.1 reads ``1e-3`` as a string."""
    converted = dict(values)
    for name, value in values.items():
        allowed = _allowed_types(split_annotation(annotations[name])[0]) if name in annotations else ()
        if isinstance(value, str) and str not in allowed and (float in allowed or int in allowed):
            try:
                number = float(value)
            except ValueError:
                continue  # the check names it with its type
            converted[name] = int(number) if int in allowed and float not in allowed and number.is_integer() else number
    return converted


def check_parameters(values: dict, annotations: dict, ordered_pairs: tuple[tuple[str, str], ...] = ()) -> dict:
    """Check every parameter against its declared type and rule, and each ``(low, high)`` pair's order; return them as a dict.

    Number-like text for a numeric parameter is read as the number first (``numbers_from_text``).
    """
    unknown = set(values) - set(annotations)
    if unknown:
        raise ValueError(unknown_names_message(unknown, list(annotations), "parameters"))
    values = numbers_from_text(values, annotations)
    for name, annotation in annotations.items():
        check_value(name, values[name], annotation)
    for low, high in ordered_pairs:
        if low in values and high in values and values[low] > values[high]:
            raise ValueError(f"parameter {low}={values[low]} is above {high}={values[high]}; the range would be empty")
    return {name: values[name] for name in annotations}


def expand_path(value: str | Path) -> Path:
    """A path parameter as the user meant it: ``~`` expanded, made absolute (relative to the working directory)."""
    return Path(value).expanduser().resolve()
