"""``Section``, which reads one JSON object key by key and reports a bad value or an unknown key
as one line naming the file and the key path, and the small value checks the readers share
(``is_int``, ``is_number``, ``is_seed``, ...)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from src.config.options import SEED_MAX
from src.errors import UserError


class Section:
    """Reads one JSON object, checking each key; reports leftovers as unknown keys."""

    def __init__(self, file: Path, path: str, value: Any):
        self.file = file
        self.path = path
        if not isinstance(value, dict):
            self.fail(path or "config", "must be a JSON object", value)
        self.values = {k: v for k, v in value.items() if not k.startswith("_")}

    def fail(self, key: str, what: str, got: Any = ...) -> None:
        suffix = "" if got is ... else f", got {json.dumps(got)}"
        raise UserError(f"{self.file}: {key} {what}{suffix}")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, default: Any, check: Callable[[Any], bool], what: str) -> Any:
        if name not in self.values:
            return default
        value = self.values.pop(name)
        if not check(value):
            self.fail(self.key(name), what, value)
        return value

    def section(self, name: str) -> Section:
        return Section(self.file, self.key(name), self.values.pop(name, {}))

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        return self.get(name, default, lambda v: v in options, "must be one of " + ", ".join(options))

    def done(self) -> None:
        for name in self.values:
            self.fail(self.key(name), "is not a known key")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


def is_seed(v: Any) -> bool:
    """An integer in ``[0, SEED_MAX]``."""
    return is_int(v) and 0 <= v <= SEED_MAX


def positive_int(v: Any) -> bool:
    return is_int(v) and v >= 1


def int_list(v: Any, minimum: int = 1) -> bool:
    return isinstance(v, list) and all(is_int(x) and x >= minimum for x in v)


def in_open_unit(v: Any) -> bool:
    return is_number(v) and 0 < v < 1
