// The /webrtc/{app}/{name} page: plays a live stream over WebRTC with the browser's own stack and a WHEP
// client of a few lines (non-trickle: complete offer after ICE gathering, one POST, the answer, done).
// Tests read window.webrtcStats, refreshed every 500 ms.
//
// Latency shown: for each frame on screen, requestVideoFrameCallback gives when its last packet arrived
// (receiveTime) and when it is shown (expectedDisplayTime); the difference is the time spent in the jitter
// buffer, decoder and compositor. Add the network (half the round trip) for the viewer side of the latency.
import { iceGathered } from "./ice.js";

(function () {
  const RETRY_MS = 3000;
  const GATHER_TIMEOUT_MS = 2000;

  const video = document.getElementById("video");
  // The path is /webrtc/{app}/{name}; both parts stay URL-encoded to build the endpoint.
  const parts = location.pathname.split("/").filter(Boolean);
  const endpoint = "/whep/" + parts[1] + "/" + parts[2] + location.search;
  const stats = {
    state: "new",
    connectionState: "new",
    session: null,
    answerMs: null, // POST to answer
    firstFrameMs: null, // page start (or restart) to the first frame on screen
    readyState: 0,
    currentTime: 0,
    videoWidth: 0,
    videoHeight: 0,
    framesShown: 0, // frames reported by requestVideoFrameCallback
    framesDecoded: 0,
    framesDropped: 0,
    framesReceived: 0,
    packetsLost: 0,
    nackCount: 0,
    pliCount: 0,
    jitterBufferMs: null, // average jitter buffer delay of recent frames
    audioJitterBufferMs: null, // the same for audio samples
    receiveToDisplayMs: null, // see above
    rttMs: null,
    bitrateKbps: null,
    codec: null,
    audio: false,
    error: null,
    restarts: 0,
  };
  window.webrtcStats = stats;
  document.getElementById("title").textContent = decodeURIComponent(parts[1] + "/" + parts[2]) + " (WebRTC)";

  let pc = null;
  let session = null;
  let startedAt = performance.now();
  let retryTimer = null;
  let lastBytes = null;
  let lastJitter = null;
  let lastAudioJitter = null;

  function fail(message) {
    stats.error = message;
    const element = document.getElementById("error");
    element.textContent = message;
    element.classList.add("has-error");
  }

  async function hangUp() {
    const url = session;
    session = null;
    if (pc) {
      pc.close();
      pc = null;
    }
    if (url) {
      try {
        await fetch(url, { method: "DELETE" });
      } catch (e) {
        // the server may be gone already
      }
    }
  }

  function scheduleRestart() {
    if (retryTimer !== null) return;
    stats.restarts += 1;
    retryTimer = setTimeout(() => {
      retryTimer = null;
      start();
    }, RETRY_MS);
  }

  async function start() {
    await hangUp();
    startedAt = performance.now();
    stats.state = "connecting";
    const peer = new RTCPeerConnection();
    pc = peer;
    peer.addTransceiver("video", { direction: "recvonly" });
    peer.addTransceiver("audio", { direction: "recvonly" });
    const media = new MediaStream();
    video.srcObject = media;
    peer.addEventListener("track", (event) => {
      media.addTrack(event.track);
      if (event.track.kind === "audio") stats.audio = true;
    });
    peer.addEventListener("connectionstatechange", () => {
      stats.connectionState = peer.connectionState;
      document.getElementById("state").textContent = peer.connectionState;
      if (peer === pc && (peer.connectionState === "failed" || peer.connectionState === "closed")) {
        fail("connection " + peer.connectionState);
        scheduleRestart();
      }
    });
    try {
      await peer.setLocalDescription(await peer.createOffer());
      await iceGathered(peer, GATHER_TIMEOUT_MS);
      const posted = performance.now();
      const response = await fetch(endpoint, {
        method: "POST",
        headers: { "Content-Type": "application/sdp" },
        body: peer.localDescription.sdp,
      });
      if (response.status !== 201) {
        let message = "HTTP " + response.status;
        try {
          const body = await response.json();
          message += ": " + body.error.message;
        } catch (e) {
          // not JSON
        }
        throw new Error(message);
      }
      stats.answerMs = Math.round(performance.now() - posted);
      session = new URL(response.headers.get("Location"), location.href).toString();
      stats.session = session;
      await peer.setRemoteDescription({ type: "answer", sdp: await response.text() });
      stats.state = "negotiated";
    } catch (error) {
      fail(String(error.message || error));
      scheduleRestart();
    }
  }

  function onFrame(now, meta) {
    stats.framesShown += 1;
    if (stats.firstFrameMs === null) stats.firstFrameMs = Math.round(now - startedAt);
    if (meta && meta.receiveTime && meta.expectedDisplayTime) {
      stats.receiveToDisplayMs = Math.round(meta.expectedDisplayTime - meta.receiveTime);
    }
    video.requestVideoFrameCallback(onFrame);
  }
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    video.requestVideoFrameCallback(onFrame);
  }

  async function poll() {
    stats.readyState = video.readyState;
    stats.currentTime = video.currentTime;
    stats.videoWidth = video.videoWidth;
    stats.videoHeight = video.videoHeight;
    if (pc) {
      try {
        const report = await pc.getStats();
        const codecs = {};
        report.forEach((item) => {
          if (item.type === "codec") codecs[item.id] = item;
        });
        report.forEach((item) => {
          if (item.type === "inbound-rtp" && item.kind === "video") {
            stats.framesDecoded = item.framesDecoded || 0;
            stats.framesDropped = item.framesDropped || 0;
            stats.framesReceived = item.framesReceived || 0;
            stats.packetsLost = item.packetsLost || 0;
            stats.nackCount = item.nackCount || 0;
            stats.pliCount = item.pliCount || 0;
            if (item.jitterBufferEmittedCount) {
              const current = [item.jitterBufferDelay, item.jitterBufferEmittedCount];
              if (lastJitter && current[1] > lastJitter[1]) {
                stats.jitterBufferMs = Math.round(((current[0] - lastJitter[0]) / (current[1] - lastJitter[1])) * 1000);
              }
              lastJitter = current;
            }
            if (lastBytes !== null && item.timestamp > lastBytes[1]) {
              stats.bitrateKbps = Math.round(((item.bytesReceived - lastBytes[0]) * 8) / (item.timestamp - lastBytes[1]));
            }
            lastBytes = [item.bytesReceived, item.timestamp];
            const codec = codecs[item.codecId];
            if (codec) stats.codec = codec.mimeType + (codec.sdpFmtpLine ? " (" + codec.sdpFmtpLine + ")" : "");
          }
          if (item.type === "inbound-rtp" && item.kind === "audio" && item.jitterBufferEmittedCount) {
            const current = [item.jitterBufferDelay, item.jitterBufferEmittedCount];
            if (lastAudioJitter && current[1] > lastAudioJitter[1]) {
              stats.audioJitterBufferMs = Math.round(
                ((current[0] - lastAudioJitter[0]) / (current[1] - lastAudioJitter[1])) * 1000,
              );
            }
            lastAudioJitter = current;
          }
          if (item.type === "candidate-pair" && item.nominated && item.currentRoundTripTime !== undefined) {
            stats.rttMs = Math.round(item.currentRoundTripTime * 1000);
          }
        });
      } catch (e) {
        // the connection is being replaced
      }
    }
    const show = (id, value) => {
      document.getElementById(id).textContent = value;
    };
    show("latency", stats.receiveToDisplayMs === null ? "–" : stats.receiveToDisplayMs + " ms");
    show("jitter", stats.jitterBufferMs === null ? "–" : stats.jitterBufferMs + " ms");
    show("rtt", stats.rttMs === null ? "–" : stats.rttMs + " ms");
    show("resolution", stats.videoWidth ? stats.videoWidth + "×" + stats.videoHeight : "–");
    show("frames", stats.framesDecoded + " / " + stats.framesDropped);
    show("bitrate", stats.bitrateKbps === null ? "–" : stats.bitrateKbps + " kbit/s");
    show("codec", stats.codec || "–");
  }
  setInterval(poll, 500);

  window.addEventListener("pagehide", () => {
    if (session) fetch(session, { method: "DELETE", keepalive: true });
  });
  start();
})();
