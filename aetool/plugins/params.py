"""Typed parameters of plugin things (noises, models) and specs like `NAME:param=value,...`.

A `Param` has a name, a type (float, int, bool or str), a default, bounds or choices, and a
one-line help; it parses command-line text and checks values (finite numbers only). A spec is
`NAME` or `NAME:param=value,...`; `split_spec` cuts it into the name and its `(param, text)`
pairs, each kind then reads the values with its own parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aetool.errors import AetoolError

PARAM_TYPES = (float, int, bool, str)
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


@dataclass(frozen=True)
class Param:
    """One typed parameter of a plugin's thing (a noise, a model), with its default, bounds
    and a one-line description."""

    name: str
    type: type  # float, int, bool or str
    default: Any
    help: str = ""
    choices: tuple[str, ...] | None = None  # allowed values of a str parameter
    minimum: float | None = None  # inclusive bounds of a number
    maximum: float | None = None

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise TypeError(f"Param {self.name!r}: type must be float, int, bool or str.")

    def parse(self, text: str) -> Any:
        """A command-line value (text) turned into this parameter's type, or an AetoolError."""
        text = text.strip()
        try:
            if self.type is bool:
                if text.lower() not in _TRUE + _FALSE:
                    raise ValueError
                value: Any = text.lower() in _TRUE
            else:
                value = self.type(text)
        except ValueError:
            raise AetoolError(
                f"{self.name} must be {_type_name(self.type)}, got {text!r}."
            ) from None
        return self.check(value)

    def check(self, value: Any) -> Any:
        """`value` if it is allowed (ints are accepted for floats), else an AetoolError."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise AetoolError(f"{self.name} must be {_type_name(self.type)}, got {value!r}.")
        if self.type is float and not math.isfinite(value):
            raise AetoolError(f"{self.name} must be a finite number, got {value!r}.")
        if self.choices is not None and value not in self.choices:
            raise AetoolError(f"{self.name} must be one of {', '.join(self.choices)}; "
                              f"got {value!r}.")
        if self.minimum is not None and value < self.minimum:
            raise AetoolError(f"{self.name} must be at least {self.minimum:g}, got {value!r}.")
        if self.maximum is not None and value > self.maximum:
            raise AetoolError(f"{self.name} must be at most {self.maximum:g}, got {value!r}.")
        return value

    def describe(self) -> str:
        """`sigma: float = 0.5`, with the choices of a str parameter."""
        kind = "|".join(self.choices) if self.choices else self.type.__name__
        return f"{self.name}: {kind} = {format_value(self.default)}"


def _type_name(kind: type) -> str:
    return {float: "a number", int: "a whole number", bool: "true or false",
            str: "text"}[kind]


def format_value(value: Any, exact: bool = False) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value) if exact else f"{value:g}"
    return str(value)


class WithParams:
    """What plugin things with typed parameters share (a `Noise`, a `Model`): looking a
    parameter up by name, and the defaults. Subclasses have `name` and `params` fields."""

    kind = "plugin item"  # how messages call it: "noise", "model"
    name: str
    params: tuple[Param, ...]

    def param(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        known = ", ".join(p.name for p in self.params) or "none"
        raise AetoolError(f"{self.kind.capitalize()} {self.name!r} has no parameter {name!r}; "
                          f"its parameters are: {known}.")

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


def spec_of(name: str, values: dict[str, Any]) -> str:
    """The spec that rebuilds a thing with exactly these values: `NAME:a=1,b=x`."""
    if not values:
        return name
    return f"{name}:" + ",".join(f"{k}={format_value(v, exact=True)}" for k, v in values.items())


def split_spec(spec: str, what: str) -> tuple[str, list[tuple[str, str]]]:
    """`NAME:a=1,b=x` -> ("NAME", [("a", "1"), ("b", "x")]); `what` names the kind in errors.
    A key given twice is an error."""
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise AetoolError(f"Empty {what} name in {spec!r}; write NAME or NAME:param=value,....")
    pairs: list[tuple[str, str]] = []
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not key or not value.strip():
            raise AetoolError(f"Cannot read {item!r} in {what} {spec!r}; write param=value.")
        if any(key == k for k, _ in pairs):
            raise AetoolError(f"Parameter {key!r} is given twice in {what} {spec!r}.")
        pairs.append((key, value.strip()))
    return name, pairs
