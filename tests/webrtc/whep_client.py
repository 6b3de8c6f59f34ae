"""A WHEP viewer in its own process, for the test that kills one outright.

python -m tests.webrtc.whep_client URL: plays the stream on 127.0.0.1, prints "FRAMES" once frames arrive,
then keeps playing until killed.
"""

from __future__ import annotations

import asyncio
import sys

from aiortc import RTCSessionDescription

from tests.webrtc.helpers import collect, loopback_offer, loopback_pc, post, wait_until


async def main(url: str) -> int:
    pc = loopback_pc()
    pc.addTransceiver("video", direction="recvonly")
    received = collect(pc)
    answer = await post(url, await loopback_offer(pc))
    if answer.status != 201:
        print(f"ERROR {answer.status} {answer.body}", flush=True)
        return 1
    await pc.setRemoteDescription(RTCSessionDescription(answer.body, "answer"))
    if not await wait_until(lambda: len(received.video) >= 5, 15):
        print("ERROR no frames", flush=True)
        return 1
    print("FRAMES", flush=True)
    await asyncio.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
