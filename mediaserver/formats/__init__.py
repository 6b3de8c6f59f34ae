"""Container formats shared by every protocol: FLV tag bodies (RTMP's payloads) and fragmented MP4 (CMAF)."""
