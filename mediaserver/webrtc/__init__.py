"""WebRTC gateway: WHEP playback and WHIP ingest on top of aiortc.

- `codecs`: H.264 profile matching in SDP offers.
- `ice`: host candidates on configured addresses and ports.
- `packetize`: H.264 access units as RTP payloads, made once per stream.
- `rtpout`: a viewer's RTP stream (header fields, history, NACK answers), sent by us instead of aiortc.
- `sendqueue`: the RTP sends of all viewers, protected and sent in bounded slices on the event loop.
- `tracks`: per-viewer timestamps, the cached GOP at start, and the placeholder tracks aiortc's senders get.
- `transcode`: AAC -> Opus (shared per stream) and Opus -> AAC (WHIP) worker threads.
- `feed`: one per stream with WHEP viewers: its only WebRTC hub subscriber, fanning out to the viewers.
- `ingest`: WHIP publishers: received RTP frames back to FLV-body packets for the hub.
- `sessions`: session objects, the live-session registry, closing and housekeeping.
- `whep` / `whip`: offer handling for viewers and publishers.
- `http`: routes, CORS, offer validation, JSON errors and the sessions listing.
- `metrics`: counters and the Prometheus collector.
- `service`: composes the above into `WebrtcService`.
"""
