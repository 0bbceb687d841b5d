"""The sequence nesting scanner (CVE-2026-10528): depth per transfer syntax, chunking, bounds, malformed input."""

from __future__ import annotations

import random
import struct
import sys
import tracemalloc
import zlib

import pytest

from securepacs.dataset_limits import nesting, part10
from securepacs.dataset_limits.nesting import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MAX_DEPTH,
    Malformed,
    NestingScanner,
    TooDeep,
    scanner_for,
)
from securepacs_tools import nested_samples

PLAIN = [EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE]
IDS = {"study_uid": "1.2.826.0.1.3680043.10.543.9", "series_uid": "1.2.826.0.1.3680043.10.543.9.1",
       "sop_uid": "1.2.826.0.1.3680043.10.543.9.1.1", "patient_id": "SYNNEST"}


def dataset(depth: int, syntax: str, defined: bool) -> bytes:
    raw = nested_samples.nested_dataset(depth, syntax=syntax if syntax != DEFLATED_EXPLICIT_VR_LE else EXPLICIT_VR_LE,
                                 defined_length=defined)
    if syntax == DEFLATED_EXPLICIT_VR_LE:
        deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        raw = deflater.compress(raw) + deflater.flush()
    return raw


def scan(data: bytes, syntax: str, *, chunk: int | None = None, max_depth: int = MAX_DEPTH) -> int:
    scanner = scanner_for(syntax, max_depth)
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        scanner.feed(data[i : i + step])
    scanner.finish()
    return scanner.deepest


@pytest.mark.parametrize("defined", [False, True], ids=["undefined-length", "defined-length"])
@pytest.mark.parametrize("syntax", [*PLAIN, DEFLATED_EXPLICIT_VR_LE])
def test_the_limit_itself_passes_and_one_more_level_is_refused(syntax: str, defined: bool) -> None:
    assert scan(dataset(MAX_DEPTH, syntax, defined), syntax) == MAX_DEPTH
    with pytest.raises(TooDeep, match=f"deeper than {MAX_DEPTH} levels"):
        scan(dataset(MAX_DEPTH + 1, syntax, defined), syntax)


@pytest.mark.parametrize("defined", [False, True], ids=["undefined-length", "defined-length"])
@pytest.mark.parametrize("syntax", [*PLAIN, DEFLATED_EXPLICIT_VR_LE])
def test_byte_by_byte_and_random_chunks_give_the_same_answer(syntax: str, defined: bool) -> None:
    ok, deep = dataset(6, syntax, defined), dataset(7, syntax, defined)
    assert scan(ok, syntax, chunk=1, max_depth=6) == 6
    with pytest.raises(TooDeep):
        scan(deep, syntax, chunk=1, max_depth=6)
    rng = random.Random(20)
    for _ in range(20):
        scanner = scanner_for(syntax, 6)
        i = 0
        while i < len(ok):
            n = rng.randint(1, 40)
            scanner.feed(memoryview(ok)[i : i + n])
            i += n
        scanner.finish()
        assert scanner.deepest == 6


def test_a_real_file_with_a_few_levels_passes_in_every_syntax() -> None:
    for syntax in PLAIN:
        assert part10.check_file(nested_samples.nested_file(4, syntax=syntax, **IDS)) == 4


