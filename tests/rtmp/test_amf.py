"""Tests for the AMF0/AMF3 codec: hand-built vectors, round trips, fuzzing and bombs."""

from __future__ import annotations

import contextlib
import enum
import math
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mediaserver.rtmp.amf import (
    DEFAULT_LIMITS,
    UNDEFINED,
    AMFDate,
    AMFError,
    AMFLimits,
    ECMAArray,
    TypedObject,
    Undefined,
    decode_amf0,
    decode_amf3_command,
    encode_amf0,
)

# -- helpers that lay bytes out by hand (independent of the encoder under test)


def num(x: float) -> bytes:
    return b"\x00" + struct.pack(">d", x)


def s(text: str) -> bytes:
    raw = text.encode()
    return b"\x02" + struct.pack(">H", len(raw)) + raw


def key(name: str) -> bytes:
    raw = name.encode()
    return struct.pack(">H", len(raw)) + raw


END = b"\x00\x00\x09"


def s3(text: str) -> bytes:
    """An inline AMF3 string body (no marker), for short strings only."""
    raw = text.encode()
    assert len(raw) < 64  # a one-byte U29 header
    return bytes([len(raw) << 1 | 1]) + raw


def same(a: Any, b: Any) -> bool:
    """Equality that also insists on the container types (ECMAArray vs dict)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# -- encoding: exact vectors


def test_encode_connect_vector() -> None:
    expected = (
        b"\x02\x00\x07connect"
        + b"\x00\x3f\xf0\x00\x00\x00\x00\x00\x00"
        + b"\x03"
        + b"\x00\x03app"
        + b"\x02\x00\x04live"
        + b"\x00\x00\x09"
    )
    assert encode_amf0("connect", 1.0, {"app": "live"}) == expected


def test_encode_scalars() -> None:
    assert encode_amf0(True, False) == b"\x01\x01\x01\x00"
    assert encode_amf0(None, UNDEFINED) == b"\x05\x06"
    assert encode_amf0(3) == num(3.0)  # ints are Numbers
    assert encode_amf0(-0.5) == num(-0.5)
    assert encode_amf0("") == b"\x02\x00\x00"
    assert encode_amf0("é") == b"\x02\x00\x02\xc3\xa9"  # length in UTF-8 bytes
    assert encode_amf0() == b""


def test_encode_string_boundary() -> None:
    short = "a" * 0xFFFF
    assert encode_amf0(short)[:3] == b"\x02\xff\xff"
    long = "a" * 0x10000
    data = encode_amf0(long)
    assert data[:5] == b"\x0c\x00\x01\x00\x00"
    assert len(data) == 5 + 0x10000


def test_encode_containers() -> None:
    assert encode_amf0([1, "a"]) == b"\x0a\x00\x00\x00\x02" + num(1.0) + s("a")
    assert encode_amf0(("x",)) == b"\x0a\x00\x00\x00\x01" + s("x")
    assert encode_amf0(ECMAArray(w=2)) == (b"\x08\x00\x00\x00\x01" + key("w") + num(2.0) + END)
    assert encode_amf0(TypedObject("Foo", {"a": None})) == (b"\x10\x00\x03Foo" + key("a") + b"\x05" + END)
    assert encode_amf0(AMFDate(1.5, -60)) == b"\x0b" + struct.pack(">dh", 1.5, -60)
    assert encode_amf0({}) == b"\x03" + END


def test_encode_subclasses() -> None:
    class Level(enum.IntEnum):
        ONE = 1

    class Code(str, enum.Enum):  # noqa: UP042 - __str__ differs from the value
        OK = "ok"

    class Name(enum.StrEnum):
        A = "a"

    assert encode_amf0(Level.ONE) == num(1.0)
    assert encode_amf0(Code.OK) == s("ok")
    assert encode_amf0(Name.A) == s("a")


def test_encode_rejects() -> None:
    for bad in (b"bytes", {1, 2}, object(), 1j):
        with pytest.raises(TypeError):
            encode_amf0(bad)
    with pytest.raises(TypeError):
        encode_amf0({1: "non-str key"})
    with pytest.raises(ValueError):
        encode_amf0(10**400)
    with pytest.raises(ValueError):
        encode_amf0(AMFDate(0.0, 40000))
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError):
        encode_amf0(cyclic)


# -- AMF0 decoding: hand-built vectors


def test_decode_connect_vector() -> None:
    body = s("connect") + num(1.0) + b"\x03" + key("app") + s("live") + END
    assert decode_amf0(body) == ["connect", 1.0, {"app": "live"}]


def _metadata_body(with_end: bool, count: int = 7) -> bytes:
    entries = (
        key("duration")
        + num(0.0)
        + key("width")
        + num(1280.0)
        + key("height")
        + num(720.0)
        + key("videocodecid")
        + num(7.0)
        + key("encoder")
        + s("Lavf58.29.100")
        + key("stereo")
        + b"\x01\x01"
        + key("filesize")
        + num(0.0)
    )
    return (
        s("@setDataFrame") + s("onMetaData") + b"\x08" + struct.pack(">I", count) + entries + (END if with_end else b"")
    )


def test_decode_set_data_frame() -> None:
    values = decode_amf0(_metadata_body(with_end=True))
    assert values[:2] == ["@setDataFrame", "onMetaData"]
    meta = values[2]
    assert type(meta) is ECMAArray
    assert meta == {
        "duration": 0.0,
        "width": 1280.0,
        "height": 720.0,
        "videocodecid": 7.0,
        "encoder": "Lavf58.29.100",
        "stereo": True,
        "filesize": 0.0,
    }
    assert list(meta) == [
        "duration",
        "width",
        "height",
        "videocodecid",
        "encoder",
        "stereo",
        "filesize",
    ]


def test_decode_missing_end_marker_at_end_of_buffer() -> None:
    values = decode_amf0(_metadata_body(with_end=False))
    assert values[2]["filesize"] == 0.0
    # Nested object and outer object both cut at the end of the buffer.
    nested = b"\x03" + key("a") + b"\x03" + key("b") + num(1.0)
    assert decode_amf0(nested) == [{"a": {"b": 1.0}}]


def test_ecma_count_is_only_a_hint() -> None:
    assert decode_amf0(_metadata_body(with_end=True, count=0))[2]["width"] == 1280.0
    hinted = b"\x08\xff\xff\xff\xff" + key("a") + num(1.0) + END
    assert decode_amf0(hinted) == [{"a": 1.0}]


@pytest.mark.parametrize(
    "body",
    [
        num(1.0)[:5],  # number cut short
        b"\x02\x00\x05abc",  # string cut short
        b"\x01",  # boolean without its byte
        b"\x0a\x00\x00\x00\x02" + num(1.0),  # strict array missing an element
        b"\x03" + key("a"),  # property name without a value
        b"\x03" + key("a") + num(1.0)[:3],  # property value cut short
        b"\x03" + key("a") + num(1.0) + b"\x00",  # one stray byte of a name length
        b"\x03" + key("a") + num(1.0) + b"\x00\x00",  # end marker cut short
        b"\x0b" + struct.pack(">d", 0.0),  # date without timezone
        b"\x10\x00\x05Fo",  # typed object class name cut short
        b"\x07\x00",  # reference index cut short
        b"\x11",  # avmplus switch with nothing after it
    ],
)
def test_truncated_values_are_rejected(body: bytes) -> None:
    with pytest.raises(AMFError):
        decode_amf0(body)


@pytest.mark.parametrize("marker", [0x04, 0x09, 0x0E, 0x12, 0xFF])
def test_bad_markers(marker: int) -> None:
    with pytest.raises(AMFError):
        decode_amf0(bytes([marker]) + b"\x00" * 16)


def test_decode_other_types() -> None:
    body = (
        b"\x05\x06\x0d"
        + b"\x01\x00"
        + b"\x01\x02"  # any non-zero byte is true
        + b"\x0b"
        + struct.pack(">dh", 1234.0, 0)
        + b"\x0c\x00\x00\x00\x02hi"
        + b"\x0f\x00\x00\x00\x07<a>b</a"
        + b"\x10\x00\x03Foo"
        + key("x")
        + num(2.0)
        + END
    )
    assert decode_amf0(body) == [
        None,
        UNDEFINED,
        None,
        False,
        True,
        AMFDate(1234.0, 0),
        "hi",
        "<a>b</a",
        TypedObject("Foo", {"x": 2.0}),
    ]
    assert decode_amf0(b"\x06")[0] is UNDEFINED
    assert decode_amf0(b"") == []


def test_decode_accepts_buffer_types() -> None:
    body = s("x") + num(2.0)
    for data in (bytearray(body), memoryview(body), memoryview(b"??" + body)[2:]):
        assert decode_amf0(data) == ["x", 2.0]
    # A bytearray passed in can be resized afterwards (no export left behind),
    # after a successful decode and after a failed one.
    buf = bytearray(body)
    decode_amf0(buf)
    buf.extend(b"\x05")
    bad = bytearray(b"\x02\x00\x09abc")
    with pytest.raises(AMFError):
        decode_amf0(bad)
    bad.extend(b"defghi")
    assert decode_amf0(bad) == ["abcdefghi"]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert decode_amf0(b"\x02\x00\x02\xc3\x28") == ["\ufffd("]
    assert decode_amf0(b"\x03\x00\x01\xff" + num(1.0) + END) == [{"\ufffd": 1.0}]


def test_amf0_references() -> None:
    # Table: the strict array is entry 0, the object entry 1.
    obj = b"\x03" + key("a") + num(1.0) + END
    body = b"\x0a\x00\x00\x00\x02" + obj + b"\x07\x00\x01"
    [pair] = decode_amf0(body)
    assert pair == [{"a": 1.0}, {"a": 1.0}]
    assert pair[0] is pair[1]
    # The table spans the whole call: a later top-level value may point back.
    assert decode_amf0(obj + b"\x07\x00\x00") == [{"a": 1.0}, {"a": 1.0}]


def test_amf0_bad_references() -> None:
    with pytest.raises(AMFError):
        decode_amf0(b"\x07\x00\x00")  # empty table
    with pytest.raises(AMFError):
        decode_amf0(b"\x03" + END + b"\x07\x00\x01")  # past the end of the table
    with pytest.raises(AMFError):  # an object that contains itself
        decode_amf0(b"\x03" + key("self") + b"\x07\x00\x00" + END)


# -- AMF3 through type 17 and the avmplus switch


def test_type17_body_with_format_byte() -> None:
    amf0_part = s("connect") + num(1.0) + b"\x03" + key("app") + s("live") + END
    assert decode_amf3_command(b"\x00" + amf0_part) == ["connect", 1.0, {"app": "live"}]
    assert decode_amf3_command(amf0_part) == ["connect", 1.0, {"app": "live"}]
    assert decode_amf3_command(b"") == []
    assert decode_amf3_command(b"\x00") == []


def test_type17_body_with_amf3_values() -> None:
    body = (
        b"\x00"
        + b"\x11\x06"
        + s3("connect")
        + num(1.0)
        # anonymous dynamic object: inline, inline traits, dynamic, 0 sealed
        + b"\x11\x0a\x0b\x01"
        + s3("app")
        + b"\x06"
        + s3("live")
        + b"\x01"
    )
    assert decode_amf3_command(body) == ["connect", 1.0, {"app": "live"}]


def test_amf3_object_sealed_and_dynamic_with_string_refs() -> None:
    body = (
        b"\x11\x0a"
        + bytes([0x01 | 0x02 | 0x08 | (2 << 4)])  # inline, inline traits, dynamic, 2 sealed
        + b"\x01"  # class name "" (anonymous)
        + s3("a")  # string table 0
        + s3("b")  # string table 1
        + b"\x04\x05"  # a = 5
        + b"\x06"
        + s3("hey")  # b = "hey", string table 2
        + s3("c")  # dynamic member "c", string table 3
        + b"\x06\x04"  # value: string reference 2 -> "hey"
        + b"\x02"  # dynamic member name: string reference 1 -> "b" (overrides)
        + b"\x03"  # true
        + b"\x01"  # end of dynamic members
    )
    assert decode_amf0(body) == [{"a": 5, "b": True, "c": "hey"}]


def test_amf3_typed_objects_traits_and_object_refs() -> None:
    body = (
        b"\x11\x09\x07\x01"  # array: 3 dense items, no associative part (object 0)
        + b"\x0a\x13"  # inline object, inline traits, sealed, 1 member (object 1)
        + s3("flex.Foo")
        + s3("x")
        + b"\x04\x01"
        + b"\x0a\x01"  # inline object, traits reference 0 (object 2)
        + b"\x04\x02"
        + b"\x0a\x02"  # object reference 1
    )
    [items] = decode_amf0(body)
    assert items == [
        TypedObject("flex.Foo", {"x": 1}),
        TypedObject("flex.Foo", {"x": 2}),
        TypedObject("flex.Foo", {"x": 1}),
    ]
    assert items[2] is items[0]


def test_amf3_scalars() -> None:
    body = (
        b"\x11\x00"
        + b"\x11\x01"
        + b"\x11\x02"
        + b"\x11\x03"
        + b"\x11\x04\x7f"  # 127
        + b"\x11\x04\x81\x00"  # 128
        + b"\x11\x04\xbf\xff\xff\xff"  # 2**28 - 1, the largest positive
        + b"\x11\x04\xc0\x80\x80\x00"  # -2**28, the smallest
        + b"\x11\x04\xff\xff\xff\xff"  # -1
        + b"\x11\x05"
        + struct.pack(">d", 2.5)
        + b"\x11\x06\x01"  # empty string
        + b"\x11\x08\x01"
        + struct.pack(">d", 86400000.0)
        + b"\x11\x0c\x07abc"
        + b"\x11\x0b\x07<x/"
        + b"\x11\x07\x03y"
    )
    assert decode_amf0(body) == [
        UNDEFINED,
        None,
        False,
        True,
        127,
        128,
        2**28 - 1,
        -(2**28),
        -1,
        2.5,
        "",
        AMFDate(86400000.0),
        b"abc",
        "<x/",
        "y",
    ]


def test_amf3_empty_string_is_not_in_table() -> None:
    with pytest.raises(AMFError):
        decode_amf0(b"\x11\x06\x01" + b"\x11\x06\x00")
    assert decode_amf0(b"\x11\x06\x01" + b"\x11\x06\x03z" + b"\x11\x06\x00") == [
        "",
        "z",
        "z",
    ]


def test_amf3_mixed_array_and_leaf_refs() -> None:
    body = (
        b"\x11\x09\x05"  # 2 dense items (object 0)
        + s3("k")
        + b"\x06"
        + s3("v")
        + b"\x01"
        + b"\x0c\x05hi"  # bytearray (object 1)
        + b"\x0c\x02"  # reference to object 1
    )
    assert decode_amf0(body) == [{"k": "v", "0": b"hi", "1": b"hi"}]


@pytest.mark.parametrize(
    "body",
    [
        b"\x11\x0a\x07" + s3("Ext"),  # externalizable
        b"\x11\x0a\x05",  # traits reference to an empty table
        b"\x11\x0a\x00",  # object reference to an empty table
        b"\x11\x09\x03\x01\x09\x00",  # array containing itself
        b"\x11\x06\x02",  # string reference out of range
        b"\x11\x0d\x01",  # vector
        b"\x11\x11\x01",  # dictionary
        b"\x11\x12",  # unknown
        b"\x11\x04\xff\xff",  # U29 cut short
        b"\x11\x06\x07ab",  # string cut short
        b"\x11\x0a\x0b\x01" + s3("a"),  # dynamic member without a value
    ],
)
def test_amf3_rejects(body: bytes) -> None:
    with pytest.raises(AMFError):
        decode_amf0(body)


# -- round trips


_keys = st.text(max_size=8)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(_keys, children, max_size=5),
        st.dictionaries(_keys, children, max_size=5).map(ECMAArray),
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_values, max_size=4))
def test_round_trip(values: list[Any]) -> None:
    decoded = decode_amf0(encode_amf0(*values))
    assert same(decoded, values)


@given(st.integers(min_value=-(2**53), max_value=2**53))
def test_ints_round_trip_as_floats(n: int) -> None:
    [decoded] = decode_amf0(encode_amf0(n))
    assert type(decoded) is float
    assert decoded == n


def test_round_trip_other_types() -> None:
    values = [
        UNDEFINED,
        TypedObject("Foo", {"a": [1.0, None]}),
        AMFDate(1.0e12, 0),
        "x" * 70000,
        math.inf,
    ]
    assert decode_amf0(encode_amf0(*values)) == values


# -- fuzzing: anything but AMFError is a bug

_TINY = AMFLimits(max_string=8, max_items=4, max_depth=3, max_total_items=20)
# Fragments that look like AMF, so random joins reach deep into the decoder.
_tokens = st.sampled_from(
    [bytes([m]) for m in range(0x12)]
    + [
        b"\x00\x00",
        b"\x00\x01",
        b"\x00\x00\x09",
        b"\x00\x00\x00\x02",
        b"\xff\xff\xff\xff",
        b"a",
        b"\x01",
        b"\x03",
        b"\x80",
        b"\xff",
        b"\xc3\x28",
    ]
)
_fuzz_inputs = st.one_of(
    st.binary(max_size=200),
    st.lists(_tokens, max_size=60).map(b"".join),
)


def _decode_all_ways(data: bytes) -> None:
    for decode in (decode_amf0, decode_amf3_command):
        for limits in (DEFAULT_LIMITS, _TINY):
            with contextlib.suppress(AMFError):  # any other exception fails the test
                decode(data, limits)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fuzz_inputs)
def test_fuzz_only_amf_error(data: bytes) -> None:
    _decode_all_ways(data)
    _decode_all_ways(b"\x11" + data)  # force the AMF3 paths


@settings(max_examples=300, deadline=None)
@given(_values, st.data())
def test_fuzz_mutated_valid_input(value: Any, data: st.DataObject) -> None:
    encoded = bytearray(encode_amf0(value))
    if encoded:
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(encoded) - 1))
            encoded[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    _decode_all_ways(bytes(encoded[:cut]))
    _decode_all_ways(bytes(encoded))


# -- bombs and limits


@contextlib.contextmanager
def _fast(seconds: float) -> Iterator[None]:
    """Fails the test if the block takes longer than `seconds`."""
    start = time.perf_counter()
    yield
    assert time.perf_counter() - start < seconds


def test_strict_array_declaring_4g_items_is_refused_fast() -> None:
    body = b"\x0a\xff\xff\xff\xff" + b"\x05" * 16
    with _fast(0.05), pytest.raises(AMFError):
        decode_amf0(body)
    # Even with max_items lifted, the count cannot exceed the bytes that remain.
    with _fast(0.05), pytest.raises(AMFError):
        decode_amf0(body, AMFLimits(max_items=2**32, max_total_items=2**33))
    with _fast(0.05), pytest.raises(AMFError):
        decode_amf0(b"\x11\x09\xff\xff\xff\xff" + b"\x01" * 16)  # AMF3 dense count


def test_long_string_declaring_4gib_is_refused() -> None:
    for body in (
        b"\x0c\xff\xff\xff\xffabc",
        b"\x0f\xff\xff\xff\xffabc",
        b"\x11\x06\xff\xff\xff\xff",  # AMF3 string of 2**28-1 bytes
        b"\x11\x0c\xff\xff\xff\xff",  # AMF3 bytearray
    ):
        with _fast(0.05), pytest.raises(AMFError):
            decode_amf0(body)
        with _fast(0.05), pytest.raises(AMFError):  # max_string lifted: truncated
            decode_amf0(body, AMFLimits(max_string=2**40))


def test_max_string_boundary() -> None:
    limits = AMFLimits(max_string=4)
    assert decode_amf0(s("abcd"), limits) == ["abcd"]
    with pytest.raises(AMFError):
        decode_amf0(s("abcde"), limits)
    with pytest.raises(AMFError):
        decode_amf0(b"\x03" + key("abcde") + num(1.0) + END, limits)


@pytest.mark.parametrize(
    ("prefix", "unit"),
    [
        (b"", b"\x03" + key("a")),  # objects
        (b"", b"\x08\x00\x00\x00\x01" + key("a")),  # ECMA arrays
        (b"", b"\x0a\x00\x00\x00\x01"),  # strict arrays
        (b"", b"\x10\x00\x01T" + key("a")),  # typed objects
        (b"\x11", b"\x09\x03\x01"),  # AMF3 arrays
        (b"\x11", b"\x0a\x0b\x01\x03a"),  # AMF3 dynamic objects
        (b"\x03\x00\x01a" * 20 + b"\x11", b"\x09\x03\x01"),  # AMF0 then AMF3
    ],
)
def test_deep_nesting_is_refused_without_recursion_error(prefix: bytes, unit: bytes) -> None:
    body = prefix + unit * 10_000
    with pytest.raises(AMFError, match="max_depth"):
        decode_amf0(body)
    with pytest.raises(AMFError, match="max_depth"):  # the largest allowed limit
        decode_amf0(body, AMFLimits(max_depth=128))


def test_depth_boundary() -> None:
    def nested(levels: int) -> bytes:
        return b"\x0a\x00\x00\x00\x01" * levels + b"\x05"

    limits = AMFLimits(max_depth=32)
    [value] = decode_amf0(nested(32), limits)
    for _ in range(32):
        value = value[0]
    assert value is None
    with pytest.raises(AMFError):
        decode_amf0(nested(33), limits)
    # The cap itself decodes fine even with a tight interpreter recursion limit.
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(600)
    try:
        decode_amf0(nested(128), AMFLimits(max_depth=128))
    finally:
        sys.setrecursionlimit(old)


def test_wide_object_beyond_max_items_is_refused() -> None:
    wide = b"\x03" + (key("k") + b"\x05") * 65537 + END
    with pytest.raises(AMFError, match="max_items"):
        decode_amf0(wide)
    ok = b"\x03" + (key("k") + b"\x05") * 65536 + END
    assert decode_amf0(ok) == [{"k": None}]
    limits = AMFLimits(max_items=3)
    for unit, body_end in (
        (b"\x08\x00\x00\x00\x00", END),
        (b"\x03", END),
    ):
        body = unit + b"".join(key(c) + b"\x05" for c in "abcd") + body_end
        with pytest.raises(AMFError):
            decode_amf0(body, limits)
    with pytest.raises(AMFError):  # strict array: the declared count alone
        decode_amf0(b"\x0a\x00\x00\x00\x04" + b"\x05" * 4, limits)
    assert decode_amf0(b"\x0a\x00\x00\x00\x03" + b"\x05" * 3, limits) == [[None] * 3]
    with pytest.raises(AMFError):  # AMF3 sealed member count
        decode_amf0(b"\x11\x0a" + bytes([0x03 | (4 << 4)]) + b"\x01" * 20, limits)


def test_wide_and_deep_bomb_is_refused_by_total() -> None:
    limits = AMFLimits(max_total_items=1000)

    def grid(rows: int) -> bytes:
        row = b"\x0a\x00\x00\x00\x63" + b"\x05" * 99  # 100 values with the array
        return b"\x0a" + struct.pack(">I", rows) + row * rows

    assert len(decode_amf0(grid(9), limits)[0]) == 9  # 1 + 900 values
    with pytest.raises(AMFError, match="max_total_items"):
        decode_amf0(grid(10), limits)  # 1 + 1000 values
    # Default limits: 3000 rows of 100 is 300_001 values > 262_144.
    with _fast(2.0), pytest.raises(AMFError, match="max_total_items"):
        decode_amf0(grid(3000))


def test_reference_chain_bomb_is_refused() -> None:
    # Each array holds two references to the previous one: 40 arrays of a few
    # bytes each would expand to 2**40 values if references were free.
    body = bytearray(b"\x0a\x00\x00\x00\x02\x05\x05")
    for i in range(40):
        body += b"\x0a\x00\x00\x00\x02" + (b"\x07" + struct.pack(">H", i)) * 2
    with _fast(0.5), pytest.raises(AMFError):
        decode_amf0(bytes(body))
    # The same chain through AMF3 object references.
    amf3 = bytearray(b"\x11\x09\x05\x01\x01\x01")
    for i in range(40):
        amf3 += b"\x11\x09\x05\x01" + (b"\x09" + bytes([i << 1])) * 2
    with _fast(0.5), pytest.raises(AMFError):
        decode_amf0(bytes(amf3))


def test_reference_is_charged_for_depth() -> None:
    # A 3-level structure referenced from depth 2 reaches depth 5.
    inner = b"\x0a\x00\x00\x00\x01" * 3 + b"\x05"  # entries 0, 1, 2
    outer = b"\x0a\x00\x00\x00\x01" * 2 + b"\x07\x00\x00"
    assert len(decode_amf0(inner + outer, AMFLimits(max_depth=5))) == 2
    with pytest.raises(AMFError, match="max_depth"):
        decode_amf0(inner + outer, AMFLimits(max_depth=4))


# -- API details


def test_limits_validation() -> None:
    assert AMFLimits() == DEFAULT_LIMITS
    with pytest.raises(ValueError):
        AMFLimits(max_depth=129)
    with pytest.raises(ValueError):
        AMFLimits(max_string=-1)


def test_undefined_is_a_singleton() -> None:
    assert Undefined() is UNDEFINED
    assert not UNDEFINED
    assert repr(UNDEFINED) == "UNDEFINED"


def test_amf_error_is_value_error() -> None:
    assert issubclass(AMFError, ValueError)
    assert repr(ECMAArray(a=1)) == "ECMAArray({'a': 1})"
