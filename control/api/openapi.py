"""The OpenAPI 3.1 document, generated from the route table and the pydantic models."""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from control.api.base import ApiRoute, RouteTable
from control.api.schemas import ErrorBody
from control.services import SERVICES

routes = RouteTable("meta")
REF = "#/components/schemas/{model}"
COMMON_ERRORS = {
    400: "Malformed request",
    401: "Missing, expired, revoked or invalid credentials",
    403: "Not allowed for this role or token scope",
    404: "No such resource",
    409: "Conflicts with the current state",
    413: "Body too large",
    415: "Unsupported content type",
    416: "Range not satisfiable",
    422: "Validation failed",
    429: "Rate limited",
}
PATH_PARAMS = {
    "camera_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    "user_id": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
    "token_id": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
    "recording_id": {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
}
# Routes that take a media token in the query (`?token=`) as well as a bearer token.
MEDIA_TOKEN = {"type": "apiKey", "in": "query", "name": "token"}


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def add(self, model: type[BaseModel], mode: str) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
        for name, definition in schema.pop("$defs", {}).items():
            self.components.setdefault(name, definition)
        name = model.__name__
        self.components.setdefault(name, schema)
        return {"$ref": REF.format(model=name)}

    def inline(self, model: type[BaseModel], mode: str) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
        for name, definition in schema.pop("$defs", {}).items():
            self.components.setdefault(name, definition)
        return schema


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """Query parameters are omitted rather than null."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        rest = [o for o in options if o.get("type") != "null"]
        if len(rest) == 1:
            merged = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            merged.update(rest[0])
            return merged
    return {k: v for k, v in schema.items() if not (k == "default" and v is None)}


def _operation(route: ApiRoute, schemas: _Schemas) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
        "tags": [route.tag],
        "x-permission": route.permission.value if route.permission else None,
        "security": ([{"bearerAuth": []}] + ([{"mediaToken": []}] if route.query_token else []))
        if route.authenticated
        else [],
    }
    parameters: list[dict[str, Any]] = []
    for name in re.findall(r"{(\w+)}", route.path):
        parameters.append({"name": name, "in": "path", "required": True, "schema": PATH_PARAMS[name]})
    if route.query is not None:
        query = schemas.inline(route.query, "validation")
        required = set(query.get("required", []))
        for name, prop in query.get("properties", {}).items():
            param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
            param["schema"] = _without_null(prop)
            if "description" in prop:
                param["description"] = prop["description"]
            parameters.append(param)
    if parameters:
        op["parameters"] = parameters
    if route.body is not None:
        media = "application/x-www-form-urlencoded" if route.form else "application/json"
        op["requestBody"] = {
            "required": route.body_required,
            "content": {media: {"schema": schemas.add(route.body, "validation")}},
        }
    responses: dict[str, Any] = {}
    if route.media_type is not None:
        content = {route.media_type: {"schema": {"type": "string", "contentMediaType": route.media_type}}}
        responses[str(route.status)] = {"description": "OK", "content": content}
        if route.ranges:
            responses["206"] = {
                "description": "The byte range asked for (Range: bytes=first-last)",
                "headers": {"Content-Range": {"schema": {"type": "string"}, "description": "bytes first-last/size"}},
                "content": content,
            }
    elif route.status == 204 or route.response is None:
        responses[str(route.status)] = {"description": "Done"}
    else:
        responses[str(route.status)] = {
            "description": "OK" if route.status == 200 else "Created",
            "content": {"application/json": {"schema": schemas.add(route.response, "serialization")}},
        }
    codes = set(route.errors) | {429}
    if route.authenticated:
        codes |= {401, 403}
    if route.body is not None:
        codes |= {400, 413, 415, 422}
    if route.query is not None:
        codes |= {422}
    if route.ranges:
        codes |= {416}
    error_ref = schemas.add(ErrorBody, "serialization")
    for code in sorted(codes):
        responses[str(code)] = {
            "description": COMMON_ERRORS.get(code, "Error"),
            "content": {"application/json": {"schema": error_ref}},
        }
    op["responses"] = responses
    return op


def build_openapi(table: Sequence[ApiRoute], server_url: str = "/") -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in table:
        paths.setdefault(route.full_path, {})[route.method.lower()] = _operation(route, schemas)
    try:
        version = metadata.version("mediaserver")
    except metadata.PackageNotFoundError:
        version = "0"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mediaserver control API",
            "version": version,
            "description": 'Errors are JSON {"error": {"code", "message"}}. '
            "Authenticate with Authorization: Bearer <access token from /auth/login or API token>.",
        },
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                **({"mediaToken": MEDIA_TOKEN} if any(r.query_token for r in table) else {}),
            },
        },
    }


OPENAPI_KEY = web.AppKey("control_openapi", dict)


@routes.route("GET", "/openapi.json", permission=None, authenticated=False, summary="This API's OpenAPI 3.1 document")
async def openapi_document(request: web.Request) -> web.StreamResponse:
    document = request.app.get(OPENAPI_KEY)
    if document is None:
        document = {}
    svc = request.app[SERVICES]
    base = svc.config.api.public_url.rstrip("/") or f"{request.scheme}://{request.host}"
    return web.json_response({**document, "servers": [{"url": base}]})
