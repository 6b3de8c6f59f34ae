"""Reading requests through the pydantic models, within the configured body size."""

from __future__ import annotations

from typing import TypeVar
from urllib.parse import parse_qsl

from aiohttp import web
from pydantic import BaseModel, ValidationError

from control.api.base import ApiError, parse_json_body, parse_query, read_raw_body, validation_error
from control.services import services

M = TypeVar("M", bound=BaseModel)


async def body(request: web.Request, model: type[M]) -> M:
    raw = await read_raw_body(request, services(request).config.api.max_body_bytes)
    return parse_json_body(raw, request.content_type if raw else "", model)


async def optional_body(request: web.Request, model: type[M]) -> M | None:
    raw = await read_raw_body(request, services(request).config.api.max_body_bytes)
    if not raw.strip():
        return None
    return parse_json_body(raw, request.content_type, model)


async def form_body(request: web.Request, model: type[M]) -> M:
    raw = await read_raw_body(request, services(request).config.api.max_body_bytes)
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data", ""):
        raise ApiError(415, "unsupported_media_type", "send application/x-www-form-urlencoded")
    if request.content_type == "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "send application/x-www-form-urlencoded")
    try:
        fields = dict(parse_qsl(raw.decode(), keep_blank_values=True, max_num_fields=100))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "bad_form", "the form body cannot be decoded") from exc
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc) from exc


def query(request: web.Request, model: type[M]) -> M:
    return parse_query(request, model)
