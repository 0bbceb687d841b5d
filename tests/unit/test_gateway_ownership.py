"""The gateway's ownership client against a scripted HTTP server on loopback: it asks, and fails closed."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from securepacs.gateway.ownership_client import PATH, OwnershipClient

Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


def response(status: int, body: bytes, *, headers: str | None = None) -> Answer:
    async def write(writer: asyncio.StreamWriter) -> None:
        head = headers if headers is not None else f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n"
        writer.write(f"HTTP/1.1 {status} X\r\n{head}\r\n".encode() + body)

    return write


def verdict(allowed: Any, reason: str = "r") -> Answer:
    return response(200, json.dumps({"allowed": allowed, "reason": reason}).encode())


async def ask(answer: Answer | None, *, timeout: float = 2.0,
              keys: dict[str, list[str]] | None = None,
              calling_aet: str = "") -> tuple[bool, list[tuple[str, dict[str, str], bytes]]]:
    """Run one authorize() against a server that answers with ``answer`` (None: nothing listens)."""
    requests: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers["content-length"]))
        requests.append((lines[0], headers, body))
        assert answer is not None
        await answer(writer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    if answer is None:
        server.close()
        await server.wait_closed()
    client = OwnershipClient(port, "gateway", "s3cret:pw", timeout=timeout)
    try:
        allowed = await client.authorize("north", "STUDY", keys or {"StudyInstanceUID": ["1.2.3", "1.2.4"]},
                                         calling_aet)
    finally:
        server.close()
    return allowed, requests


def test_request_follows_the_contract() -> None:
    allowed, [(line, headers, body)] = asyncio.run(ask(verdict(True)))
    assert allowed is True
    assert line == f"POST {PATH} HTTP/1.1"
    assert headers["authorization"] == "Basic " + base64.b64encode(b"gateway:s3cret:pw").decode()
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"clinic": "north", "level": "STUDY",
                                "keys": {"StudyInstanceUID": ["1.2.3", "1.2.4"]}}


def test_the_calling_ae_title_is_sent_for_the_archives_record_and_nothing_else_is() -> None:
    _, [(_, headers, _)] = asyncio.run(ask(verdict(True), calling_aet="NORTH_CT"))
    assert headers["x-securepacs-calling-aet"] == "NORTH_CT"
    for not_an_aet in ("", "A\r\nX-Evil: 1", "SEVENTEEN-CHARS-X", "A\\B"):
        _, [(_, headers, _)] = asyncio.run(ask(verdict(True), calling_aet=not_an_aet))
        assert "x-securepacs-calling-aet" not in headers and "x-evil" not in headers


def test_refusal_is_a_refusal() -> None:
    assert asyncio.run(ask(verdict(False, "a study named by StudyInstanceUID is not the clinic's")))[0] is False


def test_chunked_and_close_delimited_answers_are_read() -> None:
    body = json.dumps({"allowed": True, "reason": "ok"}).encode()
    chunked = f"{len(body[:5]):x}\r\n".encode() + body[:5] + b"\r\n" + f"{len(body[5:]):x}\r\n".encode() + \
        body[5:] + b"\r\n0\r\n\r\n"
    assert asyncio.run(ask(response(200, chunked, headers="Transfer-Encoding: chunked\r\n")))[0] is True
    assert asyncio.run(ask(response(200, body, headers="Connection: close\r\n")))[0] is True


async def _hang(_writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(5)


@pytest.mark.parametrize(("answer", "why"), [
    (response(403, b'{"allowed": true}'), "only 200 counts"),
    (response(500, b""), "server error"),
    (verdict("true"), "a string is not a boolean"),
    (verdict(1), "a number is not a boolean"),
    (response(200, b'[true]'), "not an object"),
    (response(200, b'{"reason": "x"}'), "no verdict"),
    (response(200, b"allowed"), "not JSON"),
    (response(200, b'{"allowed": true}', headers="Content-Length: 99999999\r\n"), "absurd length"),
    (response(200, b'{"allowed": tr'), "truncated"),
    (_hang, "timeout"),
])
def test_every_failure_is_a_refusal(answer: Answer, why: str) -> None:
    assert asyncio.run(ask(answer, timeout=0.3))[0] is False, why


def test_nobody_listening_is_a_refusal() -> None:
    assert asyncio.run(ask(None))[0] is False


def test_oversized_request_is_not_sent() -> None:
    keys = {"SOPInstanceUID": ["1." + "2" * 62] * 40_000}
    allowed, requests = asyncio.run(ask(verdict(True), keys=keys))
    assert allowed is False and requests == []
