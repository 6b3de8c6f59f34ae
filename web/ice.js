// Shared by the WHEP players (web/webrtc.js and the dashboard): WHEP here is non-trickle, so the offer is sent
// once ICE gathering is complete, or after `timeoutMs` with the candidates found so far.

export function iceGathered(peer, timeoutMs) {
  return new Promise((resolve) => {
    if (peer.iceGatheringState === "complete") {
      resolve();
      return;
    }
    const timer = setTimeout(resolve, timeoutMs);
    peer.addEventListener("icegatheringstatechange", () => {
      if (peer.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}
