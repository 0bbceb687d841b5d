"""Orthanc loads this file (``PythonScript``). It only wires callbacks; the logic lives in ``securepacs``."""

from securepacs.archive import adapter
from securepacs.archive.app import SecurePacsApp

adapter.install_logging()
app = SecurePacsApp(adapter.read_config(), adapter.RestApi(), adapter.RestModalityApi(), adapter.orthanc_system,
                    platform_versions=adapter.platform_versions)
adapter.register_http_filter(app.filter_http)
adapter.register_json_get("/securepacs/health", app.health)
adapter.register_cstore_filter(app.on_cstore)
adapter.register_stored_instance(app.on_stored)
adapter.register_find(app.on_find)
adapter.register_move(app.start_move)
for pattern, handler in app.routes():
    adapter.register_route(pattern, handler)
adapter.register_lifecycle(app.on_started, app.on_stopped)
