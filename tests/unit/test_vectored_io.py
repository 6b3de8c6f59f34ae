"""The shared vectored writer: every byte lands in order, past the kernel's per-call buffer limit."""

from __future__ import annotations

import os
from pathlib import Path

from mediaserver.vectored_io import IOV_MAX, write_all


def _chunks(count: int) -> list[bytes | memoryview]:
    chunks: list[bytes | memoryview] = []
    for i in range(count):
        body = bytes([i % 251]) * (i % 7)  # some empty, some several bytes
        chunks.append(memoryview(body) if i % 2 else body)
    return chunks


def test_appends_more_buffers_than_one_call_takes(tmp_path: Path) -> None:
    chunks = _chunks(IOV_MAX * 2 + 17)
    path = tmp_path / "append.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"head")
        written = write_all(fd, chunks)
    finally:
        os.close(fd)
    expected = b"".join(bytes(c) for c in chunks)
    assert written == len(expected)
    assert path.read_bytes() == b"head" + expected


def test_writes_at_an_offset_without_moving_other_bytes(tmp_path: Path) -> None:
    path = tmp_path / "offset.bin"
    path.write_bytes(b"x" * 10)
    chunks = _chunks(IOV_MAX + 3)
    expected = b"".join(bytes(c) for c in chunks)
    fd = os.open(path, os.O_RDWR)
    try:
        assert write_all(fd, chunks, offset=4) == len(expected)
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert data[:4] == b"xxxx"
    assert data[4 : 4 + len(expected)] == expected


def test_nothing_to_write(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "empty.bin", os.O_WRONLY | os.O_CREAT)
    try:
        assert write_all(fd, [b"", memoryview(b"")]) == 0
        assert write_all(fd, []) == 0
    finally:
        os.close(fd)
