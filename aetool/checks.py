"""Checks of the JSON files aetool reads back from a workspace (metrics, history, noise tables,
embeddings, search results): every value the commands use has the type they expect, so a
damaged or hand-edited file is one sentence naming it (`RunError`), never a traceback.

A field spec maps a key to a kind: `int` (a whole number of at least 0), `count` (at least 1),
`number` (a finite number), `seconds` (a finite number of at least 0), `real` (a number, or
one that is not finite: JSON's null, NaN, Infinity, or the strings "nan", "inf" and "-inf"
that `aetool.files.jsonable` writes for them; read back as a float), `loss` (a `real` that
is not negative), `str`, `bool`, `dict`, `list`, `scalars` (an object of strings, numbers,
booleans and nulls). A kind ending in `?` also takes null. Missing keys are allowed (files of
older versions hold fewer), unless named in `required`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from aetool.errors import RunError

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "infinity": math.inf,
               "+infinity": math.inf}


def shown(value: Any, limit: int = 40) -> str:
    """A short `repr` of a value read from a file, for a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def kind_of(value: Any) -> str:
    """What a JSON value is, in words."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "true or false",
             type(None): "null", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _real_value(value: Any) -> float | None:
    """A number as a float (NaN or infinite allowed, as null or a string too), or None when
    it is not one."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        text = value.strip().lower()
        negative = text.startswith("-") and text[1:] in _NON_FINITE
        return -_NON_FINITE[text[1:]] if negative else _NON_FINITE.get(text)
    if _real(value):
        try:
            return float(value)
        except OverflowError:  # a whole number too large for a float
            return math.inf if value > 0 else -math.inf
    return None


def _loss(value: Any) -> float | None:
    """A loss as a float (NaN or infinite allowed), or None when it is not one."""
    number = _real_value(value)
    return number if number is not None and (math.isnan(number) or number >= 0) else None


def _scalars(value: Any) -> bool:
    return isinstance(value, dict) and all(
        v is None or isinstance(v, (str, bool)) or _real(v) for v in value.values())


_RULES: dict[str, tuple[Any, str]] = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "a whole number of at least 0"),
    "count": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
              "a whole number of at least 1"),
    "number": (lambda v: _real(v) and math.isfinite(v), "a finite number"),
    "seconds": (lambda v: _real(v) and math.isfinite(v) and v >= 0,
                "a finite number of at least 0"),
    "loss": (lambda v: _loss(v) is not None, "a number of at least 0 (or null for not a "
                                             "number)"),
    "real": (lambda v: _real_value(v) is not None, "a number (or null for not a number)"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "dict": (lambda v: isinstance(v, dict), "a JSON object"),
    "list": (lambda v: isinstance(v, list), "a JSON list"),
    "scalars": (_scalars, "a JSON object of plain values"),
}


def check_value(where: str, value: Any, kind: str) -> Any:
    """`value` if it is of `kind` (a `loss` as a float), else a `RunError` naming `where`."""
    nullable = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None and nullable:
        return None
    test, words = _RULES[kind]
    if not test(value):
        words += " or null" if nullable and kind not in ("loss", "real") else ""
        raise RunError(f"{where} must be {words}, got {shown(value)}.")
    if kind in ("loss", "real"):
        return _loss(value) if kind == "loss" else _real_value(value)
    return value


def check_object(path: Path | str, obj: Any, fields: dict[str, str],
                 required: tuple[str, ...] = (), what: str | None = None) -> dict[str, Any]:
    """A copy of the JSON object `obj` read from `path` with every field of `fields` checked
    (and losses as floats); `what` names it when it is an entry of a list in the file."""
    where = f"{path}: {what}" if what else str(path)
    if not isinstance(obj, dict):
        raise RunError(f"{where} must hold a JSON object, got {kind_of(obj)}."
                       if what is None else f"{where} must be a JSON object, got "
                       f"{kind_of(obj)}.")
    checked = dict(obj)
    for key in required:
        if key not in obj:
            raise RunError(f"{where} has no {key!r}.")
    for key, kind in fields.items():
        if key in obj:
            label = f"{what} {key!r}" if what else repr(key)
            checked[key] = check_value(f"{path}: {label}", obj[key], kind)
    return checked


def check_list(path: Path | str, items: Any, fields: dict[str, str], entry: str = "entry",
               required: tuple[str, ...] = (), key: str | None = None) -> list[dict[str, Any]]:
    """Each object of the JSON list `items` checked (`check_object`); `key` names the list
    when it is a field of the file rather than the whole file."""
    if not isinstance(items, list):
        where = f"{path}: {key!r}" if key else str(path)
        verb = "be" if key else "hold"
        raise RunError(f"{where} must {verb} a JSON list, got {kind_of(items)}.")
    prefix = f"{key!r}, " if key else ""
    return [check_object(path, item, fields, required, f"{prefix}{entry} {i + 1}")
            for i, item in enumerate(items)]


# --------------------------------------------------------------------------- search results

SEARCH_FIELDS = {"eds": "dict", "grid": "dict?", "missing": "list?", "complete": "bool?"}
GRID_FIELDS = {"lr": "list?", "weight_decay": "list?", "model": "str?"}
SETTING_FIELDS = {"lr": "number?", "weight_decay": "number?", "val_mean": "loss",
                  "val_std": "loss", "train_mean": "loss", "gap": "real", "oscillation": "loss",
                  "kept": "bool", "reason": "str?", "fold_val": "list?", "fold_train": "list?",
                  "curves": "dict?"}
BEST_FIELDS = {"lr": "number?", "weight_decay": "number?", "val_mean": "loss", "val_std": "loss"}


def check_search_results(path: Path | str, results: Any) -> dict[str, Any]:
    """The content of `search/results.json` with every value the report and `fit
    --from-search` use checked (`RunError` naming the file and the value otherwise)."""
    results = check_object(path, results, SEARCH_FIELDS, required=("eds",))
    if results.get("grid") is not None:
        results["grid"] = check_object(path, results["grid"], GRID_FIELDS, what="'grid'")
        for key in ("lr", "weight_decay"):
            for i, value in enumerate(results["grid"].get(key) or []):
                check_value(f"{path}: 'grid' {key!r} {i + 1}", value, "number?")
    eds = {}
    for ed, entry in results["eds"].items():
        if entry is not None:
            entry = check_object(path, entry, {"settings": "list?", "best": "dict?"},
                                 what=f"ED {ed}")
            entry["settings"] = [
                check_object(path, s, SETTING_FIELDS, what=f"ED {ed} setting {i + 1}")
                for i, s in enumerate(entry.get("settings") or [])]
            if entry.get("best") is not None:
                entry["best"] = check_object(path, entry["best"], BEST_FIELDS,
                                             what=f"ED {ed} best setting")
        eds[ed] = entry
    results["eds"] = eds
    return results


def check_best(path: Path | str, ed: int, best: dict[str, Any]) -> dict[str, float]:
    """The learning rate and weight decay of a search's best setting, as `fit --from-search`
    uses them: a positive learning rate and a weight decay of at least 0."""
    lr, wd = best.get("lr"), best.get("weight_decay")
    if not (_real(lr) and math.isfinite(lr) and lr > 0 and _real(wd) and math.isfinite(wd)
            and wd >= 0):
        raise RunError(f"{path}: the best setting for ED {ed} must have a positive 'lr' and a "
                       f"'weight_decay' of at least 0, got {shown(lr)} and {shown(wd)}.")
    return {"lr": float(lr), "weight_decay": float(wd)}
