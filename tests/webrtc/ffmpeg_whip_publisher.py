"""python -m tests.webrtc.ffmpeg_whip_publisher URL [--cert PEM --key PEM] [--seconds N]

Publishes a generated picture (libx264, constrained baseline, no B-frames, a keyframe a second) and a tone
(libopus, 48 kHz stereo) in real time with FFmpeg's own WHIP muxer, as PyAV bundles it. It stops after
`--seconds` or as soon as its standard input closes, then closes the muxer (which DELETEs the session).
Prints "PUBLISHING" once the WebRTC session is up (the first packet went through), "DONE" at the end; a
failure is a traceback and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import fractions
import sys
import threading
import time

import av
import numpy as np

FPS = 25
WIDTH, HEIGHT = 320, 240
SAMPLE_RATE = 48000
OPUS_FRAME = 960  # 20 ms


def _stdin_closed(stop: threading.Event) -> None:
    sys.stdin.read()
    stop.set()


def publish(url: str, seconds: float, cert: str, key: str) -> None:
    options = {"cert_file": cert, "key_file": key} if cert else {}
    container = av.open(url, "w", format="whip", options=options)
    video = container.add_stream("libx264", rate=FPS)
    video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    video.options = {"profile": "baseline", "preset": "ultrafast", "tune": "zerolatency", "g": str(FPS), "bf": "0"}
    audio = container.add_stream("libopus", rate=SAMPLE_RATE, layout="stereo")

    stop = threading.Event()
    threading.Thread(target=_stdin_closed, args=(stop,), daemon=True).start()
    started = time.monotonic()
    samples = 0
    frame_index = 0
    announced = False
    luma = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    chroma = np.full((HEIGHT // 2, WIDTH), 128, dtype=np.uint8)  # U then V, a quarter of the luma each
    while not stop.is_set() and frame_index < seconds * FPS:
        # A moving bar, so the frames differ.
        luma[:] = 16
        x = (frame_index * 4) % WIDTH
        luma[:, x : x + 16] = 235
        frame = av.VideoFrame.from_ndarray(np.concatenate([luma, chroma]), format="yuv420p")
        frame.pts, frame.time_base = frame_index, fractions.Fraction(1, FPS)
        for packet in video.encode(frame):
            container.mux(packet)  # the first one sets the session up (offer, ICE, DTLS)
        frame_index += 1
        while samples < frame_index * SAMPLE_RATE // FPS:
            t = (samples + np.arange(OPUS_FRAME)) / SAMPLE_RATE
            tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
            chunk = av.AudioFrame.from_ndarray(np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo")
            chunk.sample_rate, chunk.pts, chunk.time_base = SAMPLE_RATE, samples, fractions.Fraction(1, SAMPLE_RATE)
            for packet in audio.encode(chunk):
                container.mux(packet)
            samples += OPUS_FRAME
        if not announced:
            print("PUBLISHING", flush=True)
            announced = True
        delay = started + frame_index / FPS - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    for stream in (video, audio):
        for packet in stream.encode(None):
            container.mux(packet)
    container.close()
    print("DONE", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--cert", default="", help="PEM certificate for DTLS (FFmpeg generates one otherwise)")
    parser.add_argument("--key", default="", help="PEM private key of --cert")
    args = parser.parse_args()
    # FFmpeg's own messages (the WHIP muxer says why a session failed) go to stderr.
    av.logging.restore_default_callback()
    av.logging.set_libav_level(av.logging.VERBOSE)
    publish(args.url, args.seconds, args.cert, args.key)


if __name__ == "__main__":
    main()
