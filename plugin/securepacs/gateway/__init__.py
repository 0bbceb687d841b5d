"""The DICOM gateway: a mutual-TLS front door that binds certificates to AE titles before Orthanc sees a byte.

``securepacs gateway`` runs it (``securepacs.gateway.command``); ``run_gateway(config)`` is the entry
point for launchers and ``Gateway`` for tests. Inspectors (C-GET checks) plug into the relay through
``Inspector``/``Action``/``InspectorFactory``.

Owns the listener, the PDU relay, certificate-to-AE binding and the C-GET inspection.
May import: ``tenancy``, ``audit``, ``access``, ``pki``, ``store`` (read-only), ``config``, ``dicom``,
``dataset_limits``. Imported by ``ops`` and ``cli``.
"""

from securepacs.config.gateway_settings import GatewayConfig, GatewayError
from securepacs.gateway.listener import Gateway, run_gateway
from securepacs.gateway.relay import Action, Inspector, InspectorFactory

__all__ = ["Action", "Gateway", "GatewayConfig", "GatewayError", "Inspector", "InspectorFactory", "run_gateway"]
