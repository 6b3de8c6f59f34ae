"""The transcoding worker: `python -m mediaserver.transcode.worker`, one process per source stream.

It reads the source's H.264 over stdin (see `framing`), decodes each picture once, scales it to every rung and
encodes each rung with libx264 (no B-frames, `tune=zerolatency`, one picture in, one out), and writes the rungs'
access units to stdout. x264 never places a keyframe on its own (`keyint=infinite`, no scene cuts): every rung
gets an IDR exactly on the pictures that were keyframes in the source, so all rungs and the original switch
at the same instants. Logs go to stderr, one key=value line per event; the server forwards them.

A process of its own keeps decoding and encoding off the server's event loop and its GIL: a busy ladder slows
itself (its input queue in the server then skips to the next keyframe), never ingest.
"""

from __future__ import annotations

import contextlib
import os
import sys
from fractions import Fraction
from typing import Any, BinaryIO

import av
from av.video.frame import PictureType, VideoFrame
from av.video.reformatter import VideoReformatter

from mediaserver.codecs import CodecError
from mediaserver.codecs.annexb import split_annexb, to_avcc
from mediaserver.codecs.h264 import NAL_PPS, NAL_SPS, avc_decoder_config, nal_type
from mediaserver.transcode.framing import FramingError, Kind, Message, header, read_message_sync

MS = Fraction(1, 1000)
# Access unit delimiters carry nothing an AVCC consumer needs.
_NAL_AUD = 9


def log(event: str, **fields: object) -> None:
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    print(f"event={event} {text}".rstrip(), file=sys.stderr, flush=True)


def _annexb_to_avcc(data: bytes) -> tuple[bytes, list[bytes], list[bytes]]:
    """The access unit as AVCC without parameter sets, and the SPS and PPS it carried."""
    nals = split_annexb(data)
    sps = [n for n in nals if nal_type(n) == NAL_SPS]
    pps = [n for n in nals if nal_type(n) == NAL_PPS]
    rest = [n for n in nals if nal_type(n) not in (NAL_SPS, NAL_PPS, _NAL_AUD)]
    return to_avcc(rest), sps, pps


