"""Relay: live streams pushed to other RTMP(S) servers (a restream to a video platform, another node of ours).

Pulling from another server is a pulled source (`mediaserver.pull`); this package is the pushing half.
"""
