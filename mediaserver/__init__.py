"""Data plane: RTMP ingest and playback, the stream hub and the media consumers."""

__version__ = "0.1.0"
