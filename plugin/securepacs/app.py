"""The plugin's composition root: builds the services from validated configuration.

Knows nothing of the ``orthanc`` module: the adapter hands in what Orthanc provides (modality API,
version probe) and translates Orthanc's callbacks into these plain methods, so all of it is
unit-testable without Orthanc.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from securepacs import __version__, health
from securepacs.http_auth import HTTP_METHODS, HttpAuthenticator
from securepacs.modalities import ModalityApi, ModalitySync
from securepacs.plugin_config import PluginConfig
from securepacs.store import Store

log = logging.getLogger(__name__)


class SecurePacsApp:
    def __init__(
        self, config: PluginConfig, modality_api: ModalityApi, orthanc_system: Callable[[], Mapping[str, Any]]
    ):
        self.config = config
        self.store = Store(config.store_path)
        self.auth = HttpAuthenticator(
            self.store,
            trusted_proxies=config.trusted_proxies,
            client_ip_header=config.client_ip_header,
            cache_seconds=config.auth_cache_seconds,
        )
        self.modalities = ModalitySync(self.store, modality_api)
        self._orthanc_system = orthanc_system

    # -- HTTP ------------------------------------------------------------------------------------------
    def filter_http(self, uri: str, method_code: int, peer_ip: str, headers: Mapping[str, str]) -> bool:
        method = HTTP_METHODS.get(method_code, "OTHER")
        decision = self.auth.authorize(uri, method, peer_ip, headers)
        if not decision.allowed:
            log.info("HTTP %s %r from %r refused: %s", method, uri, decision.client_ip, decision.reason)
        return decision.allowed

    def health(self) -> dict[str, Any]:
        return health.report(
            __version__,
            {
                "orthanc": self._check_orthanc,
                "store": lambda: {"generation": self.store.generation()},
                "dicom-tls": lambda: {"enabled": self.config.dicom_tls},
                "modalities": self._check_modalities,
            },
        )

    def _check_orthanc(self) -> Mapping[str, Any]:
        system = self._orthanc_system()
        return {"version": system.get("Version"), "dicomAet": system.get("DicomAet")}

    def _check_modalities(self) -> Mapping[str, Any]:
        if self.modalities.last_error or not self.modalities.synced:
            return {"status": "error" if self.modalities.last_error else "starting"}
        return {"status": "ok"}

    # -- lifecycle -------------------------------------------------------------------------------------
    def on_started(self) -> None:
        self.modalities.sync()
        self.modalities.start(self.config.modality_sync_seconds)
        log.info("SecurePACS plugin %s ready", __version__)

    def on_stopped(self) -> None:
        self.modalities.stop()
        self.store.close()
