"""Plain HTTP request/response values for the plugin's own routes (no ``orthanc`` import)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    uri: str
    groups: tuple[str, ...]  # the route pattern's regex groups
    headers: Mapping[str, str]  # lower-case names
    get: Mapping[str, str]
    body: bytes
    client_ip: str = ""


@dataclass
class Response:
    status: int = 200
    body: bytes | str = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(value, indent=2), "application/json", dict(headers or {}))

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls.json({"error": message}, status)
