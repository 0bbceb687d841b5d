"""Errors raised by the DICOM client; their messages are meant to be shown to the user as they are."""

from __future__ import annotations


class ClientError(Exception):
    """A problem with the client's input or configuration (a file, an option value)."""


class ConnectionFailed(ClientError):
    """No usable association: connection, TLS handshake or association negotiation failed."""


class DimseFailed(ClientError):
    """The peer answered a DIMSE request with a failure, or did not answer it."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
