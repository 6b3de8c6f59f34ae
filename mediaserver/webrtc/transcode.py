"""Audio transcoding between RTMP's AAC and WebRTC's Opus, in worker threads.

- `AacToOpus`: one per stream with WebRTC viewers (not per viewer): decode AAC with the AudioSpecificConfig as
  extradata, resample to 48 kHz stereo in 20 ms frames, encode libopus; every viewer's audio track gets the
  same Opus packets. Started with the first viewer, stopped with the last.
- `OpusToAac`: one per WHIP publisher: decode Opus, resample to 1024-sample frames, encode AAC-LC.

A call costs about 0.2-0.5 ms (AAC stereo 44.1 kHz, measured with PyAV 18.1), and PyAV releases the GIL while
FFmpeg works, so a thread per transcoder keeps that time off the event loop; results come back with
`call_soon_threadsafe`, in batches of one input packet.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import av

from mediaserver.webrtc.tracks import AudioUnit

log = logging.getLogger("mediaserver.webrtc")

OPUS_RATE = 48_000
OPUS_FRAME = 960  # 20 ms
AAC_FRAME = 1024
# Input packets waiting for a worker; beyond this the worker is not keeping up and input is dropped.
MAX_BACKLOG = 250


@dataclass(slots=True)
class TranscodeStats:
    """Totals over all transcoders of one direction, read by the metrics collector."""

    calls: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0
    errors: int = 0
    dropped: int = 0
    running: int = 0


In = TypeVar("In")
Out = TypeVar("Out")


class _Worker(Generic[In, Out]):
    """A thread that turns input items into lists of output items, delivered on the event loop."""

    name = "transcode"

    def __init__(self, on_output: Callable[[list[Out]], None], stats: TranscodeStats) -> None:
        self._on_output = on_output
        self._stats = stats
        self._queue: queue.Queue[In | None] = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._stats.running += 1
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to finish (it drops what is still queued); does not wait."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread = None
        self._stats.running -= 1

    def submit(self, item: In) -> None:
        if self._thread is None:
            return
        if self._queue.qsize() >= MAX_BACKLOG:
            self._stats.dropped += 1
            return
        self._queue.put(item)

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            item = self._queue.get()
            if item is None:
                break
            started = time.perf_counter()
            try:
                out = self.process(item)
            except (av.FFmpegError, ValueError) as exc:
                self._stats.errors += 1
                log.warning("event=transcode_error worker=%s error=%s", self.name, exc)
                self.reset()
                continue
            elapsed = time.perf_counter() - started
            self._stats.calls += 1
            self._stats.seconds += elapsed
            if elapsed > self._stats.max_seconds:
                self._stats.max_seconds = elapsed
            if out:
                try:
                    loop.call_soon_threadsafe(self._on_output, out)
                except RuntimeError:  # the loop is closed: the server is shutting down
                    break
        self.close()

    def process(self, item: In) -> list[Out]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget codec state after an error."""

    def close(self) -> None:
        """Release codec state (runs in the worker thread)."""


