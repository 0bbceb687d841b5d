"""DICOM status codes used by SecurePACS, named after their PS3.4 / PS3.7 meaning."""

# PS3.7 C.1 (general)
SUCCESS = 0x0000
# PS3.4 B.2.3 (Storage SOP Class)
STORE_REFUSED_OUT_OF_RESOURCES = 0xA700
STORE_ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STORE_ERROR_CANNOT_UNDERSTAND = 0xC000
STORE_WARNING_COERCION_OF_DATA_ELEMENTS = 0xB000
STORE_WARNING_ELEMENTS_DISCARDED = 0xB006
STORE_WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xB007
# PS3.7 C.5 (general failures)
REFUSED_NOT_AUTHORIZED = 0x0124
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
# PS3.4 C.4 (Query/Retrieve)
PENDING = 0xFF00
PENDING_WARNING_OPTIONAL_KEYS_NOT_SUPPORTED = 0xFF01
CANCEL = 0xFE00
FIND_REFUSED_OUT_OF_RESOURCES = 0xA700
MOVE_REFUSED_OUT_OF_RESOURCES_MATCHES = 0xA701
MOVE_REFUSED_OUT_OF_RESOURCES_SUBOPS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
SUBOPS_COMPLETE_WITH_FAILURES = 0xB000

_NAMES: dict[int, str] = {}
for _name, _value in list(globals().items()):
    # Several meanings share one code (0xA700 for C-STORE and C-FIND); the first definition names it.
    if _name.isupper() and isinstance(_value, int):
        _NAMES.setdefault(_value, _name)


def describe(status: int) -> str:
    """Human-readable name for a status code, e.g. ``0xA700 (STORE_REFUSED_OUT_OF_RESOURCES)``."""
    if 0xA000 <= status <= 0xAFFF and status not in _NAMES:
        name = "FAILURE_REFUSED"
    elif 0xC000 <= status <= 0xCFFF and status not in _NAMES:
        name = "FAILURE_UNABLE_TO_PROCESS"
    else:
        name = _NAMES.get(status, "UNKNOWN")
    return f"0x{status:04X} ({name})"
