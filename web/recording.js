// The recording player (/static/recording.html): plays a recordings VOD playlist
// (/api/v1/cameras/{camera_id}/playback.m3u8?start=...&end=...) with hls.js.
//
// The playlist needs the API's bearer token; its media URLs carry their own short-lived tokens, so only the
// playlist request gets the Authorization header. Open the page as recording.html#src=URL&token=TOKEN (the
// fragment never reaches a server), or call window.playRecording(url, token). Tests read
// window.recordingStats, refreshed every 250 ms.
"use strict";

(function () {
  const MAX_ERRORS = 50;
  const video = document.getElementById("video");
  const stats = {
    src: null,
    currentTime: 0,
    duration: 0,
    readyState: 0,
    paused: true,
    seeking: false,
    videoWidth: 0,
    videoHeight: 0,
    playingDate: null, // when the frame on screen was recorded (EXT-X-PROGRAM-DATE-TIME), ISO-8601
    fragmentsLoaded: 0,
    fatalErrors: [],
    errors: [],
  };
  window.recordingStats = stats;
  let hls = null;

  function text(id, value) {
    document.getElementById(id).textContent = value;
  }

  function recordError(entry) {
    stats.errors.push(entry);
    if (stats.errors.length > MAX_ERRORS) stats.errors.shift();
    if (entry.fatal && stats.fatalErrors.length < MAX_ERRORS) stats.fatalErrors.push(entry);
    const element = document.getElementById("error");
    element.textContent = `${entry.type}: ${entry.details}${entry.fatal ? " (fatal)" : ""}`;
    element.classList.add("has-error");
  }

  function update() {
    stats.currentTime = video.currentTime;
    stats.duration = Number.isFinite(video.duration) ? video.duration : 0;
    stats.readyState = video.readyState;
    stats.paused = video.paused;
    stats.seeking = video.seeking;
    stats.videoWidth = video.videoWidth;
    stats.videoHeight = video.videoHeight;
    stats.playingDate = hls && hls.playingDate ? hls.playingDate.toISOString() : null;
    text("position", `${video.currentTime.toFixed(2)} / ${stats.duration.toFixed(2)} s${video.paused ? " (paused)" : ""}`);
    text("recorded-at", stats.playingDate || "–");
  }

  function play(src, accessToken) {
    if (hls) hls.destroy();
    stats.src = src;
    text("src", src);
    const playlist = new URL(src, location.href).href;
    if (!window.Hls || !Hls.isSupported()) {
      recordError({ type: "page", details: "hls.js cannot run in this browser (no MediaSource)", fatal: true });
      return;
    }
    hls = new Hls({
      // The bearer token goes to the playlist only; segment URLs are signed.
      xhrSetup: (xhr, url) => {
        if (!accessToken || url !== playlist) return;
        if (!xhr.readyState) xhr.open("GET", url, true);
        xhr.setRequestHeader("Authorization", `Bearer ${accessToken}`);
      },
    });
    hls.on(Hls.Events.ERROR, (_event, data) => {
      recordError({
        type: data.type,
        details: data.details,
        fatal: data.fatal,
        status: data.response ? data.response.code : null,
      });
      if (data.fatal && data.type === Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
    });
    hls.on(Hls.Events.FRAG_LOADED, () => {
      stats.fragmentsLoaded += 1;
    });
    hls.on(Hls.Events.MANIFEST_PARSED, () => {
      video.muted = true;
      const promise = video.play();
      if (promise) promise.catch((error) => recordError({ type: "play", details: error.name, fatal: false }));
    });
    hls.loadSource(playlist);
    hls.attachMedia(video);
  }

  window.playRecording = play;
  setInterval(update, 250);
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("src")) play(fragment.get("src"), fragment.get("token"));
})();
