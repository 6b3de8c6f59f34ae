# syntax=docker/dockerfile:1

# mediaserver container image: a wheel built in a full Python image, installed into a slim one.
#   docker build -t mediaserver .
#   docker run -p 1935:1935 -p 8080:8080 -v mediaserver-data:/var/lib/mediaserver mediaserver
# deploy/README.md covers Compose, Kubernetes and systemd.

# --- builder: the project's wheel plus a wheel of every dependency ------------------------------------------
# The full image has a compiler, in case a dependency ever comes as an sdist only; none of it reaches the runtime.
FROM python:3.11-bookworm AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mediaserver ./mediaserver
COPY control ./control
# web/ travels inside the wheel as data files (<prefix>/share/mediaserver/web, see pyproject.toml).
COPY web ./web
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime --------------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="mediaserver" \
      org.opencontainers.image.description="RTMP(S)/WHIP in, RTMP/LL-HLS/WebRTC out, recordings to S3"

# No Debian ffmpeg: PyAV's wheels carry their own FFmpeg libraries, and the server starts no external program.
# A virtual environment gives the web pages a known home: sys.prefix/share/mediaserver/web = /opt/mediaserver/...
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/mediaserver \
    && /opt/mediaserver/bin/pip install --no-cache-dir --no-index --find-links /wheels mediaserver \
    && test -f /opt/mediaserver/share/mediaserver/web/index.html \
    && groupadd --system --gid 10001 mediaserver \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/mediaserver --no-create-home \
               --shell /usr/sbin/nologin mediaserver \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/mediaserver

ENV PATH=/opt/mediaserver/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MEDIASERVER_SERVER_DATA_DIR=/var/lib/mediaserver

# Recordings (hot tier), thumbnails, export scratch space, and with the embedded defaults the SQLite
# database and the generated JWT secret.
VOLUME ["/var/lib/mediaserver"]
WORKDIR /var/lib/mediaserver
USER 10001:10001

# RTMP, RTMPS (when [rtmps] cert_file and key_file are set), HTTP (API, /metrics, /healthz, HLS, WHEP/WHIP, pages).
EXPOSE 1935/tcp 1936/tcp 8080/tcp
# WebRTC media: the default config takes ephemeral UDP ports; deploy/ sets webrtc.udp_port_min/max to
# 40000-40009 (one port per session) so the range can be published: -p 40000-40009:40000-40009/udp.
EXPOSE 40000-40009/udp

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MEDIASERVER_HTTP_PORT', '8080'), timeout=4)"]

# The server stops cleanly on SIGTERM (docker stop's signal).
ENTRYPOINT ["mediaserver"]
CMD ["serve"]
