"""WebRTC gateway: WHEP playback and WHIP ingest on top of aiortc.

- `annexb`: AVCC <-> Annex-B conversion and avcC records (pure functions).
- `codecs`: H.264 profile matching in SDP offers.
- `ice`: host candidates on configured addresses and ports.
- `tracks`: per-peer aiortc tracks that hand pre-encoded `av.Packet`s to the RTP sender.
- `transcode`: AAC -> Opus (shared per stream) and Opus -> AAC (WHIP) worker threads.
- `feed`: the per-stream state shared by all WHEP viewers of a stream.
- `ingest`: WHIP publishers: received RTP frames back to FLV-body packets for the hub.
- `service`: sessions, HTTP handlers, housekeeping and metrics.
"""
