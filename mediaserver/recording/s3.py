"""The cold tier: recordings in S3-compatible object storage (AWS S3, MinIO, Ceph RGW, ...), through aioboto3.

Objects are named `<prefix>/<yyyy>/<mm>/<dd>/<camera>/<start>.mp4` (and `.mp4.idx` beside), the same relative paths
as on the local tiers. `put_file` uploads a local file, in parts of `part_size` when it is larger than one part,
with the file's SHA-256 as object metadata; `sha256` reads the object back and hashes it, which is the check a tier
move relies on before it deletes its source (S3-compatible servers differ in which checksums they compute, and a
read-back works on all of them). Reads are ranged GETs of at most `part_size` each, streamed in chunks.

Credentials are handed to the session and never kept on this object, so no repr or log line can carry them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from mediaserver.config import RecordingConfig
from mediaserver.recording import layout
from mediaserver.recording.storage import READ_CHUNK, TierError

log = logging.getLogger("mediaserver.recording")

DEFAULT_PART_SIZE = 16 * 1024 * 1024
# The object metadata key that carries the recording's SHA-256 (sent as x-amz-meta-sha256).
CHECKSUM_METADATA = "sha256"
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _check_relative(relative: str) -> str:
    """The same rule as `layout.resolve` (and the same LayoutError): plain components, nothing that climbs out."""
    if not relative or relative.startswith("/") or "\\" in relative or "\x00" in relative:
        raise layout.LayoutError("not a relative recording path")
    if any(part in ("", ".", "..") for part in relative.split("/")):
        raise layout.LayoutError("path components '.', '..' and empty ones are refused")
    return relative


@contextlib.contextmanager
def _errors(tier: str, action: str) -> Iterator[None]:
    """S3 and transport failures as TierError (the message names the S3 error code, never a credential)."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "")) or "unknown"
        if code in _MISSING:
            raise TierError(f"{tier}: no such object") from exc
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        raise TierError(f"{tier}: {action} failed: {code} (HTTP {status})") from exc
    except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
        if isinstance(exc, TierError):
            raise
        raise TierError(f"{tier}: {action} failed: {type(exc).__name__}") from exc


