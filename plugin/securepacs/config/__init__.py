"""Configuration: the plugin's Orthanc JSON keys, the gateway's settings and the environment of a deployment.

Owns each key's declaration (type, default, the error that names it) and the argparse converters the
commands share. Read once at start and validated there; the rest of the code gets typed values passed in.

May import: nothing of ours but ``dicom``. Imported by every layer above.
"""
