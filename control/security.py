"""Password hashing (argon2id), JWT access, play and media tokens, opaque secrets."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import jwt
from argon2 import PasswordHasher as Argon2Hasher
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mediaserver.config import AuthApiConfig, ConfigError

log = logging.getLogger("control.security")

ACCESS_AUDIENCE = "mediaserver-api"
PLAY_AUDIENCE = "mediaserver-play"
MEDIA_AUDIENCE = "mediaserver-media"
API_TOKEN_PREFIX = "msk_"


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_stream_key() -> str:
    return secrets.token_urlsafe(24)


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def new_id() -> str:
    return uuid.uuid4().hex


class PasswordHasher:
    """argon2id hashing off the event loop (one hash costs tens of milliseconds by design)."""

    def __init__(self, time_cost: int = 3, memory_kib: int = 65536, parallelism: int = 4) -> None:
        self._hasher = Argon2Hasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID)
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    def hash_sync(self, password: str) -> str:
        return self._hasher.hash(password)

    async def verify(self, hashed: str | None, password: str) -> bool:
        """Constant work whether or not the user exists: an unknown user verifies a dummy hash."""
        if hashed is None:
            if self._dummy is None:
                self._dummy = await self.hash(secrets.token_hex(16))
            hashed = self._dummy
            await asyncio.to_thread(self._check, hashed, password)
            return False
        return await asyncio.to_thread(self._check, hashed, password)

    def _check(self, hashed: str, password: str) -> bool:
        try:
            return self._hasher.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, hashed: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(hashed)
        except InvalidHashError:
            return False


class TokenError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class MediaGrant:
    """What a media token allows: reading one recording's bytes, on behalf of one user."""

    recording_id: int
    user_id: int


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    role: str
    session_id: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class PlayClaims:
    camera_id: str
    expires_at: int


_Claims = TypeVar("_Claims", AccessClaims, PlayClaims)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def load_or_create_secret(path: Path) -> str:
    """The HS256 secret kept in the data directory, created (mode 0600) on first use."""
    try:
        secret = path.read_text().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    log.info("event=jwt_secret_created path=%s", path)
    return secret


# Checked access tokens remembered (about 300 bytes each).
VERIFIED_TOKENS_MAX = 4096
# Checked play tokens remembered: each HLS viewer presents its own, on every part and segment request.
VERIFIED_PLAY_TOKENS_MAX = 65536


def _known(verified: dict[str, _Claims], token: str) -> _Claims | None:
    """The claims of a token checked before, if it is still good; raises TokenError once it has expired."""
    known = verified.get(token)
    if known is None:
        return None
    # Same bytes, same signature: only the clock can have changed its verdict.
    if time.time() < known.expires_at:
        return known
    del verified[token]
    raise TokenError("token_expired")


def _keep(verified: dict[str, _Claims], token: str, claims: _Claims, most: int) -> None:
    if len(verified) >= most:
        del verified[next(iter(verified))]  # the oldest checked
    verified[token] = claims