class S3Tier:
    """A bucket (and a key prefix in it) as a storage tier."""

    def __init__(
        self,
        name: str,
        *,
        bucket: str,
        endpoint: str = "",
        prefix: str = "",
        region: str = "",
        access_key: str = "",
        secret_key: str = "",
        part_size: int = DEFAULT_PART_SIZE,
        max_attempts: int = 3,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self.bucket = bucket
        self.endpoint = endpoint
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        # Empty keys: botocore's own chain (environment, shared files, instance or pod role).
        self._session = aioboto3.Session(
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            region_name=region or "us-east-1",
        )
        self._config = AioConfig(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # Attempts in all, the first one included (botocore's "max_attempts" counts retries only).
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            # Checksums only where the API needs them: several S3-compatible servers refuse the newer trailers,
            # and moves verify by reading back anyway.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Self-hosted servers (MinIO, Ceph) are reached by path; AWS picks its own style.
            s3={"addressing_style": "path" if endpoint else "auto", "payload_signing_enabled": False},
        )
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"S3Tier(name={self.name!r}, endpoint={self.endpoint or 'aws'!r}, bucket={self.bucket!r})"

    def key(self, relative: str) -> str:
        _check_relative(relative)
        return f"{self.prefix}/{relative}" if self.prefix else relative

    async def _s3(self) -> Any:
        """One client (one connection pool) for the tier's lifetime, opened on first use."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                stack = contextlib.AsyncExitStack()
                with _errors(self.name, "connect"):
                    self._client = await stack.enter_async_context(
                        self._session.client("s3", endpoint_url=self.endpoint or None, config=self._config)
                    )
                self._stack = stack
        return self._client

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    # ----- Tier --------------------------------------------------------------------------------------------

    async def size(self, relative: str) -> int:
        return (await self.head(relative))[0]

    async def head(self, relative: str) -> tuple[int, str | None]:
        """Stored size and the SHA-256 kept in the object's metadata (None when there is none)."""
        s3 = await self._s3()
        with _errors(self.name, "head"):
            answer = await s3.head_object(Bucket=self.bucket, Key=self.key(relative))
        metadata = answer.get("Metadata") or {}
        return int(answer["ContentLength"]), metadata.get(CHECKSUM_METADATA)

    async def read(self, relative: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes [start, end) in chunks: one Range GET per `part_size` window, so no request stays open long."""
        key = self.key(relative)
        s3 = await self._s3()
        position = max(start, 0)
        total: int | None = None
        while (end is None or position < end) and (total is None or position < total):
            last = position + self.part_size - 1
            if end is not None:
                last = min(last, end - 1)
            try:
                with _errors(self.name, "read"):
                    answer = await s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={position}-{last}")
            except TierError as exc:
                if isinstance(exc.__cause__, ClientError) and _code(exc.__cause__) == "InvalidRange":
                    return  # start at or past the end (or an empty object): nothing to read
                raise
            first, total = _content_range(answer.get("ContentRange", ""))
            if first != position:
                answer["Body"].close()
                raise TierError(f"{self.name}: the server answered another range than asked")
            received = 0
            body = answer["Body"]
            with _errors(self.name, "read"):
                async with body:
                    while chunk := await body.read(READ_CHUNK):
                        received += len(chunk)
                        yield chunk
            if received == 0:
                return
            position += received

    async def read_all(self, relative: str) -> bytes:
        s3 = await self._s3()
        with _errors(self.name, "read"):
            answer = await s3.get_object(Bucket=self.bucket, Key=self.key(relative))
            body = answer["Body"]
            async with body:
                return bytes(await body.read())

    # ----- writing (tier moves) ----------------------------------------------------------------------------

    async def put_file(self, local: Path, relative: str, checksum: str) -> None:
        """Upload a local file under `relative`, its SHA-256 in the metadata; multipart past one part."""
        key = self.key(relative)
        s3 = await self._s3()
        metadata = {CHECKSUM_METADATA: checksum}
        try:
            size = (await asyncio.to_thread(local.stat)).st_size
        except OSError as exc:
            raise TierError(f"{self.name}: cannot read the source: {exc.strerror}") from exc
        if size <= self.part_size:
            data = await _read_part(local, 0, size)
            with _errors(self.name, "upload"):
                await s3.put_object(Bucket=self.bucket, Key=key, Body=data, Metadata=metadata)
            return
        with _errors(self.name, "upload"):
            upload = await s3.create_multipart_upload(Bucket=self.bucket, Key=key, Metadata=metadata)
        upload_id = upload["UploadId"]
        try:
            parts = []
            for number, offset in enumerate(range(0, size, self.part_size), start=1):
                data = await _read_part(local, offset, min(self.part_size, size - offset))
                with _errors(self.name, "upload"):
                    answer = await s3.upload_part(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
                    )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            with _errors(self.name, "upload"):
                await s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            # Parts of an unfinished upload are billed until aborted; best effort (S3 may be what failed).
            with contextlib.suppress(Exception):
                await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    async def sha256(self, relative: str) -> str:
        """The SHA-256 of the object as the server returns it now (a full read-back)."""
        digest = hashlib.sha256()
        async for chunk in self.read(relative):
            digest.update(chunk)
        return digest.hexdigest()

    async def delete(self, relative: str) -> None:
        """Remove an object and its `.idx`; an object already gone is not an error (S3 deletes are idempotent)."""
        s3 = await self._s3()
        # Two plain DeleteObject calls: DeleteObjects wants a Content-MD5 that some S3-compatible servers insist on.
        for key in (self.key(relative), self.key(relative + ".idx")):
            with _errors(self.name, "delete"):
                await s3.delete_object(Bucket=self.bucket, Key=key)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _content_range(header: str) -> tuple[int, int | None]:
    """(first byte, object size) from `Content-Range: bytes a-b/total`; (-1, None) when it is missing."""
    unit, _, spec = header.partition(" ")
    span, _, total = spec.partition("/")
    first = span.split("-", 1)[0]
    if unit != "bytes" or not first.isdigit():
        return -1, None
    return int(first), (int(total) if total.isdigit() else None)


async def _read_part(path: Path, offset: int, length: int) -> bytes:
    def read() -> bytes:
        with path.open("rb") as stream:
            stream.seek(offset)
            return stream.read(length)

    try:
        data = await asyncio.to_thread(read)
    except OSError as exc:
        raise TierError(f"cannot read the source: {exc.strerror}") from exc
    if len(data) != length:
        raise TierError("the source changed size while it was uploaded")
    return data


def from_config(recording: RecordingConfig) -> S3Tier | None:
    """The cold tier the [recording] section describes, or None when no bucket is set."""
    if not recording.s3_bucket:
        return None
    return S3Tier(
        "cold",
        bucket=recording.s3_bucket,
        endpoint=recording.s3_endpoint,
        prefix=recording.s3_prefix,
        region=recording.s3_region,
        access_key=recording.s3_access_key,
        secret_key=recording.s3_secret_key,
        part_size=recording.s3_part_size,
    )
