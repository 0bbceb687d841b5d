"""The SecurePACS DICOM client: echo, store, find, move and get over mutual TLS.

Importable for tests and benchmarks; the command line (``securepacs client ...``) is a thin layer over
these functions in ``securepacs.cli.client_cmd``.

Owns the client side of the DICOM protocols over mutual TLS (pynetdicom).
May import: ``pki``, ``config``, ``dicom``. Imported by ``ops`` and ``cli``.
"""

from securepacs.client.client_tls import TlsConfig, create_context
from securepacs.client.connection import Connection, associate, open_association
from securepacs.client.errors import ClientError, ConnectionFailed, DimseFailed
from securepacs.client.query import build_identifier, dataset_to_dict, find
from securepacs.client.retrieve import RetrieveResult, get, move
from securepacs.client.scu import echo, store
from securepacs.client.summary import FileProblem, StoreSummary

__all__ = [
    "ClientError",
    "Connection",
    "ConnectionFailed",
    "DimseFailed",
    "FileProblem",
    "RetrieveResult",
    "StoreSummary",
    "TlsConfig",
    "associate",
    "build_identifier",
    "create_context",
    "dataset_to_dict",
    "echo",
    "find",
    "get",
    "move",
    "open_association",
    "store",
]
