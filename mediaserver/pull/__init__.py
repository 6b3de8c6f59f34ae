"""Pulled sources: cameras and servers that serve a stream and wait to be read (RTSP, RTMP, HTTP-FLV)."""
