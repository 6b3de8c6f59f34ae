"""One statement against the test MariaDB server (creating and dropping scratch databases), for the API load
tool and the control-plane tests."""

from __future__ import annotations

import os

# user[:password]@host[:port]
MYSQL = os.environ.get("MEDIASERVER_TEST_MYSQL", "root@127.0.0.1:3306")


async def execute(statement: str, address: str = MYSQL) -> None:
    import asyncmy

    credentials, _, host_port = address.rpartition("@")
    user, _, password = credentials.partition(":")
    host, _, port = host_port.partition(":")
    conn = await asyncmy.connect(host=host, port=int(port or 3306), user=user or "root", password=password)
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(statement)
    finally:
        conn.close()
