"""Unit tests for mediaserver.rtmp.chunk: the chunk stream parser and encoder.

The wire format is rebuilt here by hand (`basic_header`, `chunk`, `ref_encode`) so that the
module is checked against an independent statement of RTMP 1.0 section 5.3, not only against
itself.
"""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mediaserver.rtmp.chunk import (
    ABORT,
    AUDIO,
    COMMAND_AMF0,
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MAX_CHUNK_STREAMS,
    SET_CHUNK_SIZE,
    VIDEO,
    ChunkError,
    ChunkReader,
    Message,
    encode_message,
)

EXT = 0xFFFFFF

# ----------------------------------------------------------------------------- helpers


def basic_header(fmt: int, csid: int) -> bytes:
    """Basic header, written from the spec: 1 byte for 2..63, 2 bytes for 64..319, 3 bytes up to 65599."""
    assert 2 <= csid <= 65599
    if csid <= 63:
        return bytes([fmt << 6 | csid])
    if csid <= 319:
        return bytes([fmt << 6, csid - 64])
    return bytes([fmt << 6 | 1, (csid - 64) % 256, (csid - 64) // 256])


def chunk(
    fmt: int,
    csid: int,
    data: bytes = b"",
    *,
    ts: int = 0,
    length: int = 0,
    type_id: int = 0,
    stream_id: int = 0,
    ext: int | None = None,
) -> bytes:
    """One chunk with a header of type `fmt`. `ts` is the timestamp (fmt 0) or delta (fmt 1/2);
    a value >= 0xFFFFFF goes to the extended field. For fmt 3, `ext` adds an extended field."""
    out = bytearray(basic_header(fmt, csid))
    if fmt <= 2:
        field = EXT if ts >= EXT else ts
        out += field.to_bytes(3, "big")
        if fmt <= 1:
            out += length.to_bytes(3, "big") + bytes([type_id])
            if fmt == 0:
                out += stream_id.to_bytes(4, "little")
        if ts >= EXT:
            out += ts.to_bytes(4, "big")
    elif ext is not None:
        out += ext.to_bytes(4, "big")
    return bytes(out + data)


def ref_encode(csid: int, type_id: int, stream_id: int, ts: int, payload: bytes, chunk_size: int) -> bytes:
    """Reference encoding: a type-0 chunk then type-3 continuations (with the extended field repeated)."""
    pieces = [payload[i : i + chunk_size] for i in range(0, len(payload), chunk_size)] or [b""]
    out = chunk(0, csid, pieces[0], ts=ts, length=len(payload), type_id=type_id, stream_id=stream_id)
    for piece in pieces[1:]:
        out += chunk(3, csid, piece, ext=ts if ts >= EXT else None)
    return out


def set_chunk_size_msg(size: int, csid: int = 2, chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
    return encode_message(csid, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", size), chunk_size)


def as_tuples(messages: Iterable[Message]) -> list[tuple[int, int, int, int, bytes]]:
    return [(m.csid, m.type_id, m.stream_id, m.timestamp, bytes(m.payload)) for m in messages]


def feed_in_pieces(reader: ChunkReader, data: bytes, cuts: Sequence[int]) -> list[Message]:
    out: list[Message] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        out += reader.feed(data[start:cut])
        start = max(start, cut)
    return out


def decode(data: bytes, **kwargs: int) -> list[tuple[int, int, int, int, bytes]]:
    return as_tuples(ChunkReader(**kwargs).feed(data))


def decode_bytewise(data: bytes, **kwargs: int) -> list[tuple[int, int, int, int, bytes]]:
    reader = ChunkReader(**kwargs)
    out: list[Message] = []
    for i in range(len(data)):
        out += reader.feed(data[i : i + 1])
    return as_tuples(out)


def payload_of(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def media_only(messages: list[tuple[int, int, int, int, bytes]]) -> list[tuple[int, int, int, int, bytes]]:
    return [m for m in messages if m[1] not in (SET_CHUNK_SIZE, ABORT)]


# ------------------------------------------------------------------------- encoder layout


@pytest.mark.parametrize(
    ("csid", "expected"),
    [
        (2, b"\x02"),
        (3, b"\x03"),
        (63, b"\x3f"),
        (64, b"\x00\x00"),
        (100, b"\x00\x24"),
        (319, b"\x00\xff"),
        (320, b"\x01\x00\x01"),
        (400, b"\x01\x50\x01"),
        (65599, b"\x01\xff\xff"),
    ],
)
def test_basic_header_forms(csid: int, expected: bytes) -> None:
    encoded = encode_message(csid, AUDIO, 1, 0, b"x", 128)
    assert encoded.startswith(expected)
    assert len(encoded) == len(expected) + 11 + 1
    # Continuation chunks use the same basic header form with fmt 3.
    two_chunks = encode_message(csid, AUDIO, 1, 0, b"xy", 1)
    cont = bytes([expected[0] | 0xC0]) + expected[1:]
    assert two_chunks == expected + two_chunks[len(expected) : len(expected) + 12] + cont + b"y"


@pytest.mark.parametrize("csid", [3, 100, 400])
@pytest.mark.parametrize("chunk_size", [1, 2, 127, 128, 129, 4096])
def test_encode_matches_reference_and_round_trips(csid: int, chunk_size: int) -> None:
    for size in (0, 1, 127, 128, 129, 255, 256, 257, 1000, 5000):
        for ts in (0, 1234, EXT - 1, EXT, 2**32 - 1):
            payload = payload_of(size, csid)
            encoded = encode_message(csid, VIDEO, 7, ts, payload, chunk_size)
            assert encoded == ref_encode(csid, VIDEO, 7, ts, payload, chunk_size), (size, ts)
            reader = ChunkReader()
            reader.chunk_size = chunk_size  # as if a Set Chunk Size had been received
            assert as_tuples(reader.feed(encoded)) == [(csid, VIDEO, 7, ts, payload)], (size, ts)


def test_encode_masks_timestamp_to_32_bits() -> None:
    assert encode_message(3, AUDIO, 0, 2**32 + 5, b"a", 128) == encode_message(3, AUDIO, 0, 5, b"a", 128)


def test_encode_accepts_bytearray_and_memoryview() -> None:
    payload = payload_of(300)
    expected = encode_message(4, VIDEO, 1, 10, payload, 128)
    assert encode_message(4, VIDEO, 1, 10, bytearray(payload), 128) == expected
    assert encode_message(4, VIDEO, 1, 10, memoryview(payload), 128) == expected


# ------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 128, 1000, 4096])
def test_many_messages_many_sizes_with_set_chunk_size(chunk_size: int) -> None:
    sizes = sorted({0, 1, 2, chunk_size - 1, chunk_size, chunk_size + 1, 2 * chunk_size, 3 * chunk_size + 5, 7000})
    pairs = [(csid, size) for csid in (3, 100, 400) for size in sizes]
    msgs = [
        (csid, VIDEO if i % 2 else AUDIO, i, (i * 40_000_000 + 3) & 0xFFFFFFFF, payload_of(size, i))
        for i, (csid, size) in enumerate(pairs)
    ]
    data = set_chunk_size_msg(chunk_size) + b"".join(encode_message(*m, chunk_size) for m in msgs)
    expected = [(2, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", chunk_size)), *msgs]
    assert decode(data) == expected
    assert decode_bytewise(data) == expected


def test_extended_timestamp_on_continuation_chunks() -> None:
    payload = payload_of(400)
    for ts in (EXT, EXT + 1, 0x12345678, 2**32 - 1):
        encoded = encode_message(5, VIDEO, 1, ts, payload, 128)
        # Four chunks, each continuation repeats the 4-byte extended field.
        assert encoded.count(b"\xc5" + ts.to_bytes(4, "big")) == 3
        assert decode(encoded) == [(5, VIDEO, 1, ts, payload)]
        assert decode_bytewise(encoded) == [(5, VIDEO, 1, ts, payload)]


def test_continuation_without_repeated_extended_field_is_accepted() -> None:
    # Old encoders omit the extended field on type-3 continuation chunks.
    ts = 0x01000000
    payload = b"\x00" * 200
    data = chunk(0, 6, payload[:128], ts=ts, length=200, type_id=VIDEO, stream_id=1) + chunk(3, 6, payload[128:])
    assert decode(data) == [(6, VIDEO, 1, ts, payload)]
    assert decode_bytewise(data) == [(6, VIDEO, 1, ts, payload)]


def test_header_compression_type_1_2_3() -> None:
    csid = 4
    data = b"".join(
        [
            # type 0: absolute timestamp 1000, length 3, audio, stream 1
            chunk(0, csid, b"abc", ts=1000, length=3, type_id=AUDIO, stream_id=1),
            # type 1: delta 20, new length and type, stream id kept
            chunk(1, csid, b"hello", ts=20, length=5, type_id=VIDEO),
            # type 2: delta 33, length and type kept
            chunk(2, csid, b"world", ts=33),
            # type 3 starting a new message: delta 33 reused
            chunk(3, csid, b"again"),
            chunk(3, csid, b"more!"),
            # type 2 with an extended delta, then type 3 reusing it (extended field repeated)
            chunk(2, csid, b"big-d", ts=0x01000000),
            chunk(3, csid, b"big-e", ext=0x01000000),
        ]
    )
    expected = [
        (csid, AUDIO, 1, 1000, b"abc"),
        (csid, VIDEO, 1, 1020, b"hello"),
        (csid, VIDEO, 1, 1053, b"world"),
        (csid, VIDEO, 1, 1086, b"again"),
        (csid, VIDEO, 1, 1119, b"more!"),
        (csid, VIDEO, 1, 1119 + 0x01000000, b"big-d"),
        (csid, VIDEO, 1, 1119 + 0x02000000, b"big-e"),
    ]
    assert decode(data) == expected
    assert decode_bytewise(data) == expected


def test_type_3_after_type_0_uses_the_type_0_timestamp_as_delta() -> None:
    data = chunk(0, 3, b"one", ts=500, length=3, type_id=COMMAND_AMF0, stream_id=0) + chunk(3, 3, b"two")
    assert decode(data) == [(3, COMMAND_AMF0, 0, 500, b"one"), (3, COMMAND_AMF0, 0, 1000, b"two")]
    # The same with an extended timestamp: the type-3 header repeats the extended field.
    ts = 0x02000000
    data = chunk(0, 3, b"one", ts=ts, length=3, type_id=AUDIO, stream_id=0) + chunk(3, 3, b"two", ext=ts)
    assert decode(data) == [(3, AUDIO, 0, ts, b"one"), (3, AUDIO, 0, 2 * ts, b"two")]


def test_multi_chunk_messages_with_compressed_headers() -> None:
    payload = payload_of(300)
    data = (
        chunk(0, 8, payload[:128], ts=10, length=300, type_id=VIDEO, stream_id=1)
        + chunk(3, 8, payload[128:256])
        + chunk(3, 8, payload[256:])
        # type-1 header for a new multi-chunk message; continuation type-3 chunks do not add the delta
        + chunk(1, 8, payload[:128], ts=40, length=200, type_id=AUDIO)
        + chunk(3, 8, payload[128:200])
    )
    expected = [(8, VIDEO, 1, 10, payload), (8, AUDIO, 1, 50, payload[:200])]
    assert decode(data) == expected
    assert decode_bytewise(data) == expected


def test_timestamp_delta_wraps_at_32_bits() -> None:
    data = chunk(0, 3, b"a", ts=2**32 - 10, length=1, type_id=AUDIO) + chunk(2, 3, b"b", ts=25)
    assert [m[3] for m in decode(data)] == [2**32 - 10, 15]


def test_interleaved_chunk_streams() -> None:
    video = payload_of(300, 1)
    audio = payload_of(200, 2)
    data = (
        chunk(0, 6, video[:128], ts=0, length=300, type_id=VIDEO, stream_id=1)
        + chunk(0, 400, audio[:128], ts=5, length=200, type_id=AUDIO, stream_id=1)
        + chunk(3, 6, video[128:256])
        + chunk(0, 100, b"cmd", ts=7, length=3, type_id=COMMAND_AMF0, stream_id=0)
        + chunk(3, 400, audio[128:])
        + chunk(3, 6, video[256:])
    )
    expected = [
        (100, COMMAND_AMF0, 0, 7, b"cmd"),
        (400, AUDIO, 1, 5, audio),
        (6, VIDEO, 1, 0, video),
    ]
    assert decode(data) == expected
    assert decode_bytewise(data) == expected


def test_set_chunk_size_applies_to_the_rest_of_the_same_buffer() -> None:
    payload = payload_of(3000)
    data = set_chunk_size_msg(1000) + encode_message(4, VIDEO, 1, 0, payload, 1000)
    reader = ChunkReader()
    assert as_tuples(reader.feed(data)) == [
        (2, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", 1000)),
        (4, VIDEO, 1, 0, payload),
    ]
    assert reader.chunk_size == 1000
    # A Set Chunk Size mid-stream, then another, all in one buffer.
    data = (
        set_chunk_size_msg(1)
        + encode_message(5, AUDIO, 1, 1, b"tiny", 1)
        + set_chunk_size_msg(7, chunk_size=1)
        + encode_message(5, AUDIO, 1, 2, payload[:50], 7)
    )
    assert media_only(decode(data)) == [(5, AUDIO, 1, 1, b"tiny"), (5, AUDIO, 1, 2, payload[:50])]
    assert media_only(decode_bytewise(data)) == [(5, AUDIO, 1, 1, b"tiny"), (5, AUDIO, 1, 2, payload[:50])]


def test_set_chunk_size_with_extra_bytes_uses_the_first_four() -> None:
    data = encode_message(2, SET_CHUNK_SIZE, 0, 0, struct.pack(">II", 256, 99), 128)
    reader = ChunkReader()
    reader.feed(data)
    assert reader.chunk_size == 256


def test_abort_discards_partial_message() -> None:
    payload = payload_of(300)
    abort = encode_message(2, ABORT, 0, 0, struct.pack(">I", 5), 128)
    data = (
        chunk(0, 5, payload[:128], ts=100, length=300, type_id=VIDEO, stream_id=1)
        + abort
        + chunk(0, 5, b"fresh", ts=200, length=5, type_id=AUDIO, stream_id=1)
    )
    expected = [(2, ABORT, 0, 0, struct.pack(">I", 5)), (5, AUDIO, 1, 200, b"fresh")]
    assert decode(data) == expected
    assert decode_bytewise(data) == expected
    # After an abort a type-3 header starts a new message (same length, delta reused).
    data = (
        chunk(0, 5, payload[:128], ts=100, length=130, type_id=VIDEO, stream_id=1)
        + abort
        + chunk(3, 5, payload[:128])
        + chunk(3, 5, payload[128:130])
    )
    assert media_only(decode(data)) == [(5, VIDEO, 1, 200, payload[:130])]
    # Aborting an unknown or idle chunk stream is harmless.
    data = encode_message(2, ABORT, 0, 0, struct.pack(">I", 33), 128) + encode_message(3, AUDIO, 0, 0, b"ok", 128)
    assert media_only(decode(data)) == [(3, AUDIO, 0, 0, b"ok")]


def test_byte_at_a_time_equals_one_feed_for_a_mixed_stream() -> None:
    big = payload_of(9000, 3)
    data = b"".join(
        [
            encode_message(3, COMMAND_AMF0, 0, 0, b"\x02\x00\x07connect", 128),
            set_chunk_size_msg(4096),
            encode_message(6, VIDEO, 1, 0, big, 4096),
            chunk(1, 6, b"delta", ts=40, length=5, type_id=VIDEO),
            chunk(3, 6, b"again"),
            encode_message(4, AUDIO, 1, EXT + 7, big[:5000], 4096),
            encode_message(64, AUDIO, 1, 12, b"", 4096),
            encode_message(65599, VIDEO, 2**32 - 1, 2**32 - 1, big[:4097], 4096),
            chunk(0, 320, big[:4096], ts=1, length=4500, type_id=VIDEO, stream_id=1),
            encode_message(2, ABORT, 0, 0, struct.pack(">I", 320), 4096),
            set_chunk_size_msg(1, chunk_size=4096),
            encode_message(7, VIDEO, 1, 9, b"last", 1),
        ]
    )
    whole = decode(data)
    assert len(whole) == 11
    assert decode_bytewise(data) == whole
    for step in (2, 3, 5, 11, 127, 1000):
        reader = ChunkReader()
        assert as_tuples(feed_in_pieces(reader, data, range(step, len(data), step))) == whole


def test_bytes_received_counts_everything_fed() -> None:
    reader = ChunkReader()
    data = encode_message(3, AUDIO, 0, 0, payload_of(500), 128)
    reader.feed(data[:10])
    reader.feed(data[10:])
    assert reader.bytes_received == len(data)


# ------------------------------------------------------------------------------- limits


def expect_error(reason: str, data: bytes, reader: ChunkReader | None = None) -> None:
    with pytest.raises(ChunkError) as info:
        (reader or ChunkReader()).feed(data)
    assert info.value.reason == reason


def test_message_length_limit() -> None:
    header = chunk(0, 4, ts=0, length=1001, type_id=VIDEO, stream_id=1)
    # Refused as soon as the header is in, before any payload arrives.
    expect_error("message_too_large", header, ChunkReader(max_message_size=1000))
    ok = encode_message(4, VIDEO, 1, 0, payload_of(1000), 128)
    assert decode(ok, max_message_size=1000) == [(4, VIDEO, 1, 0, payload_of(1000))]
    # A type-1 header declaring a larger length is refused too.
    expect_error("message_too_large", ok + chunk(1, 4, ts=1, length=0xFFFFFF, type_id=VIDEO), ChunkReader(1000))
    # Default limit is 8 MiB; the largest 24-bit length is above it.
    expect_error("message_too_large", chunk(0, 4, length=0xFFFFFF, type_id=VIDEO))


@pytest.mark.parametrize("size", [0, MAX_CHUNK_SIZE + 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
def test_bad_chunk_size(size: int) -> None:
    expect_error("bad_chunk_size", set_chunk_size_msg(size))
    with pytest.raises(ChunkError) as info:
        ChunkReader().set_chunk_size(size)
    assert info.value.reason == "bad_chunk_size"


@pytest.mark.parametrize("size", [1, 128, MAX_CHUNK_SIZE])
def test_chunk_size_bounds_accepted(size: int) -> None:
    reader = ChunkReader()
    reader.feed(set_chunk_size_msg(size))
    assert reader.chunk_size == size


def test_short_set_chunk_size_is_refused() -> None:
    expect_error("bad_control_message", encode_message(2, SET_CHUNK_SIZE, 0, 0, b"\x00\x01", 128))


@pytest.mark.parametrize("fmt", [1, 2, 3])
@pytest.mark.parametrize("csid", [3, 100, 400])
def test_first_header_must_be_type_0(fmt: int, csid: int) -> None:
    expect_error("bad_chunk_header", chunk(fmt, csid, b"x", ts=1, length=1, type_id=AUDIO))
    # Also when other chunk streams are already established.
    reader = ChunkReader()
    reader.feed(encode_message(5, AUDIO, 1, 0, b"x", 128))
    expect_error("bad_chunk_header", chunk(fmt, csid, b"x", ts=1, length=1, type_id=AUDIO), reader)


@pytest.mark.parametrize("fmt", [0, 1, 2])
def test_full_header_inside_a_partial_message_is_refused(fmt: int) -> None:
    start = chunk(0, 4, payload_of(128), ts=0, length=300, type_id=VIDEO, stream_id=1)
    expect_error("bad_chunk_header", start + chunk(fmt, 4, b"x", ts=1, length=1, type_id=VIDEO))


def test_chunk_stream_count_limit() -> None:
    reader = ChunkReader()
    csids = [3 + i for i in range(MAX_CHUNK_STREAMS)]
    data = b"".join(encode_message(csid, AUDIO, 1, 0, b"x", 128) for csid in csids)
    assert len(reader.feed(data)) == MAX_CHUNK_STREAMS
    # Reusing known chunk streams is fine ...
    assert len(reader.feed(encode_message(csids[0], AUDIO, 1, 0, b"y", 128))) == 1
    # ... one more stream is not, whatever its basic header form.
    for csid in (2, 300, 65599):
        expect_error("too_many_chunk_streams", encode_message(csid, AUDIO, 1, 0, b"x", 128), reader)


def test_buffered_memory_is_bounded_by_bytes_received() -> None:
    limit = 1 << 20
    reader = ChunkReader(max_message_size=limit)
    data = set_chunk_size_msg(1) + b"".join(
        chunk(0, csid, b"x", length=limit, type_id=VIDEO, stream_id=1) for csid in range(3, 2 + MAX_CHUNK_STREAMS)
    )
    assert len(data) < 1024
    tracemalloc.start()
    try:
        assert reader.feed(data)[0].type_id == SET_CHUNK_SIZE
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A parser holding what it has received (plus bookkeeping) needs far less than this.
    assert peak < 4 * 1024 * 1024, f"{peak / 2**20:.1f} MiB held after {len(data)} bytes"


# ---------------------------------------------------------------------------- properties

# Set Chunk Size and Abort change the reader's state, so random messages avoid those types.
message_types = st.integers(0, 255).filter(lambda t: t not in (SET_CHUNK_SIZE, ABORT))
timestamps = st.one_of(
    st.integers(0, 2**32 - 1), st.sampled_from([0, EXT - 1, EXT, EXT + 1, 2**32 - 1]), st.integers(0, 100_000)
)
messages_strategy = st.lists(
    st.tuples(
        st.one_of(st.integers(2, 65599), st.integers(2, 70), st.integers(60, 330)),
        message_types,
        st.integers(0, 2**32 - 1),
        timestamps,
        st.binary(max_size=3000),
    ),
    max_size=12,
)
chunk_sizes = st.one_of(st.integers(1, 16), st.integers(1, 4200), st.sampled_from([128, 4096, MAX_CHUNK_SIZE]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=messages_strategy, chunk_size=chunk_sizes, data=st.data())
def test_property_round_trip_in_random_splits(
    messages: list[tuple[int, int, int, int, bytes]], chunk_size: int, data: st.DataObject
) -> None:
    wire = set_chunk_size_msg(chunk_size) + b"".join(encode_message(*m, chunk_size) for m in messages)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=40), label="cuts")
    decoded = as_tuples(feed_in_pieces(ChunkReader(), wire, cuts))
    assert decoded == [(2, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", chunk_size)), *messages]


# Well-formed-looking chunks with random header types and fields: reaches deeper states
# (continuations, compressed headers, control messages) than random bytes do.
random_chunks = st.lists(
    st.builds(
        lambda fmt, csid, data, ts, length, type_id, ext: chunk(
            fmt, csid, data, ts=ts, length=length, type_id=type_id, stream_id=1, ext=ext
        ),
        st.integers(0, 3),
        st.sampled_from([2, 3, 4, 70, 400]),
        st.binary(max_size=40),
        st.one_of(st.integers(0, 50), st.just(EXT), st.just(2**32 - 1)),
        st.integers(0, 80),
        st.sampled_from([SET_CHUNK_SIZE, ABORT, AUDIO, VIDEO, COMMAND_AMF0]),
        st.one_of(st.none(), st.just(EXT), st.just(2**32 - 1)),
    ),
    max_size=25,
).map(b"".join)


@settings(max_examples=1000, deadline=None)
@given(
    blob=st.one_of(
        st.binary(max_size=600),
        random_chunks,
        # Start from a valid message so the fuzzing gets past the first header more often.
        st.builds(
            lambda prefix, tail: prefix + tail,
            st.sampled_from(
                [
                    set_chunk_size_msg(1),
                    set_chunk_size_msg(3),
                    encode_message(3, VIDEO, 1, EXT, payload_of(300), 128),
                    chunk(0, 4, payload_of(128), ts=0, length=300, type_id=VIDEO, stream_id=1),
                    b"",
                ]
            ),
            st.binary(max_size=400),
        ),
    ),
    data=st.data(),
)
def test_property_arbitrary_bytes_only_raise_chunk_error(blob: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=20), label="cuts")
    reader = ChunkReader(max_message_size=64 * 1024)
    try:
        for message in feed_in_pieces(reader, blob, cuts):
            assert message.type_id in range(256)
            assert 0 <= message.timestamp <= 0xFFFFFFFF
            assert len(message.payload) <= reader.max_message_size
    except ChunkError as exc:
        event(exc.reason)
        assert exc.reason in {
            "message_too_large",
            "bad_chunk_size",
            "bad_chunk_header",
            "too_many_chunk_streams",
            "bad_control_message",
        }
    assert 1 <= reader.chunk_size <= MAX_CHUNK_SIZE
