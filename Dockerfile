FROM python:3.11-slim-bookworm

# PyAV wheels bundle FFmpeg; nothing else from the system is needed at run time.
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mediaserver ./mediaserver
COPY control ./control
COPY web ./web
COPY config.example.toml ./
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home /app mediaserver \
    && mkdir -p /data \
    && chown mediaserver /data

USER 10001
ENV MEDIASERVER_SERVER_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 1935 1936 8080
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["mediaserver"]
CMD ["serve"]