class AacToOpus(_Worker[tuple[bytes, bytes, int], AudioUnit]):
    """Input: (AudioSpecificConfig, raw AAC frame, pts in ms). Output: Opus packets of 20 ms."""

    name = "aac-to-opus"

    def __init__(self, on_output: Callable[[list[AudioUnit]], None], stats: TranscodeStats, bitrate: int) -> None:
        super().__init__(on_output, stats)
        self._bitrate = bitrate
        self._config = b""
        self._decoder: Any = None
        self._resampler: Any = None
        self._encoder: Any = None
        self._samples = 0

    def reset(self) -> None:
        self._config = b""
        self._decoder = None
        self._resampler = None

    def close(self) -> None:
        self.reset()
        self._encoder = None

    def process(self, item: tuple[bytes, bytes, int]) -> list[AudioUnit]:
        config, raw, pts_ms = item
        if config != self._config or self._decoder is None:
            self._decoder = av.CodecContext.create("aac", "r")
            self._decoder.extradata = config
            self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=OPUS_RATE, frame_size=OPUS_FRAME)
            self._config = config
        if self._encoder is None:
            encoder: Any = av.CodecContext.create("libopus", "w")
            encoder.sample_rate = OPUS_RATE
            encoder.layout = "stereo"
            encoder.format = "s16"
            encoder.bit_rate = self._bitrate
            encoder.time_base = fractions.Fraction(1, OPUS_RATE)
            encoder.options = {"application": "audio", "frame_duration": "20"}
            self._encoder = encoder
        packet = av.Packet(raw)
        packet.pts = pts_ms
        packet.time_base = fractions.Fraction(1, 1000)
        units: list[AudioUnit] = []
        for frame in self._decoder.decode(packet):
            for resampled in self._resampler.resample(frame):
                resampled.pts = None
                for out in self._encoder.encode(resampled):
                    samples = out.duration or OPUS_FRAME
                    units.append(AudioUnit(bytes(out), self._samples, samples))
                    self._samples += samples
        return units


@dataclass(slots=True)
class AacOut:
    config: bytes  # AudioSpecificConfig
    data: bytes  # one raw AAC frame
    pts: int  # milliseconds


class OpusToAac(_Worker[tuple[bytes, int], AacOut]):
    """Input: (Opus packet, pts in ms). Output: raw AAC-LC frames, 48 kHz stereo."""

    name = "opus-to-aac"

    def __init__(self, on_output: Callable[[list[AacOut]], None], stats: TranscodeStats, bitrate: int) -> None:
        super().__init__(on_output, stats)
        self._bitrate = bitrate
        self._decoder: Any = None
        self._resampler: Any = None
        self._encoder: Any = None
        self._base_ms: int | None = None
        self._samples = 0

    def reset(self) -> None:
        self._decoder = None
        self._resampler = None

    def close(self) -> None:
        self.reset()
        self._encoder = None

    def prepare(self) -> bytes:
        """Open the AAC encoder now (under 1 ms) and return its AudioSpecificConfig, so the sequence header
        can go to the hub before the first frame (consumers such as HLS set up their tracks from it)."""
        if self._encoder is None:
            encoder: Any = av.CodecContext.create("aac", "w")
            encoder.sample_rate = OPUS_RATE
            encoder.layout = "stereo"
            encoder.format = "fltp"
            encoder.bit_rate = self._bitrate
            encoder.time_base = fractions.Fraction(1, OPUS_RATE)
            encoder.open()
            self._encoder = encoder
        return bytes(self._encoder.extradata or b"")

    def process(self, item: tuple[bytes, int]) -> list[AacOut]:
        data, pts_ms = item
        if self._decoder is None:
            decoder: Any = av.CodecContext.create("libopus", "r")
            decoder.sample_rate = OPUS_RATE
            decoder.layout = "stereo"
            decoder.format = "s16"
            self._decoder = decoder
            self._resampler = av.AudioResampler(format="fltp", layout="stereo", rate=OPUS_RATE, frame_size=AAC_FRAME)
        if self._encoder is None:
            self.prepare()
        if self._base_ms is None:
            self._base_ms = pts_ms
        packet = av.Packet(data)
        packet.pts = pts_ms
        packet.time_base = fractions.Fraction(1, 1000)
        out: list[AacOut] = []
        config = bytes(self._encoder.extradata or b"")
        for frame in self._decoder.decode(packet):
            for resampled in self._resampler.resample(frame):
                resampled.pts = self._samples
                self._samples += resampled.samples
                for encoded in self._encoder.encode(resampled):
                    pts = self._base_ms + (encoded.pts or 0) * 1000 // OPUS_RATE
                    out.append(AacOut(config, bytes(encoded), max(pts, 0)))
        return out
