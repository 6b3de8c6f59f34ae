"""A stand-in IP camera: GStreamer's RTSP server with live H.264 + AAC test media at rtsp://127.0.0.1:PORT/cam.

Run with Debian's /usr/bin/python3 (python3-gi, gir1.2-gst-rtsp-server-1.0): `rtsp_camera.py PORT [USER PASS]`.
Prints "ready" once it listens; runs until killed.
"""

import os
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

# CAMERA_SIZE ("1280x720") and CAMERA_KBPS set the picture; the defaults keep tests light.
WIDTH, HEIGHT = os.environ.get("CAMERA_SIZE", "320x240").split("x")
KBPS = os.environ.get("CAMERA_KBPS", "500")
PIPELINE = (
    f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={WIDTH},height={HEIGHT},framerate=25/1 "
    f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=50 bframes=0 bitrate={KBPS} "
    "! video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96 config-interval=1 "
    + (
        # CAMERA_AUDIO=pcma: G.711 A-law at 8 kHz, as most IP cameras send it.
        "audiotestsrc is-live=true wave=sine ! audio/x-raw,rate=8000,channels=1 ! alawenc ! rtppcmapay name=pay1 )"
        if os.environ.get("CAMERA_AUDIO") == "pcma"
        else "audiotestsrc is-live=true wave=sine ! audio/x-raw,rate=48000,channels=2 ! avenc_aac "
        "! rtpmp4gpay name=pay1 pt=97 )"
    )
)


def main() -> None:
    Gst.init(None)
    port = sys.argv[1]
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    factory.set_shared(True)
    if len(sys.argv) == 4:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        if os.environ.get("CAMERA_AUTH") == "digest":
            # Digest only (what Hikvision and Dahua cameras ask for by default): Basic is refused.
            auth.add_digest(sys.argv[2], sys.argv[3], token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        else:
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(sys.argv[2], sys.argv[3]), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role("viewer")
        permissions.add_permission_for_role("viewer", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
        permissions.add_permission_for_role("viewer", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit("cannot listen")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
