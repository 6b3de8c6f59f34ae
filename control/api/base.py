"""Route declarations, request parsing and the error type shared by every API module."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from control.rbac import Permission
from mediaserver.http.errors import error_response

if TYPE_CHECKING:
    from control.services import Principal, Services

API_PREFIX = "/api/v1"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)
CAMERA_ID = re.compile(r"^[0-9a-f]{32}$")
# Checks a signed `?token=` in place of a bearer token (media URLs for players that cannot send headers).
QueryTokenAuth = Callable[[web.Request, "Services"], Awaitable["Principal"]]


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}

    def response(self) -> web.Response:
        if self.details is None:
            response = error_response(self.status, self.code, self.message)
        else:
            body = {"error": {"code": self.code, "message": self.message, "details": self.details}}
            response = web.json_response(body, status=self.status)
        response.headers.update(self.headers)
        return response


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what}_not_found", f"no such {what}")


@dataclass(frozen=True, slots=True)
class ApiRoute:
    method: str
    path: str
    handler: Handler
    permission: Permission | None
    summary: str
    tag: str
    # False: no credentials needed (login, refresh, the nginx-rtmp callback, the OpenAPI document).
    authenticated: bool = True
    body: type[BaseModel] | None = None
    body_required: bool = True
    form: bool = False
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    # A success answer that is not JSON (a picture, a playlist, a video): its content type.
    media_type: str | None = None
    # Answers Range requests (206, 416).
    ranges: bool = False
    query_token: QueryTokenAuth | None = None

    @property
    def full_path(self) -> str:
        return API_PREFIX + self.path


@dataclass
class RouteTable:
    tag: str
    routes: list[ApiRoute] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        permission: Permission | None,
        summary: str,
        authenticated: bool = True,
        body: type[BaseModel] | None = None,
        body_required: bool = True,
        form: bool = False,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        errors: tuple[int, ...] = (),
        media_type: str | None = None,
        ranges: bool = False,
        query_token: QueryTokenAuth | None = None,
    ) -> Callable[[Handler], Handler]:
        if authenticated is False and permission is not None:
            raise ValueError("a public route cannot require a permission")

        def register(handler: Handler) -> Handler:
            self.routes.append(
                ApiRoute(
                    method,
                    path,
                    handler,
                    permission,
                    summary,
                    self.tag,
                    authenticated,
                    body,
                    body_required,
                    form,
                    query,
                    response,
                    status,
                    errors,
                    media_type,
                    ranges,
                    query_token,
                )
            )
            return handler

        return register


def _error_details(exc: ValidationError) -> list[dict[str, Any]]:
    # Never echo the input back: it may be a password.
    return [
        {"loc": [str(part) for part in err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def validation_error(exc: ValidationError) -> ApiError:
    details = _error_details(exc)
    if any(d["type"] == "json_invalid" for d in details):
        return ApiError(400, "bad_json", "the request body is not valid JSON")
    return ApiError(422, "validation_failed", "the request is not valid", details)


async def read_raw_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "body_too_large", f"request bodies are limited to {limit} bytes")
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "body_too_large", f"request bodies are limited to {limit} bytes")
    return bytes(body)


def parse_json_body(raw: bytes, content_type: str, model: type[M]) -> M:
    if content_type not in ("application/json", "") and not content_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send application/json")
    try:
        return model.model_validate_json(raw or b"")
    except ValidationError as exc:
        raise validation_error(exc) from exc


def parse_query(request: web.Request, model: type[M]) -> M:
    values: dict[str, Any] = {}
    for key in request.query:
        items = request.query.getall(key)
        if len(items) > 1:
            raise ApiError(422, "validation_failed", f"query parameter {key!r} given more than once")
        values[key] = items[0]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def path_int(request: web.Request, name: str, what: str) -> int:
    raw = request.match_info.get(name, "")
    if not raw.isdigit() or len(raw) > 18:
        raise not_found(what)
    return int(raw)


def path_camera_id(request: web.Request) -> str:
    raw = request.match_info.get("camera_id", "")
    if not CAMERA_ID.match(raw):
        raise not_found("camera")
    return raw


def send(model: BaseModel | None, status: int = 200) -> web.Response:
    if model is None:
        return web.Response(status=status)
    return web.Response(body=model.model_dump_json(), status=status, content_type="application/json")


def send_plain(answer: dict[str, Any], status: int = 200) -> web.Response:
    """An answer already shaped as its response model's fields (plain values, datetimes included), encoded by
    the same serializer as `send`: for the busiest listings, where building the models costs more than the rest."""
    return web.Response(body=to_json(answer), status=status, content_type="application/json")
