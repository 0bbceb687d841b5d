"""The Orthanc plugin: the adapter (the only module that imports ``orthanc``) and the app it wires.

Owns the callbacks Orthanc calls (HTTP filter, C-STORE filter, C-FIND, C-MOVE, REST routes, lifecycle)
and the HTTP policy that decides each request. ``adapter`` feature-detects Orthanc and plugin versions and
hands the app plain callables; ``app`` composes tenancy, access, audit and the web app from them.

May import every library layer below it (webapp, tenancy, audit, access, pki, store, config, dicom, web,
platform, dataset_limits). Imported only by the entry script ``securepacs_plugin.py`` and the ops layer.
"""
