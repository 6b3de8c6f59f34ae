// The /play/{app}/{name} page: plays /hls/{app}/{name}/index.m3u8 with hls.js in low-latency mode, or with
// the browser's own HLS when hls.js cannot run (no MediaSource, e.g. iPhone Safari), and shows live stats.
// Tests read window.playerStats, refreshed every 250 ms.
//
// Query options: ?debug=1 turns on hls.js debug logging (console); ?engine=native|hlsjs forces an engine.
"use strict";

(function () {
  const MAX_ERRORS = 50;
  const RETRY_DELAY_MS = 3000;

  const video = document.getElementById("video");
  const query = new URLSearchParams(location.search);
  // The path is /play/{app}/{name}; both parts stay URL-encoded to build the playlist URL.
  const parts = location.pathname.split("/").filter(Boolean);
  const stats = {
    engine: null,
    src: null,
    latency: null, // hls.js estimate of the distance to the live edge, seconds
    pdtLatency: null, // now minus the program date time of the frame on screen, seconds
    targetLatency: null,
    bufferLength: 0,
    currentTime: 0,
    readyState: 0,
    paused: true,
    playbackRate: 1,
    videoWidth: 0,
    videoHeight: 0,
    levels: [],
    currentLevel: -1,
    restarts: 0,
    stalls: 0,
    fatalErrors: [],
    errors: [],
    lastError: null,
    updatedAt: 0,
  };
  window.playerStats = stats;

  let hls = null;
  let waitTimer = null;
  let recoveredMedia = false;

  function text(id, value) {
    document.getElementById(id).textContent = value;
  }

  function seconds(value) {
    return value === null || !Number.isFinite(value) ? "–" : value.toFixed(2) + " s";
  }

  function recordError(entry) {
    entry.at = new Date().toISOString();
    stats.errors.push(entry);
    if (stats.errors.length > MAX_ERRORS) stats.errors.shift();
    if (entry.fatal && stats.fatalErrors.length < MAX_ERRORS) stats.fatalErrors.push(entry);
    stats.lastError = entry;
    const element = document.getElementById("error");
    element.textContent = `${entry.type}: ${entry.details}${entry.fatal ? " (fatal)" : ""}`;
    element.classList.add("has-error");
  }

  function bufferAhead() {
    const ranges = video.buffered;
    for (let i = 0; i < ranges.length; i++) {
      if (ranges.start(i) <= video.currentTime + 0.1 && video.currentTime < ranges.end(i)) {
        return ranges.end(i) - video.currentTime;
      }
    }
    return 0;
  }

  function programDateLatency() {
    if (hls && hls.playingDate) return (Date.now() - hls.playingDate.getTime()) / 1000;
    if (typeof video.getStartDate === "function") {
      const start = video.getStartDate().getTime();
      if (Number.isFinite(start)) return (Date.now() - (start + video.currentTime * 1000)) / 1000;
    }
    return null;
  }

  function finite(value) {
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  }

  function update() {
    stats.currentTime = video.currentTime;
    stats.readyState = video.readyState;
    stats.paused = video.paused;
    stats.playbackRate = video.playbackRate;
    stats.videoWidth = video.videoWidth;
    stats.videoHeight = video.videoHeight;
    stats.bufferLength = bufferAhead();
    stats.pdtLatency = finite(programDateLatency());
    if (hls) {
      stats.latency = finite(hls.latency);
      stats.targetLatency = finite(hls.targetLatency);
      stats.currentLevel = hls.currentLevel;
      stats.levels = (hls.levels || []).map((level) => ({
        width: level.width,
        height: level.height,
        bitrate: level.bitrate,
        codecs: [level.videoCodec, level.audioCodec].filter(Boolean).join(","),
      }));
    } else {
      stats.latency = null;
      stats.targetLatency = null;
    }
    stats.updatedAt = Date.now();

    text("latency", seconds(stats.latency));
    text("pdt-latency", seconds(stats.pdtLatency));
    text("target-latency", seconds(stats.targetLatency));
    text("buffer", seconds(stats.bufferLength));
    text("resolution", video.videoWidth ? `${video.videoWidth}×${video.videoHeight}` : "–");
    text("position", `${video.currentTime.toFixed(2)} s${video.paused ? " (paused)" : ""}`);
  }

  function play() {
    // Muted autoplay is allowed everywhere; a refusal is shown, not thrown.
    video.muted = true;
    const promise = video.play();
    if (promise) {
      promise.catch((error) => recordError({ type: "play", details: error.name, fatal: false }));
    }
  }

  // The stream is not live (not started yet, or ended): look at the playlist every few seconds and start
  // playing again once it is live, so the page survives a camera that goes away and comes back.
  function waitForLive(reason) {
    if (hls) {
      hls.destroy();
      hls = null;
    }
    if (waitTimer !== null) return;
    text("engine", `${stats.engine} – waiting for the stream (${reason})`);
    const poll = () => {
      fetch(stats.src, { cache: "no-store" })
        .then((response) => (response.ok ? response.text() : ""))
        .catch(() => "")
        .then((body) => {
          if (body.startsWith("#EXTM3U") && !body.includes("#EXT-X-ENDLIST")) {
            waitTimer = null;
            stats.restarts += 1;
            start();
          } else {
            waitTimer = setTimeout(poll, RETRY_DELAY_MS);
          }
        });
    };
    waitTimer = setTimeout(poll, RETRY_DELAY_MS);
  }

  function startHlsJs() {
    hls = new Hls({
      debug: query.get("debug") === "1",
      lowLatencyMode: true,
      // The target latency is the playlist's PART-HOLD-BACK (hls.js ignores it once liveSyncDuration or
      // liveSyncDurationCount is set); when behind it, catch up by playing at up to 1.25x.
      maxLiveSyncPlaybackRate: 1.25,
      backBufferLength: 30,
    });
    stats.engine = "hls.js";
    text("engine", `hls.js ${Hls.version} (low-latency)`);

    hls.on(Hls.Events.ERROR, (_event, data) => {
      recordError({
        type: data.type,
        details: data.details,
        fatal: data.fatal,
        url: (data.frag && data.frag.url) || (data.context && data.context.url) || null,
        status: data.response ? data.response.code : null,
      });
      if (!data.fatal) {
        if (data.details === Hls.ErrorDetails.BUFFER_STALLED_ERROR) stats.stalls += 1;
      } else if (data.type === Hls.ErrorTypes.MEDIA_ERROR && !recoveredMedia) {
        recoveredMedia = true;
        hls.recoverMediaError();
      } else {
        waitForLive(data.details);
      }
    });
    hls.on(Hls.Events.LEVEL_LOADED, (_event, data) => {
      // An ended stream (EXT-X-ENDLIST) is not replayed from its start as if it were a recording.
      if (!data.details.live && video.currentTime === 0) waitForLive("ended");
    });
    hls.on(Hls.Events.MANIFEST_PARSED, play);
    hls.loadSource(stats.src);
    hls.attachMedia(video);
  }

  function startNative() {
    stats.engine = "native";
    text("engine", "native HLS");
    video.src = stats.src;
    play();
  }

  function start() {
    if (stats.engine === "native") startNative();
    else startHlsJs();
  }

  if (parts.length !== 3 || parts[0] !== "play") {
    recordError({ type: "page", details: "the address must be /play/{app}/{name}", fatal: true });
    return;
  }
  const title = `${decodeURIComponent(parts[1])}/${decodeURIComponent(parts[2])}`;
  stats.src = `/hls/${parts[1]}/${parts[2]}/index.m3u8`;
  document.title = `${title} · mediaserver`;
  text("title", title);
  document.getElementById("playlist").href = stats.src;
  video.addEventListener("waiting", update);

  video.addEventListener("error", () => {
    if (stats.engine !== "native") return; // hls.js reports its own errors
    const error = video.error;
    recordError({ type: "mediaError", details: error ? `${error.code} ${error.message}` : "unknown", fatal: true });
    waitForLive("media error");
  });
  // A live playlist that ended (EXT-X-ENDLIST) plays out; then wait for the publisher to come back.
  video.addEventListener("ended", () => waitForLive("ended"));

  const engine = query.get("engine");
  const hlsJsReady = typeof Hls !== "undefined" && Hls.isSupported();
  if (engine !== "native" && hlsJsReady) {
    // hls.js wherever MediaSource exists: recent Chromium also answers "maybe" for native HLS below.
    startHlsJs();
  } else if (engine !== "hlsjs" && video.canPlayType("application/vnd.apple.mpegurl")) {
    startNative();
  } else {
    recordError({ type: "page", details: "this browser supports neither hls.js nor native HLS", fatal: true });
  }
  update();
  setInterval(update, 250);
})();
