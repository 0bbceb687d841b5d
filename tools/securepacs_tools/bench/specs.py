"""The benchmark's configurations, described without importing what starts them.

Kept free of heavy imports because ``securepacs.cli.main`` (and so every ``securepacs`` process, the
gateway included) imports the bench command, which needs only these names for its ``--help``.

a  stock Debian Orthanc defaults, plain DICOM (minimal configuration, Nagle on in the server)
b  bare Orthanc, plain DICOM, tuned (``TCP_NODELAY=1`` in its environment)
c  bare Orthanc with its native DICOM TLS (client certificate required), tuned, no plugin
d  the full SecurePACS stack as shipped: clinics -> gateway (mutual TLS) -> Orthanc + plugin (internal TLS)
e  Orthanc native TLS, no plugin, no gateway: (d)'s configuration minus the plugin, clinic CA trusted
f  (d)'s very Orthanc reached directly on its internal TLS port with the gateway's own client
   certificate: Orthanc native TLS with the plugin, no gateway. d/f is the gateway's cost.
g  like f (Orthanc native TLS with the plugin, no gateway) but with the audit trail switched off
   (``SecurePACS.AuditTrail: null``): f/g is what the audit trail costs.
h  d with the explicit plain internal hop (``SECUREPACS_INTERNAL_HOP=plain``): clinics -> gateway (mutual
   TLS) -> Orthanc + plugin over plain loopback DICOM. h/f against Orthanc's native TLS.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigSpec:
    key: str
    name: str
    description: str
    tls: bool
    plugin: bool
    gateway: bool = False


SPECS: dict[str, ConfigSpec] = {
    s.key: s
    for s in (
        ConfigSpec("a", "stock plain", "Debian Orthanc, minimal config (ports + storage), plain DICOM, "
                   "no TCP_NODELAY", tls=False, plugin=False),
        ConfigSpec("b", "bare plain tuned", "bare Orthanc, plain DICOM, TCP_NODELAY=1", tls=False, plugin=False),
        ConfigSpec("c", "bare mTLS", "bare Orthanc, native DICOM TLS, client certificate required, "
                   "TCP_NODELAY=1, no plugin", tls=True, plugin=False),
        ConfigSpec("d", "full stack", "SecurePACS as shipped: gateway (mutual TLS, clinic certificate) -> "
                   "Orthanc + plugin (internal TLS)", tls=True, plugin=True, gateway=True),
        ConfigSpec("e", "full, plugin off", "Orthanc native TLS, no plugin, no gateway: (d)'s configuration "
                   "minus Plugins/PythonScript/SecurePACS, clinic CA trusted, bench AE in DicomModalities",
                   tls=True, plugin=False),
        ConfigSpec("f", "full, no gateway", "(d)'s Orthanc + plugin (same process) reached directly on its "
                   "internal TLS port with the gateway's client certificate: Orthanc native TLS with the "
                   "plugin", tls=True, plugin=True),
        ConfigSpec("g", "full, audit off", "Orthanc native TLS with the plugin, no gateway, audit trail off "
                   "(SecurePACS.AuditTrail null; benchmarks only): (f) without the trail", tls=True, plugin=True),
        ConfigSpec("h", "full stack, plain hop", "(d) with SECUREPACS_INTERNAL_HOP=plain: gateway (mutual TLS, "
                   "clinic certificate) -> Orthanc + plugin over plain loopback DICOM", tls=True, plugin=True,
                   gateway=True),
    )
}

# Configurations that are views of another one's processes (f uses d's Orthanc), and what they need.
SHARES_STACK = {"f": "d"}
