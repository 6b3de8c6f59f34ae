"""The OpenAPI document covers every route, and schemathesis drives the running server with it."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from control.plane import all_routes
from tests.conftest import ServerProcess, start_server
from tests.control.conftest import PASSWORD, Api


async def test_document_describes_every_route(api: Api) -> None:
    response = await api.client.get("/api/v1/openapi.json")
    assert response.status == 200
    doc = await response.json()
    assert doc["openapi"].startswith("3.1")
    operations = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert operations == {(r.method, r.full_path) for r in all_routes()}
    for route in all_routes():
        op = doc["paths"][route.full_path][route.method.lower()]
        assert op["x-permission"] == (route.permission.value if route.permission else None)
        assert op["summary"] and op["operationId"]
        assert (op["security"] == []) is (not route.authenticated)
        if route.body is not None:
            assert "requestBody" in op
        if route.response is not None:
            ref = op["responses"][str(route.status)]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]
    assert "CameraCreate" in doc["components"]["schemas"] and "ErrorBody" in doc["components"]["schemas"]
    assert doc["servers"][0]["url"].startswith("http://127.0.0.1:")


def _request(server: ServerProcess, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    request = urllib.request.Request(server.http_url(path), method=method)
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, str], dict[str, Any]]]:
    env = {
        "MEDIASERVER_ADMIN_USERNAME": "admin",
        "MEDIASERVER_ADMIN_PASSWORD": PASSWORD,
        "MEDIASERVER_AUTH_PUBLISH_MODE": "database",
        "MEDIASERVER_AUTH_API_ARGON2_MEMORY_KIB": "1024",
        "MEDIASERVER_AUTH_API_ARGON2_TIME_COST": "1",
        "MEDIASERVER_AUTH_API_ARGON2_PARALLELISM": "1",
        "MEDIASERVER_API_LOGIN_RATE_PER_IP": "100000",
        "MEDIASERVER_API_LOGIN_RATE_PER_USERNAME": "100000",
        "MEDIASERVER_API_RATE_PER_TOKEN": "100000",
    }
    server = start_server(Path(tmp_path_factory.mktemp("schemathesis")), env)
    try:
        session = _request(server, "POST", "/api/v1/auth/login", {"username": "admin", "password": PASSWORD})
        scopes = [p for p in _request(server, "GET", "/api/v1/auth/me", token=session["access_token"])["permissions"]]
        token = _request(server, "POST", "/api/v1/tokens", {"name": "fuzz", "scopes": scopes}, session["access_token"])
        # Something to find, so that the generated ids sometimes hit.
        _request(server, "POST", "/api/v1/cameras", {"name": "fuzz target"}, token["token"])
        yield server, {"Authorization": f"Bearer {token['token']}"}, {"token_id": token["id"], "user_id": 1}
        assert "Traceback" not in server.log(), server.log()[-5000:]
    finally:
        server.stop()


def test_no_route_fails(live: tuple[ServerProcess, dict[str, str], dict[str, Any]]) -> None:
    """Positive and negative cases for every operation; no 500, answers match the document."""
    server, headers, own = live
    api_schema = schemathesis.openapi.from_url(server.http_url("/api/v1/openapi.json"))
    response_checks = [
        checks.not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_schema_conformance,
    ]
    failures: list[str] = []
    operations: set[str] = set()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations.add(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
            )
            def run(case: Any) -> None:
                params = case.path_parameters or {}
                # Keep the fuzzer's own credentials alive: no self-revocation, no disabling the only admin.
                if case.method in ("PUT", "DELETE") and (
                    str(params.get("user_id")) == str(own["user_id"])
                    or str(params.get("token_id")) == str(own["token_id"])
                ):
                    return
                case.call_and_validate(headers=headers, checks=response_checks)

            try:
                run()
            except Exception as exc:  # collect every operation's failure, then report them together
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
    # Every route was exercised (the document's own URL aside, which schemathesis leaves out).
    assert operations == {f"{r.method} {r.full_path}" for r in all_routes()} - {"GET /api/v1/openapi.json"}
    # The generated requests did reach the handlers: valid ones created cameras and users.
    cameras = _request(server, "GET", "/api/v1/cameras?limit=1", token=headers["Authorization"][7:])
    users = _request(server, "GET", "/api/v1/users?limit=1", token=headers["Authorization"][7:])
    assert cameras["total"] > 5 and users["total"] > 2, (cameras["total"], users["total"])
