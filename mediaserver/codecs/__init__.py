"""Codec knowledge shared by every protocol: parameter sets, resolution, framing, audio configs, codec strings.

Pure functions over bytes; nothing here knows RTMP, HLS, WebRTC or files. Protocols import these modules,
never each other.
"""

from __future__ import annotations


class CodecError(ValueError):
    """A codec configuration or bitstream that cannot be read (truncated, malformed, unsupported)."""