def _explicit(tag: int, vr: bytes, value: bytes, little: bool = True) -> bytes:
    o = "<" if little else ">"
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack(o + "HH2s2xI", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return struct.pack(o + "HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _marker(tag: int, length: int, little: bool = True) -> bytes:
    return struct.pack(("<" if little else ">") + "HHI", tag >> 16, tag & 0xFFFF, length)


# A fragment whose bytes look like deeply nested items: they must stay bytes.
_TRAP = nested_samples.nested_dataset(200, syntax=EXPLICIT_VR_LE)


def _pixels(little: bool = True, explicit: bool = True) -> bytes:
    head = (struct.pack(("<" if little else ">") + "HH2s2xI", 0x7FE0, 0x0010, b"OB", 0xFFFFFFFF) if explicit
            else _marker(0x7FE00010, 0xFFFFFFFF))
    return (head + _marker(0xFFFEE000, 0, little) + _marker(0xFFFEE000, len(_TRAP), little) + _TRAP
            + _marker(0xFFFEE0DD, 0, little))


@pytest.mark.parametrize("syntax", PLAIN)
def test_encapsulated_pixel_data_is_one_level_and_its_fragments_are_not_parsed(syntax: str) -> None:
    little, explicit = syntax != EXPLICIT_VR_BE, syntax != IMPLICIT_VR_LE
    data = _pixels(little, explicit)
    assert scan(data, syntax, max_depth=1) == 1
    assert scan(data, syntax, chunk=1, max_depth=1) == 1
    # Inside nested items (an Icon Image Sequence, say), it is one level more than its item.
    nested = nested_samples.nested_dataset(3, syntax=syntax)
    half = len(nested) - 3 * 16  # inside the innermost item: before the 3 closings (two 8-byte markers each)
    assert scan(nested[:half] + data + nested[half:], syntax, max_depth=4) == 4
    with pytest.raises(TooDeep):
        scan(nested[:half] + data + nested[half:], syntax, max_depth=3)


def test_an_undefined_length_un_is_a_sequence_of_implicit_vr_items_even_in_big_endian() -> None:
    inner = nested_samples.nested_dataset(3, syntax=IMPLICIT_VR_LE)
    data = (struct.pack(">HH2s2xI", 0x0009, 0x1010, b"UN", 0xFFFFFFFF) + _marker(0xFFFEE000, 0xFFFFFFFF)
            + inner + _marker(0xFFFEE00D, 0) + _marker(0xFFFEE0DD, 0))
    assert scan(data, EXPLICIT_VR_BE) == 4
    with pytest.raises(TooDeep):
        scan(data, EXPLICIT_VR_BE, max_depth=3)


def test_a_defined_length_un_in_explicit_vr_is_opaque() -> None:
    data = _explicit(0x00091010, b"UN", nested_samples.nested_dataset(100, syntax=IMPLICIT_VR_LE))
    assert scan(data, EXPLICIT_VR_LE) == 0


def test_an_undefined_length_ob_other_than_pixel_data_is_read_as_a_sequence() -> None:
    data = (struct.pack("<HH2s2xI", 0x0009, 0x1010, b"OB", 0xFFFFFFFF) + _marker(0xFFFEE000, 0xFFFFFFFF)
            + nested_samples.nested_dataset(3) + _marker(0xFFFEE00D, 0) + _marker(0xFFFEE0DD, 0))
    assert scan(data, EXPLICIT_VR_LE) == 4


def test_implicit_vr_private_element_holding_items_counts_and_other_values_do_not() -> None:
    inner = nested_samples.nested_dataset(2, syntax=IMPLICIT_VR_LE, defined_length=True)
    item = _marker(0xFFFEE000, len(inner)) + inner
    private_sequence = _marker(0x00091010, len(item)) + item
    assert scan(private_sequence, IMPLICIT_VR_LE) == 3
    # A public non-SQ element whose bytes happen to start like an item: PatientName is a name, not items.
    lookalike = _marker(0x00100010, 8) + _marker(0xFFFEE000, 0)
    assert scan(lookalike, IMPLICIT_VR_LE) == 0


@pytest.mark.parametrize("data, message", [
    (_marker(0xFFFEE000, 0), "where an element belongs"),
    (_explicit(0x0040A730, b"SQ", _explicit(0x00100010, b"PN", b"AB")), "where a sequence item belongs"),
    (_explicit(0x0040A730, b"SQ", _marker(0xFFFEE000, 100)), "longer than its enclosing"),
    (_explicit(0x0040A730, b"SQ", _marker(0xFFFEE000, 0xFFFFFFFF)), "not closed within its enclosing length"),
    (_explicit(0x00100010, b"PN", b"ABCD")[:-1], "ends inside an element"),
    (_explicit(0x00100010, b"PN", b"ABCD")[:5], "ends inside an element"),
    (nested_samples.nested_dataset(3)[:-8], "ends inside 1 open sequence level"),
    (b"\x10\x00\x10\x00p\x01\x02\x00AB", "no valid VR"),
    (_pixels()[:12] + _marker(0xFFFEE000, 0xFFFFFFFF), "defined-length fragments"),
])
def test_structures_that_do_not_add_up_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(Malformed, match=message):
        scan(data, EXPLICIT_VR_LE)


def test_a_broken_deflate_stream_is_refused() -> None:
    with pytest.raises(Malformed, match="deflate"):
        scan(b"\xff" * 64, DEFLATED_EXPLICIT_VR_LE)
    with pytest.raises(Malformed, match="ends inside its deflate stream"):
        scan(dataset(3, DEFLATED_EXPLICIT_VR_LE, False)[:-4], DEFLATED_EXPLICIT_VR_LE)


@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LE, IMPLICIT_VR_LE, DEFLATED_EXPLICIT_VR_LE])
def test_the_200000_level_object_is_refused_in_bounded_memory_without_recursion(syntax: str) -> None:
    if syntax == DEFLATED_EXPLICIT_VR_LE:
        data = dataset(200_000, syntax, False)
    else:
        data = nested_samples.nested_file(200_000, syntax=syntax, **IDS)
    assert len(data) > (10_000 if syntax == DEFLATED_EXPLICIT_VR_LE else 5_000_000)
    old = sys.getrecursionlimit()
    tracemalloc.start()
    sys.setrecursionlimit(len(_stack()) + 60)  # a recursive reader would die within the first levels
    try:
        with pytest.raises(TooDeep):
            if syntax == DEFLATED_EXPLICIT_VR_LE:
                scan(data, syntax, chunk=16384)
            else:
                part10.check_file(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        sys.setrecursionlimit(old)
        tracemalloc.stop()
    # The input is not copied whole and the open levels are capped at the limit: well under 1 MB.
    assert peak < 1_000_000, peak


def _stack() -> list[object]:
    frames, frame = [], sys._getframe()
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


def test_the_stack_never_holds_more_than_the_limit() -> None:
    scanner = NestingScanner(explicit=True, max_depth=5)
    with pytest.raises(TooDeep):
        scanner.feed(nested_samples.nested_dataset(1000))
    assert scanner.depth == 5 and len(scanner._stack) <= 2 * 5 + 1


def test_max_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_depth 0"):
        NestingScanner(explicit=True, max_depth=0)


def test_files_without_meta_are_read_the_way_dcmtk_guesses() -> None:
    explicit = nested_samples.nested_dataset(MAX_DEPTH + 1)
    implicit = nested_samples.nested_dataset(MAX_DEPTH + 1, syntax=IMPLICIT_VR_LE)
    for data in (explicit, implicit):
        with pytest.raises(TooDeep):
            part10.check_file(data)
    assert part10.check_file(nested_samples.nested_dataset(3, syntax=IMPLICIT_VR_LE)) == 3


def test_every_other_transfer_syntax_is_explicit_little_endian() -> None:
    jpeg = "1.2.840.10008.1.2.4.50"
    assert isinstance(scanner_for(jpeg), nesting.NestingScanner)
    assert scan(_pixels(), jpeg, max_depth=1) == 1


def test_a_deflated_file_is_inflated_and_checked() -> None:
    assert part10.check_file(nested_samples.nested_file(4, syntax=DEFLATED_EXPLICIT_VR_LE, **IDS)) == 4
    deep = nested_samples.nested_file(200_000, syntax=DEFLATED_EXPLICIT_VR_LE, **IDS)
    assert len(deep) < 100_000
    with pytest.raises(TooDeep):
        part10.check_file(deep)


def test_a_truncated_file_is_not_refused_for_its_end() -> None:
    data = nested_samples.nested_file(5, **IDS)
    assert part10.check_file(data[:-20]) == 5
    with pytest.raises(TooDeep):
        part10.check_file(nested_samples.nested_file(MAX_DEPTH + 1, **IDS)[:-20])