class RungEncoder:
    def __init__(self, index: int, spec: dict[str, Any], preset: str, threads: int, fps: float) -> None:
        self.index = index
        self.name = str(spec["name"])
        self.width = int(spec["width"])
        self.height = int(spec["height"])
        self.bitrate = int(spec["bitrate"])
        self.reformatter = VideoReformatter()
        self.threads = threads
        self.last_pts: int | None = None
        kbps = max(self.bitrate // 1000, 1)
        encoder = av.CodecContext.create("libx264", "w")
        assert isinstance(encoder, av.VideoCodecContext)
        encoder.width, encoder.height, encoder.pix_fmt = self.width, self.height, "yuv420p"
        encoder.time_base = MS
        # Timestamps come in milliseconds; the nominal rate is what x264 sizes the level (and VBV) by.
        encoder.framerate = Fraction(round(fps * 1000), 1000)
        encoder.max_b_frames = 0
        encoder.bit_rate = self.bitrate
        # SPS/PPS in extradata (the rung's avcC), not repeated in band.
        encoder.flags |= av.codec.context.Flags.global_header
        encoder.options = {
            "preset": preset,
            "tune": "zerolatency",
            "forced-idr": "1",
            "threads": str(threads),
            # Keyframes only where the source has them (forced below); VBV caps each rung near its bitrate.
            "x264-params": f"keyint=infinite:scenecut=0:vbv-maxrate={kbps}:vbv-bufsize={kbps}",
        }
        encoder.open()
        self.encoder = encoder
        self.config = self._avcc_config(bytes(encoder.extradata or b""))

    @staticmethod
    def _avcc_config(extradata: bytes) -> bytes:
        if extradata[:1] == b"\x01":
            return extradata
        _, sps, pps = _annexb_to_avcc(extradata)
        if not sps or not pps:
            raise CodecError("libx264 gave no parameter sets")
        return avc_decoder_config(sps, pps)

    def encode(self, frame: VideoFrame, pts: int, keyframe: bool) -> list[av.Packet[Any]]:
        scaled = self.reformatter.reformat(frame, self.width, self.height, "yuv420p", threads=self.threads)
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1  # x264 refuses timestamps that do not increase
        self.last_pts = pts
        scaled.pts = pts
        scaled.time_base = MS
        scaled.pict_type = PictureType.I if keyframe else PictureType.NONE
        return list(self.encoder.encode(scaled))

    def flush(self) -> list[av.Packet[Any]]:
        with contextlib.suppress(av.FFmpegError):
            return list(self.encoder.encode(None))
        return []


class Worker:
    def __init__(self, settings: dict[str, Any], out: BinaryIO) -> None:
        self.out = out
        self.preset = str(settings.get("preset", "veryfast"))
        self.threads = int(settings.get("threads", 1))
        self.fps = min(max(float(settings.get("fps") or 30.0), 1.0), 240.0)
        self.rung_specs: list[dict[str, Any]] = list(settings["rungs"])
        self.rungs: list[RungEncoder] | None = None
        self.decoder: av.VideoCodecContext | None = None
        self.source_config = b""
        # Source pictures that were keyframes, by pts: the decoder hands pictures back in presentation order.
        self.keyframes: set[int] = set()
        self.frames = 0
        self.decode_errors = 0

    # ----- input ------------------------------------------------------------------------------------------

    def configure(self, avcc: bytes) -> None:
        if avcc == self.source_config and self.decoder is not None:
            return
        if self.decoder is not None:
            self._drain(self.decoder, None)
        decoder = av.CodecContext.create("h264", "r")
        assert isinstance(decoder, av.VideoCodecContext)
        decoder.extradata = avcc
        decoder.thread_type = "SLICE"  # frame threads would hold pictures back
        decoder.thread_count = self.threads
        decoder.open()
        self.decoder = decoder
        self.source_config = avcc
        self.keyframes.clear()
        log("transcode_worker_configured", avcc_bytes=len(avcc))

    def video(self, message: Message) -> None:
        if self.decoder is None:
            return
        packet = av.Packet(message.payload)
        packet.pts, packet.dts, packet.time_base = message.pts, message.dts, MS
        if message.keyframe:
            self.keyframes.add(message.pts)
        self._drain(self.decoder, packet)

    def _drain(self, decoder: av.VideoCodecContext, packet: av.Packet[Any] | None) -> None:
        try:
            frames = decoder.decode(packet)
        except av.FFmpegError as exc:
            self.decode_errors += 1
            if self.decode_errors <= 5 or self.decode_errors % 100 == 0:
                log("transcode_decode_error", count=self.decode_errors, error=str(exc).replace(" ", "_")[:120])
            return
        for frame in frames:
            self._picture(frame)

    # ----- output -----------------------------------------------------------------------------------------

    def _picture(self, frame: VideoFrame) -> None:
        if frame.pts is None:
            return
        pts = int(frame.pts)
        keyframe = pts in self.keyframes or bool(frame.key_frame)
        self.keyframes.discard(pts)
        if len(self.keyframes) > 64:  # pts of pictures the decoder dropped
            self.keyframes = {p for p in self.keyframes if p > pts}
        if self.rungs is None:
            self.rungs = [
                RungEncoder(i, spec, self.preset, self.threads, self.fps) for i, spec in enumerate(self.rung_specs)
            ]
            for rung in self.rungs:
                # Timed as the first picture: the rung's sequence header goes out just before it.
                self._write(Kind.CONFIG, rung.config, rung.index, pts, pts)
            names = ",".join(r.name for r in self.rungs)
            log("transcode_worker_ready", rungs=names, source=f"{frame.width}x{frame.height}")
        for rung in self.rungs:
            for out in rung.encode(frame, pts, keyframe):
                self._packet(rung, out)
        self.frames += 1
        self.out.flush()

    def _packet(self, rung: RungEncoder, packet: av.Packet[Any]) -> None:
        if packet.pts is None:
            return
        payload, sps, pps = _annexb_to_avcc(bytes(packet))
        if sps and pps:
            config = avc_decoder_config(sps, pps)
            if config != rung.config:
                rung.config = config
                self._write(Kind.CONFIG, config, rung.index, int(packet.pts), int(packet.pts))
        if not payload:
            return
        pts = int(packet.pts)
        dts = int(packet.dts) if packet.dts is not None else pts
        self._write(Kind.VIDEO, payload, rung.index, pts, dts, bool(packet.is_keyframe))

    def _write(self, kind: Kind, payload: bytes, rung: int, pts: int = 0, dts: int = 0, keyframe: bool = False) -> None:
        self.out.write(header(kind, len(payload), rung, pts, dts, keyframe))
        self.out.write(payload)

    def finish(self) -> None:
        if self.decoder is not None:
            self._drain(self.decoder, None)
        for rung in self.rungs or []:
            for out in rung.flush():
                self._packet(rung, out)
        self.out.flush()


def run(stdin: BinaryIO, stdout: BinaryIO) -> int:
    first = read_message_sync(stdin)
    if first is None or first.kind is not Kind.SETUP:
        log("transcode_worker_failed", reason="no_setup")
        return 2
    settings = first.json()
    with contextlib.suppress(OSError):
        os.nice(int(settings.get("nice", 0)))
    worker = Worker(settings, stdout)
    log("transcode_worker_started", rungs=len(worker.rung_specs), preset=worker.preset)
    while (message := read_message_sync(stdin)) is not None:
        if message.kind is Kind.CONFIG:
            worker.configure(message.payload)
        elif message.kind is Kind.VIDEO:
            worker.video(message)
    worker.finish()
    log("transcode_worker_exit", frames=worker.frames, decode_errors=worker.decode_errors)
    return 0


def main() -> int:
    try:
        return run(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:
        return 0  # the server went away: nothing left to do
    except (FramingError, CodecError, av.FFmpegError) as exc:
        log("transcode_worker_failed", error=str(exc).replace(" ", "_")[:200])
        return 1


if __name__ == "__main__":
    sys.exit(main())
