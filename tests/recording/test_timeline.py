"""The pure parts of playback by time: index parsing, segment choice, coverage, the VOD playlist, and the
API's time and byte-range parsing."""

from __future__ import annotations

import time

import pytest

from control.api.base import ApiError
from control.api.recording_support import RangeNotSatisfiable, byte_range, parse_time
from mediaserver.recording import fileformat, playlist, timeline
from mediaserver.recording.fileformat import IndexEntry

T0 = 1_800_000_000_000  # ms, 2027-01-15


def indexed(ref: int, starts_ms: list[int], duration: int = 1000, head: int = 1200) -> timeline.IndexedFile:
    entries = []
    offset = head
    for start in starts_ms:
        entries.append(IndexEntry(offset, 5000, start - T0, duration, start))
        offset += 5000
    return timeline.IndexedFile(ref, tuple(entries))


def flat(spans: list[timeline.Span], base: float) -> list[float]:
    return [t - base for s in spans for t in (s.start, s.end)]


def test_parse_index_stops_at_a_torn_line_and_drops_empty_segments() -> None:
    text = "1200 5000 0 1000 1800000000000\n6200 0 1000 1000 1800000001000\n6200 5000 1000 0 1\n6200 4000 1000 1000"
    assert fileformat.parse_index(text) == [IndexEntry(1200, 5000, 0, 1000, 1800000000000)]
    # Lines that are not five numbers end the index (the rest is not trusted either).
    assert fileformat.parse_index("1200 5000 0 1000 1\nrm -rf /\n7000 1 1 1 1\n") == [
        IndexEntry(1200, 5000, 0, 1000, 1)
    ]
    # An entry at offset 0 would make the "head" (init bytes) empty; offsets must not run backwards.
    assert fileformat.parse_index("0 10 0 1000 1\n") == []
    assert len(fileformat.parse_index("100 10 0 1000 1\n50 10 1000 1000 2\n")) == 1


def test_select_cuts_at_segments_around_the_range() -> None:
    first = indexed(1, [T0, T0 + 1000, T0 + 2000, T0 + 3000])
    second = indexed(2, [T0 + 4000, T0 + 5000])
    chosen = timeline.select([second, first], T0 / 1000 + 1.5, T0 / 1000 + 4.2)
    assert [s.ref for s in chosen] == [1, 2]
    # The segment at or before start (1.0-2.0 holds 1.5) through the one ending at or after end (4.0-5.0).
    assert [e.wallclock_ms - T0 for e in chosen[0].entries] == [1000, 2000, 3000]
    assert [e.wallclock_ms - T0 for e in chosen[1].entries] == [4000]
    assert chosen[0].head == 1200 and timeline.byte_runs(chosen[0]) == [(6200, 21200)]
    assert timeline.total_duration(chosen) == 4.0
    # A range ending exactly where a segment starts does not take that segment.
    assert [len(s.entries) for s in timeline.select([first], T0 / 1000, T0 / 1000 + 1)] == [1]


def test_coverage_merges_small_gaps_and_reports_the_rest() -> None:
    # Two files joined 40 ms apart (one span), then a hole of 5 s, then one more segment.
    files = [indexed(1, [T0, T0 + 1000]), indexed(2, [T0 + 2040, T0 + 3040]), indexed(3, [T0 + 9040])]
    start, end = T0 / 1000 - 2, T0 / 1000 + 20
    spans, gaps = timeline.coverage(timeline.select(files, start, end), start, end)
    base = T0 / 1000
    assert flat(spans, base) == pytest.approx([0, 4.04, 9.04, 10.04], abs=1e-3)
    assert flat(gaps, base) == pytest.approx([-2, 0, 4.04, 9.04, 10.04, 20], abs=1e-3)
    # Spans are clipped to the range asked for; a fully covered range has no gap.
    spans, gaps = timeline.coverage(timeline.select(files, base + 0.5, base + 3.5), base + 0.5, base + 3.5)
    assert flat(spans, base) == pytest.approx([0.5, 3.5], abs=1e-3)
    assert gaps == []
    assert timeline.coverage([], base, base + 1) == ([], [timeline.Span(base, base + 1)])


def test_vod_playlist_has_one_map_per_file_and_discontinuities_at_files_and_holes() -> None:
    files = [indexed(7, [T0, T0 + 1500, T0 + 6500], duration=1500), indexed(8, [T0 + 8000], head=900)]
    chosen = timeline.select(files, T0 / 1000, T0 / 1000 + 60)
    text = playlist.render_vod(chosen, lambda ref: f"../../recordings/{ref}/media?token=t{ref}")
    lines = text.splitlines()
    assert lines[:6] == [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        "#EXT-X-TARGETDURATION:2",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ]
    assert lines[-1] == "#EXT-X-ENDLIST"
    assert [line for line in lines if line.startswith("#EXT-X-MAP")] == [
        '#EXT-X-MAP:URI="../../recordings/7/media?token=t7",BYTERANGE="1200@0"',
        '#EXT-X-MAP:URI="../../recordings/8/media?token=t8",BYTERANGE="900@0"',
    ]
    # One at the 3.5 s hole inside file 7, one between the files.
    assert lines.count("#EXT-X-DISCONTINUITY") == 2 and "#EXT-X-GAP" not in text
    assert lines.count("#EXTINF:1.500,") == 3 and lines.count("#EXTINF:1.000,") == 1
    assert "#EXT-X-BYTERANGE:5000@6200" in lines
    assert "#EXT-X-PROGRAM-DATE-TIME:2027-01-15T08:00:06.500Z" in lines
    with pytest.raises(ValueError):
        playlist.render_vod(chosen, lambda ref: 'x"\n#EXT-X-ENDLIST')


def test_time_parameters() -> None:
    assert parse_time("2026-12-01T20:00:00Z", "start") == 1796155200.0
    assert parse_time("2026-12-01T21:00:00+01:00", "start") == 1796155200.0
    assert parse_time("2026-12-01T20:00:00", "start") == 1796155200.0  # no offset: UTC
    assert parse_time("1796155200.25", "start") == 1796155200.25
    for raw, code in (
        ("yesterday", "invalid_time"),
        ("١٧٩٦١٥٥٢٠٠", "invalid_time"),  # digits, but not ASCII ones
        ("1e9", "invalid_time"),
        ("946684799", "time_out_of_range"),  # 1999-12-31
        (str(int(time.time()) + 2 * 86400), "time_out_of_range"),
        ("0001-01-01T00:00:00+01:00", "time_out_of_range"),
    ):
        with pytest.raises(ApiError) as caught:
            parse_time(raw, "start")
        assert (caught.value.status, caught.value.code) == (400, code), raw


def test_byte_ranges() -> None:
    assert byte_range("bytes=0-99", 1000) == (0, 100)
    assert byte_range("bytes=900-", 1000) == (900, 1000)
    assert byte_range("bytes=900-5000", 1000) == (900, 1000)
    assert byte_range("bytes=-100", 1000) == (900, 1000)
    assert byte_range("bytes=-5000", 1000) == (0, 1000)
    # Malformed or several ranges: ignored (the whole file).
    for header in ("bytes=5-1", "bytes=-", "items=0-1", "bytes=0-1,5-6", "bytes= 0-1x"):
        assert byte_range(header, 1000) is None, header
    for header, size in (("bytes=1000-", 1000), ("bytes=-0", 1000), ("bytes=0-", 0)):
        with pytest.raises(RangeNotSatisfiable):
            byte_range(header, size)
