"""An in-process pynetdicom SCP for client tests: records what it receives, answers Q/R from canned data."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

QR_MODELS = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)


@dataclass
class Received:
    sop_class_uid: str
    transfer_syntax: str
    dataset_bytes: bytes
    calling_aet: str
    peer_port: int


@dataclass
class TestSCP:
    """Storage + Q/R SCP. ``fail_uids`` get 0xA700; ``retrieve_files`` feed C-MOVE/C-GET."""

    ssl_context: ssl.SSLContext | None
    ae_title: str = "SECUREPACS"
    fail_uids: set[str] = field(default_factory=set)
    matches: list[Dataset] = field(default_factory=list)
    retrieve_files: list[Path] = field(default_factory=list)
    move_destinations: dict[str, tuple[str, int]] = field(default_factory=dict)
    require_called_aet: bool = False
    store_delay: float = 0.0  # seconds per C-STORE, to make parallel associations observable
    received: dict[str, Received] = field(default_factory=dict)
    identifiers: list[Dataset] = field(default_factory=list)
    port: int = 0

    __test__ = False  # not a pytest test class despite the name

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.ae = AE(ae_title=self.ae_title)
        self.ae.require_called_aet = self.require_called_aet
        self.ae.maximum_pdu_size = 0
        self.ae.add_supported_context(Verification)
        # Like Orthanc, prefer Explicit VR Little Endian when a peer offers several syntaxes (pynetdicom
        # picks in the acceptor's order), so C-GET sends our explicit-VR test files unconverted.
        syntaxes = [ExplicitVRLittleEndian, *(ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRLittleEndian)]
        for cx in StoragePresentationContexts:
            # scu_role/scp_role accept the C-GET requestor's role selection (we send C-STOREs back).
            self.ae.add_supported_context(cx.abstract_syntax, syntaxes, scu_role=True, scp_role=True)
        for model in QR_MODELS:
            self.ae.add_supported_context(model)

    def start(self) -> TestSCP:
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
        ]
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=handlers, ssl_context=self.ssl_context
        )
        self.port = self.server.server_address[1]
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def reset(self) -> None:
        self.received.clear()
        self.identifiers.clear()
        self.fail_uids.clear()
        self.matches.clear()
        self.retrieve_files.clear()
        self.store_delay = 0.0

    def _on_store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        if self.store_delay:
            time.sleep(self.store_delay)
        with self._lock:
            self.received[uid] = Received(
                sop_class_uid=str(event.request.AffectedSOPClassUID),
                transfer_syntax=str(event.context.transfer_syntax),
                dataset_bytes=event.encoded_dataset(include_meta=False),
                calling_aet=event.assoc.requestor.ae_title,
                peer_port=event.assoc.requestor.port,
            )
        return 0xA700 if uid in self.fail_uids else 0x0000

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        self.identifiers.append(event.identifier)
        for match in self.matches:
            yield 0xFF00, match

    def _datasets(self) -> list[Dataset]:
        return [dcmread(p) for p in self.retrieve_files]

    def _on_move(self, event: evt.Event) -> Iterator[object]:
        self.identifiers.append(event.identifier)
        dest = self.move_destinations.get(event.move_destination.strip())
        if dest is None:
            yield None, None
            return
        datasets = self._datasets()
        contexts = [build_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets]
        yield dest[0], dest[1], {"contexts": contexts}
        yield len(datasets)
        for ds in datasets:
            yield 0xFF00, ds

    def _on_get(self, event: evt.Event) -> Iterator[object]:
        self.identifiers.append(event.identifier)
        datasets = self._datasets()
        yield len(datasets)
        for ds in datasets:
            yield 0xFF00, ds
