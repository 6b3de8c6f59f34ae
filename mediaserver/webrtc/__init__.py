"""WebRTC gateway: WHEP playback and WHIP ingest on top of aiortc.

- `codecs`: H.264 profile matching in SDP offers.
- `ice`: host candidates on configured addresses and ports.
- `tracks`: per-peer aiortc tracks that hand pre-encoded `av.Packet`s to the RTP sender.
- `transcode`: AAC -> Opus (shared per stream) and Opus -> AAC (WHIP) worker threads.
- `feed`: one per stream with WHEP viewers: its only WebRTC hub subscriber, fanning out to the viewers.
- `ingest`: WHIP publishers: received RTP frames back to FLV-body packets for the hub.
- `sessions`: session objects, the live-session registry, closing and housekeeping.
- `whep` / `whip`: offer handling for viewers and publishers.
- `http`: routes, CORS, offer validation, JSON errors and the sessions listing.
- `metrics`: counters and the Prometheus collector.
- `service`: composes the above into `WebrtcService`.
"""
