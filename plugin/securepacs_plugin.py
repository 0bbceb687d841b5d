"""Orthanc loads this file (``PythonScript``). It only wires callbacks; the logic lives in ``securepacs``."""

from securepacs import adapter
from securepacs.app import SecurePacsApp

adapter.install_logging()
app = SecurePacsApp(adapter.read_config(), adapter.RestModalityApi(), adapter.orthanc_system)
adapter.register_http_filter(app.filter_http)
adapter.register_json_get("/securepacs/health", app.health)
adapter.register_lifecycle(app.on_started, app.on_stopped)
