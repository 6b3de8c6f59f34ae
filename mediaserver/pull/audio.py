"""G.711 audio (A-law or µ-law, 8 kHz, as most IP cameras send it) made AAC once per source.

HLS (fMP4) and RTMP players expect AAC, so a camera's G.711 is decoded, resampled to 16 kHz mono and encoded
to AAC-LC by PyAV in the puller's own thread, once however many viewers there are (WebRTC then takes the AAC as
it takes a pushed stream's). Output times follow the samples encoded, anchored at the first input packet, so
the track stays on the camera's clock.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, cast

import av

G711_CODECS = ("pcm_alaw", "pcm_mulaw")
OUTPUT_RATE = 16_000
OUTPUT_BITRATE = 32_000
# AAC-LC codes 1024 samples a frame.
AAC_FRAME = 1024


class G711ToAac:
    def __init__(self, codec_name: str, sample_rate: int = 8000) -> None:
        if codec_name not in G711_CODECS:
            raise ValueError(f"not G.711: {codec_name}")
        self._rate = sample_rate or 8000
        self._decoder: Any = cast(Any, av.CodecContext.create(codec_name, "r"))
        self._decoder.sample_rate = self._rate
        self._decoder.layout = "mono"
        self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=OUTPUT_RATE)
        self._fifo = av.AudioFifo()
        self._encoder: Any = cast(Any, av.CodecContext.create("aac", "w"))
        self._encoder.sample_rate = OUTPUT_RATE
        self._encoder.layout = "mono"
        self._encoder.format = "fltp"
        self._encoder.bit_rate = OUTPUT_BITRATE
        self._encoder.time_base = Fraction(1, OUTPUT_RATE)
        self._encoder.open()
        # The AudioSpecificConfig, known once the encoder is open.
        self.config = bytes(self._encoder.extradata or b"")
        self._origin_ms: int | None = None
        self._encoded = 0  # samples handed to the encoder

    def transcode(self, data: bytes, dts_ms: int) -> list[tuple[bytes, int]]:
        """(raw AAC frame, time in ms) for what this G.711 packet completes (often nothing, sometimes two)."""
        if self._origin_ms is None:
            self._origin_ms = dts_ms
        packet = av.Packet(data)
        out: list[tuple[bytes, int]] = []
        for frame in self._decoder.decode(packet):
            for resampled in self._resampler.resample(frame):
                resampled.pts = None
                self._fifo.write(resampled)
        while self._fifo.samples >= AAC_FRAME:
            chunk = self._fifo.read(AAC_FRAME)
            if chunk is None:
                break
            chunk.pts = self._encoded
            chunk.time_base = Fraction(1, OUTPUT_RATE)
            self._encoded += AAC_FRAME
            for encoded in self._encoder.encode(chunk):
                if encoded.pts is None:
                    continue
                ms = self._origin_ms + round(encoded.pts * 1000 / OUTPUT_RATE)
                out.append((bytes(encoded), ms))
        return out
