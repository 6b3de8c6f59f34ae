"""A server per test module, offering ICE candidates on 127.0.0.1 only, with short WebRTC timeouts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import ServerProcess, start_server
from tests.webrtc.helpers import WEBRTC_ENV


@pytest.fixture(scope="module")
def webrtc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("webrtc"), WEBRTC_ENV)
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()[-5000:]
