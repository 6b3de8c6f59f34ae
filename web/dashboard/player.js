// Live playback of a camera: LL-HLS through the vendored hls.js (window.Hls, loaded by index.html), or WebRTC
// through the browser's own stack and a WHEP exchange (one POST of a complete offer, as web/webrtc.js does).
// Both get their URL, with a short-lived play token, from /api/v1/streaming/{hls|webrtc}/{camera id}.

import { iceGathered } from "../ice.js";
import { api, describe } from "./api.js";

const RETRY_MS = 4000;
const GATHER_TIMEOUT_MS = 2000;

export class LivePlayer {
  /** `onState(text, kind)`: what the player is doing, for a status line (kind: info | ok | error). */
  constructor(video, onState) {
    this.video = video;
    this.onState = onState;
    this.hls = null;
    this.pc = null;
    this.session = null; // WHEP session URL (DELETE ends it)
    this.cameraId = null;
    this.protocol = null;
    this.retryTimer = null;
    this.generation = 0; // bumps on every (re)start: late answers of an older attempt are ignored
    this.waiting = false; // the camera is not live: play() again when it is
    this.errors = [];
  }

  state(text, kind = "info") {
    if (this.onState) this.onState(text, kind);
  }

  error(text) {
    this.errors.push({ at: new Date().toISOString(), text });
    if (this.errors.length > 20) this.errors.shift();
    this.state(text, "error");
  }

  async play(cameraId, protocol) {
    this.stop();
    this.cameraId = cameraId;
    this.protocol = protocol;
    const generation = ++this.generation;
    this.state(protocol === "webrtc" ? "Connecting over WebRTC…" : "Loading LL-HLS…");
    let info;
    try {
      info = await api(`/streaming/${protocol}/${cameraId}`);
    } catch (error) {
      if (generation === this.generation) {
        this.error(`No playback URL: ${describe(error)}`);
        this.retryLater(generation);
      }
      return;
    }
    if (generation !== this.generation) return;
    if (!info.live) {
      this.waiting = true;
      this.state("The camera is not streaming right now; playback starts when it goes live.");
      return;
    }
    this.waiting = false;
    if (protocol === "webrtc") await this.startWebRTC(info.url, generation);
    else this.startHls(info.url, generation);
  }

  /** The camera went live (a live event): start if we were waiting for it. */
  cameraLive() {
    if (this.waiting && this.cameraId) this.play(this.cameraId, this.protocol);
  }

  retryLater(generation) {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      if (generation === this.generation && this.cameraId) this.play(this.cameraId, this.protocol);
    }, RETRY_MS);
  }

  startHls(url, generation) {
    const video = this.video;
    if (!window.Hls || !window.Hls.isSupported()) {
      if (video.canPlayType("application/vnd.apple.mpegurl")) {
        video.src = url;
        this.autoplay();
        this.state("Playing (native HLS)", "ok");
        return;
      }
      this.error("This browser can play neither hls.js nor native HLS.");
      return;
    }
    // The first playlist answer sets a play cookie for the stream's folder, renewed on every reload; from then
    // on the token is left off the URL, so playback outlives the token's few minutes.
    let cookieSet = false;
    const hls = new window.Hls({
      lowLatencyMode: true,
      maxLiveSyncPlaybackRate: 1.25,
      backBufferLength: 30,
      xhrSetup: (xhr, requestUrl) => {
        if (!cookieSet) return;
        const target = new URL(requestUrl, location.href);
        if (!target.searchParams.has("token")) return;
        target.searchParams.delete("token");
        if (!xhr.readyState) xhr.open("GET", target.href, true);
      },
    });
    this.hls = hls;
    let recovered = false;
    hls.on(window.Hls.Events.MANIFEST_LOADED, () => {
      cookieSet = true;
    });
    hls.on(window.Hls.Events.MANIFEST_PARSED, () => this.autoplay());
    hls.on(window.Hls.Events.FRAG_BUFFERED, () => {
      if (generation === this.generation) this.state(`Playing (LL-HLS, hls.js ${window.Hls.version})`, "ok");
    });
    hls.on(window.Hls.Events.ERROR, (_event, data) => {
      if (generation !== this.generation || !data.fatal) return;
      if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR && !recovered) {
        recovered = true;
        hls.recoverMediaError();
        return;
      }
      const status = data.response && data.response.code ? ` (HTTP ${data.response.code})` : "";
      this.error(`Playback stopped: ${data.details}${status}. Retrying…`);
      this.teardown();
      this.retryLater(generation);
    });
    hls.loadSource(url);
    hls.attachMedia(video);
  }

  async startWebRTC(url, generation) {
    const peer = new RTCPeerConnection();
    this.pc = peer;
    peer.addTransceiver("video", { direction: "recvonly" });
    peer.addTransceiver("audio", { direction: "recvonly" });
    const media = new MediaStream();
    this.video.srcObject = media;
    peer.addEventListener("track", (event) => media.addTrack(event.track));
    peer.addEventListener("connectionstatechange", () => {
      if (peer !== this.pc) return;
      if (peer.connectionState === "connected") this.state("Playing (WebRTC)", "ok");
      if (peer.connectionState === "failed" || peer.connectionState === "closed") {
        this.error(`WebRTC connection ${peer.connectionState}. Retrying…`);
        this.teardown();
        this.retryLater(generation);
      }
    });
    try {
      await peer.setLocalDescription(await peer.createOffer());
      await iceGathered(peer, GATHER_TIMEOUT_MS);
      if (generation !== this.generation) return;
      const response = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/sdp" },
        body: peer.localDescription.sdp,
      });
      if (response.status !== 201) {
        let message = `HTTP ${response.status}`;
        try {
          const body = await response.json();
          if (body && body.error && body.error.message) message = body.error.message;
        } catch {
          // not JSON
        }
        throw new Error(message);
      }
      const location_ = response.headers.get("Location");
      this.session = location_ ? new URL(location_, location.href).href : null;
      const answer = await response.text();
      if (generation !== this.generation) return;
      await peer.setRemoteDescription({ type: "answer", sdp: answer });
      this.autoplay();
    } catch (error) {
      if (generation !== this.generation) return;
      this.error(`WebRTC failed: ${error.message || error}. Retrying…`);
      this.teardown();
      this.retryLater(generation);
    }
  }

  autoplay() {
    // Muted autoplay is allowed everywhere; a refusal is shown, not thrown.
    this.video.muted = true;
    const promise = this.video.play();
    if (promise) promise.catch((error) => this.state(`Press play to start (${error.name}).`));
  }

  teardown() {
    if (this.hls) {
      this.hls.destroy();
      this.hls = null;
    }
    if (this.pc) {
      this.pc.close();
      this.pc = null;
    }
    if (this.session) {
      fetch(this.session, { method: "DELETE", keepalive: true }).catch(() => {});
      this.session = null;
    }
    const video = this.video;
    video.pause();
    video.srcObject = null;
    video.removeAttribute("src");
    video.load();
  }

  stop() {
    this.generation += 1;
    clearTimeout(this.retryTimer);
    this.waiting = false;
    this.teardown();
  }
}
