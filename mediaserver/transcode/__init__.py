"""ABR ladder: lower renditions of live H.264 streams, encoded in worker processes and published into the hub
as streams of their own (`live/cam_720p`), with an HLS master playlist over the original and its rungs."""
