"""What the benchmark tools share, once each; the tools (`benchmarks.*_load`) are thin CLIs over it.

- `stats`: the one `percentile()` (nearest rank) every tool reports with.
- `procfs`: CPU time and RSS of process trees over a window, from /proc.
- `servers`: our server, nginx-rtmp and moto's S3 server as subprocesses on free ports: start, wait until ready, stop.
- `metrics`: our server's Prometheus text, and the figures the tools take from it.
- `flvfile`, `clip`: the reference clip (made once with ffmpeg), read and encoded as RTMP messages.
- `publish`: RTMP publishers replaying the clip at real-time pace, one timer for all.
- `measure`: one measurement window over a server and its publishers; the figures every run reports.
- `recordings`: a real recording made by the recorder from the clip; a camera's days of hourly files (real `.idx`,
  sparse media) and their index rows; the control plane's database through its store.
- `tiermove`: the control plane's tier move and a read-back through a tier, timed, with this process's CPU and the
  S3 server's.
- `httpload`: closed-loop HTTP requests, bounded in count and time, timed per request.
- `report`: the one JSON report writer; the Markdown table and summary the tools print.
- `runner`: logging, the fd limit, one run per `--target`, uvloop with clean interruption.

Nothing here imports a tool.
"""
