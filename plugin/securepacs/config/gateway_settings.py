"""What the gateway needs to run: addresses, credentials, the store, and its limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from securepacs.config.environment import SettingsError, validate_aet

MIB = 1024 * 1024


class GatewayError(Exception):
    """The gateway cannot start: the message names the setting or file and what was expected."""


Address = tuple[str, int]


@dataclass(frozen=True)
class GatewayConfig:
    listen: Address  # public side, e.g. ("", 2762): "" is every interface (IPv4 and IPv6)
    upstream: Address  # Orthanc's internal DICOM TLS port, e.g. ("127.0.0.1", 2763)
    egress_listen: Address | None  # loopback relay for Orthanc's C-MOVE associations; None: no relay
    aet: str  # our called AE title (and Orthanc's calling AE title on the egress relay)
    # public side: clinics present certificates of the clinic CA; we present the archive's server cert
    server_cert: Path
    server_key: Path
    clinic_ca: Path
    crl: Path
    # the hop to and from Orthanc: only the internal CA is trusted there
    internal_ca: Path
    internal_cert: Path
    internal_key: Path
    store_path: Path  # the plugin's SQLite store: clinics, AE titles, revocations
    events_path: Path | None  # JSON lines of connection events
    max_associations: int = 64  # relayed associations at once, all clinics together
    max_per_clinic: int = 16
    max_handshakes: int = 64  # connections still in TLS handshake / waiting for their A-ASSOCIATE-RQ
    handshake_timeout: float = 10.0  # TLS handshake + first PDU; also the upstream connect + answer
    idle_timeout: float = 600.0  # no byte in either direction for this long: the association is aborted
    rate_per_ip: float = 20.0  # new connections per second per source IP (token bucket); 0 disables
    rate_burst: int = 40
    max_pdu: int = 4 * MIB  # largest PDU body accepted from a requestor (the negotiated maximum may be lower)
    max_rq: int = 256 * 1024  # largest A-ASSOCIATE-RQ body (~128 contexts with many transfer syntaxes fit)
    shutdown_grace: float = 30.0  # on SIGTERM, how long running associations may take to finish
    refresh_interval: float = 1.0  # how often the store generation and CRL file are re-checked
    # The hop to and from Orthanc with TLS (default) or plain (SECUREPACS_INTERNAL_HOP=plain, single host).
    internal_tls: bool = True

    def __post_init__(self) -> None:
        try:
            validate_aet(self.aet, "gateway AE title")
        except SettingsError as exc:
            raise GatewayError(str(exc)) from None
        for name in ("listen", "upstream", "egress_listen"):
            value = getattr(self, name)
            if value is None and name == "egress_listen":
                continue
            if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)
                    and isinstance(value[1], int) and 0 <= value[1] <= 65535):
                raise GatewayError(f"gateway {name}={value!r} is invalid: expected (host, TCP port 0-65535)")
        for name in ("max_associations", "max_per_clinic", "max_handshakes", "rate_burst"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GatewayError(f"gateway {name}={value!r} is invalid: expected a whole number >= 1")
        for name in ("handshake_timeout", "idle_timeout", "shutdown_grace", "refresh_interval"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise GatewayError(f"gateway {name}={value!r} is invalid: expected seconds > 0")
        if not isinstance(self.rate_per_ip, int | float) or self.rate_per_ip < 0:
            raise GatewayError(f"gateway rate_per_ip={self.rate_per_ip!r} is invalid: expected connections "
                               "per second >= 0 (0 disables the limit)")
        # PS3.8 needs at least room for a PDV header; more than 64 MiB per PDU is never legitimate here.
        for name, low in (("max_pdu", 4096), ("max_rq", 1024)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 64 * MIB:
                raise GatewayError(f"gateway {name}={value!r} is invalid: expected bytes {low}-{64 * MIB}")
