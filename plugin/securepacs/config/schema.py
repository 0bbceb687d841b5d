"""Configuration keys, each declared once: its name, default, how a raw value is checked, what it means.

Why: a key read in two places drifts (two defaults, two error texts). Each source of configuration --
the ``SecurePACS`` section of Orthanc's JSON, the ``SECUREPACS_*`` environment of a deployment -- keeps
one table of :class:`Key` objects, reads every value through it once at start, and words the error the
same way: the key, the value given and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Invalid(ValueError):
    """Raised by a check; the message is what was expected ("a TCP port number 1-65535")."""


@dataclass(frozen=True)
class Key(Generic[T]):
    name: str
    default: T
    check: Callable[[Any], T]  # the raw value -> the typed value, or Invalid(expected)
    help: str
    blank_is_default: bool = True  # environment: an empty variable means the default (False: it is checked)

    def read(self, source: Mapping[str, Any]) -> T:
        """The checked value, or the default when ``source`` does not set it. Raises :class:`Invalid`."""
        if self.name not in source:
            return self.default
        return self.check(source[self.name])


def table(*keys: Key[Any]) -> dict[str, Key[Any]]:
    """Keys by name; a name declared twice is a programming error, caught at import."""
    by_name: dict[str, Key[Any]] = {}
    for key in keys:
        if key.name in by_name:
            raise ValueError(f"configuration key {key.name!r} declared twice")
        by_name[key.name] = key
    return by_name


# -- checks for JSON values (Orthanc's configuration) ----------------------------------------------------

def integer(low: int, high: int, unit: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise Invalid(f"an integer {unit} {low}-{high}")
        return value
    return check


def number(low: float, high: float, expected: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
            raise Invalid(expected)
        return float(value)
    return check


def one_of(values: tuple[Any, ...], expected: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in values:
            raise Invalid(expected)
        return value
    return check


def matching(pattern: str, expected: str) -> Callable[[Any], str]:
    compiled = re.compile(pattern)

    def check(value: Any) -> str:
        if not isinstance(value, str) or not compiled.fullmatch(value):
            raise Invalid(expected)
        return value
    return check


def optional(check: Callable[[Any], T]) -> Callable[[Any], T | None]:
    """JSON null (or an absent key with a None default) means "not set"."""
    def optional_check(value: Any) -> T | None:
        return None if value is None else check(value)
    return optional_check


# -- checks for environment strings ----------------------------------------------------------------------

def env_port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise Invalid("a TCP port number 1-65535")
    return port
