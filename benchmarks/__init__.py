"""Benchmarks: thin CLIs (`python -m benchmarks.<tool>`) over one shared library, `benchmarks.lib`.

Tools: `rtmp_load`, `hls_load` (with its viewers, `hls_viewer`), `webrtc_load` (with its viewer worker
process, `webrtc_viewers`), `api_load`, and `clip` (makes the reference clip). No tool imports another.
See benchmarks/README.md.
"""
