"""HTTP shapes without a server: the Request and Response every route handler takes and returns.

Owns the plain message types (and the Orthanc REST protocol handlers are given), so routes are testable
without Orthanc and the adapter is the only place that translates to and from the plugin's objects.

May import: nothing of ours. Imported by every layer above.
"""