class TokenService:
    """Signs and checks the JWTs of the API (access) and of playback URLs (play)."""

    def __init__(
        self,
        algorithm: str,
        signing_key: Any,
        verify_key: Any,
        issuer: str = "mediaserver",
        access_ttl: int = 900,
        play_ttl: int = 300,
    ) -> None:
        self.algorithm = algorithm
        self._signing_key = signing_key
        self._verify_key = verify_key
        self.issuer = issuer
        self.access_ttl = access_ttl
        self.play_ttl = play_ttl
        # Access tokens whose signature and claims were checked, by the token itself: a dashboard sends the same
        # token with every request, and checking it again cost about a tenth of a small request's CPU.
        self._verified: dict[str, AccessClaims] = {}
        self._verified_play: dict[str, PlayClaims] = {}

    def use_secret(self, secret: str) -> None:
        if len(secret) < 32:
            raise ConfigError("auth_api.jwt_secret must be at least 32 characters")
        self._signing_key = self._verify_key = secret
        self._verified.clear()
        self._verified_play.clear()

    @property
    def ready(self) -> bool:
        return self._signing_key is not None

    @classmethod
    def from_config(
        cls, config: AuthApiConfig, data_dir: Path, embedded: bool, *, defer_secret: bool = False
    ) -> TokenService:
        """With `defer_secret`, a secret still to be generated is left for `use_secret` (at start)."""
        if config.jwt_algorithm == "HS256":
            secret = config.jwt_secret
            if not secret:
                if not embedded:
                    raise ConfigError(
                        "auth_api.jwt_secret must be set with a shared database (every node signs with it)"
                    )
                if defer_secret:
                    return cls("HS256", None, None, config.jwt_issuer, config.access_token_ttl, config.play_token_ttl)
                secret = load_or_create_secret(data_dir / "jwt_secret")
            if len(secret) < 32:
                raise ConfigError("auth_api.jwt_secret must be at least 32 characters")
            return cls("HS256", secret, secret, config.jwt_issuer, config.access_token_ttl, config.play_token_ttl)
        private = _read(config.jwt_private_key_file)
        public = _read(config.jwt_public_key_file)
        service = cls(
            config.jwt_algorithm, private, public, config.jwt_issuer, config.access_token_ttl, config.play_token_ttl
        )
        try:  # fail at start, not at the first login
            service.decode_access(service.issue_access(0, "viewer", "check")[0])
        except (TokenError, ValueError, jwt.PyJWTError) as exc:
            raise ConfigError(f"auth_api key pair unusable for {config.jwt_algorithm}: {exc}") from exc
        return service

    def _encode(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._signing_key, algorithm=self.algorithm)

    def _decode(self, token: str, audience: str, required: list[str]) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._verify_key,
                algorithms=[self.algorithm],
                audience=audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud", *required]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token_expired") from exc
        except jwt.PyJWTError as exc:
            raise TokenError("invalid_token") from exc
        return claims

    def issue_access(self, user_id: int, role: str, session_id: str) -> tuple[str, int]:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": ACCESS_AUDIENCE,
            "sub": str(user_id),
            "role": role,
            "sid": session_id,
            "jti": secrets.token_hex(8),
            "iat": now,
            "exp": now + self.access_ttl,
        }
        return self._encode(claims), self.access_ttl

    def decode_access(self, token: str) -> AccessClaims:
        known = _known(self._verified, token)
        if known is not None:
            return known
        claims = self._decode(token, ACCESS_AUDIENCE, ["sub", "sid", "role"])
        try:
            access = AccessClaims(int(claims["sub"]), str(claims["role"]), str(claims["sid"]), int(claims["exp"]))
        except (TypeError, ValueError) as exc:
            raise TokenError("invalid_token") from exc
        _keep(self._verified, token, access, VERIFIED_TOKENS_MAX)
        return access

    def issue_play(self, camera_id: str, ttl: int | None = None) -> tuple[str, int]:
        now = int(time.time())
        expires = now + (ttl or self.play_ttl)
        claims = {"iss": self.issuer, "aud": PLAY_AUDIENCE, "cam": camera_id, "iat": now, "exp": expires}
        return self._encode(claims), expires

    def play_claims(self, token: str) -> PlayClaims:
        """The camera a play token is good for, and until when."""
        known = _known(self._verified_play, token)
        if known is not None:
            return known
        claims = self._decode(token, PLAY_AUDIENCE, ["cam"])
        try:
            play = PlayClaims(str(claims["cam"]), int(claims["exp"]))
        except (TypeError, ValueError) as exc:
            raise TokenError("invalid_token") from exc
        _keep(self._verified_play, token, play, VERIFIED_PLAY_TOKENS_MAX)
        return play

    def issue_media(self, recording_id: int, user_id: int, ttl: int | None = None) -> tuple[str, int]:
        """A token for one recording's bytes, for URLs in playback playlists (players send no bearer header)."""
        now = int(time.time())
        expires = now + (ttl or self.play_ttl)
        claims = {
            "iss": self.issuer,
            "aud": MEDIA_AUDIENCE,
            "rec": recording_id,
            "sub": str(user_id),
            "iat": now,
            "exp": expires,
        }
        return self._encode(claims), expires

    def media_grant(self, token: str) -> MediaGrant:
        claims = self._decode(token, MEDIA_AUDIENCE, ["rec", "sub"])
        try:
            return MediaGrant(int(claims["rec"]), int(claims["sub"]))
        except (TypeError, ValueError) as exc:
            raise TokenError("invalid_token") from exc
