// #/recordings/<camera id>: a day of a camera's recordings (UTC). Coverage bars and gaps from
// /cameras/{id}/recordings/coverage, a strip of thumbnails, playback from any point (hls.js on the VOD playlist
// /cameras/{id}/playback.m3u8, with the bearer header on the playlist request only: its media URLs carry their
// own short-lived tokens, as in web/recording.js), and export of a clip (/cameras/{id}/export.mp4).
// #/recordings: the cameras, each a link to its timeline.

import { accessToken, api, apiBlob, describe, request } from "./api.js";
import { live } from "./live.js";
import { store } from "./store.js";
import {
  clear,
  clockUtc,
  errorBox,
  field,
  formatDuration,
  formatTime,
  h,
  pageHeader,
  statusBadge,
  toast,
  toastError,
} from "./ui.js";

const DAY_MS = 86_400_000;
const THUMBS_SHOWN = 24;
// One playlist covers at most this much from the chosen point (a day's playlist is megabytes).
const PLAY_WINDOW_MS = 2 * 3600_000;

function todayUtc() {
  return new Date().toISOString().slice(0, 10);
}

function dayStartMs(day) {
  const [y, m, d] = day.split("-").map(Number);
  return Date.UTC(y, m - 1, d);
}

function iso(ms) {
  return new Date(ms).toISOString();
}

/** "HH:MM:SS" within the day -> epoch ms, or null. */
function parseClock(dayStart, text) {
  const match = /^(\d{1,2}):(\d{2})(?::(\d{2}))?$/.exec(text.trim());
  if (!match) return null;
  const [hours, minutes, seconds] = [Number(match[1]), Number(match[2]), Number(match[3] || 0)];
  if (hours > 24 || minutes > 59 || seconds > 59) return null;
  return dayStart + ((hours * 60 + minutes) * 60 + seconds) * 1000;
}

export async function recordingsIndexView(container) {
  container.append(pageHeader("Recordings"), h("p", { class: "muted" }, "Pick a camera to see its recordings by day."));
  const list = h("ul", { class: "link-list" });
  container.append(list);
  try {
    await store.loadCameras();
  } catch (error) {
    container.append(errorBox(error, "The cameras could not be loaded"));
    return null;
  }
  const cameras = [...store.cameras.values()];
  if (!cameras.length) list.append(h("li", {}, "No cameras yet."));
  for (const camera of cameras) {
    list.append(
      h("li", {}, [h("a", { href: `#/recordings/${camera.id}` }, camera.name), " ", statusBadge(camera.status)]),
    );
  }
  return null;
}

export async function timelineView(container, ctx) {
  const [id] = ctx.params;
  let camera;
  try {
    camera = await api(`/cameras/${id}`);
  } catch (error) {
    container.append(pageHeader("Recordings"), errorBox(error, "The camera could not be loaded"));
    return null;
  }
  document.title = `${camera.name} recordings · mediaserver`;
  let day = todayUtc();
  let dayStart = dayStartMs(day);
  let coverage = { spans: [], gaps: [] };
  let cursorMs = null;
  let hls = null;
  let stopped = false;
  const thumbUrls = [];

  // ----- controls ------------------------------------------------------------------------------------------
  const date = field("Day (UTC)", { type: "date", value: day, max: todayUtc(), required: true });
  const prev = h("button", { type: "button", "aria-label": "Previous day" }, "◀ Day");
  const next = h("button", { type: "button", "aria-label": "Next day" }, "Day ▶");
  const reload = h("button", { type: "button" }, "Refresh");
  next.disabled = true; // today: nothing recorded tomorrow yet
  const bar = h("div", {
    class: "timeline-bar",
    role: "slider",
    tabindex: "0",
    "aria-label": "Time of day (UTC): arrow keys move, Enter plays",
    "aria-valuemin": "0",
    "aria-valuemax": "86400",
    "aria-valuenow": "0",
  });
  const spansLayer = h("div", { class: "timeline-spans", "aria-hidden": "true" });
  const cursor = h("div", { class: "timeline-cursor", hidden: true, "aria-hidden": "true" });
  const nowMark = h("div", { class: "timeline-now", hidden: true, "aria-hidden": "true" });
  const selection = h("div", { class: "timeline-selection", hidden: true, "aria-hidden": "true" });
  bar.append(spansLayer, selection, nowMark, cursor);
  const ticks = h(
    "div",
    { class: "timeline-ticks", "aria-hidden": "true" },
    [0, 3, 6, 9, 12, 15, 18, 21, 24].map((hour) => {
      const tick = h("span", {}, `${String(hour).padStart(2, "0")}:00`);
      tick.style.left = `${(hour / 24) * 100}%`;
      return tick;
    }),
  );
  const summary = h("p", { class: "coverage-summary", role: "status" }, "Loading…");
  const spanList = h("ul", { class: "span-list" });
  const thumbs = h("ul", { class: "thumb-strip", "aria-label": "Thumbnails" });
  const video = h("video", { class: "recording-video", controls: true, muted: true, playsinline: true });
  video.setAttribute("aria-label", `Recording of ${camera.name}`);
  const playState = h("p", { class: "player-state", role: "status" }, "Click the timeline to play from that time.");
  const recordedAt = h("span", { class: "recorded-at" }, "–");

  // Plain text, 24-hour: a browser's time picker would show the viewer's locale (AM/PM), not UTC.
  const clock24 = { pattern: "\\d{1,2}:\\d{2}(:\\d{2})?", placeholder: "HH:MM:SS", inputmode: "numeric", required: true };
  const clipStart = field("Clip start (UTC, HH:MM:SS)", { ...clock24, autocomplete: "off" });
  const clipEnd = field("Clip end (UTC, HH:MM:SS)", { ...clock24, autocomplete: "off" });
  const markIn = h("button", { type: "button" }, "Start at cursor");
  const markOut = h("button", { type: "button" }, "End at cursor");
  const exportButton = h("button", { type: "submit", class: "primary" }, "Export MP4");
  const exportState = h("p", { class: "muted", role: "status" });
  const exportForm = h("form", { class: "export-form", "aria-label": "Export a clip" }, [
    h("div", { class: "filters" }, [clipStart.row, markIn, clipEnd.row, markOut]),
    h("div", { class: "toolbar" }, [exportButton]),
    exportState,
  ]);

  const canExport = ctx.can("recordings:download");
  container.append(
    h("p", { class: "crumbs" }, [
      h("a", { href: "#/recordings" }, "← Recordings"),
      " · ",
      h("a", { href: `#/cameras/${id}` }, "Live view"),
    ]),
    pageHeader(`Recordings: ${camera.name}`),
    h("div", { class: "filters" }, [prev, date.row, next, reload]),
    h("p", { class: "muted" }, "All times are UTC."),
    h("div", { class: "timeline" }, [bar, ticks]),
    summary,
    spanList,
    thumbs,
    h("section", { class: "watch-player", "aria-label": "Playback" }, [
      video,
      playState,
      h("p", {}, ["Recorded at: ", recordedAt]),
    ]),
    canExport ? h("section", { "aria-label": "Export" }, [h("h2", {}, "Export a clip"), exportForm]) : null,
  );

  // ----- drawing -------------------------------------------------------------------------------------------
  const pct = (ms) => `${Math.min(100, Math.max(0, ((ms - dayStart) / DAY_MS) * 100))}%`;

  function drawCursor() {
    cursor.hidden = cursorMs === null;
    if (cursorMs !== null) {
      cursor.style.left = pct(cursorMs);
      const seconds = Math.round((cursorMs - dayStart) / 1000);
      bar.setAttribute("aria-valuenow", String(seconds));
      bar.setAttribute("aria-valuetext", `${clockUtc(cursorMs)} UTC`);
    }
    const now = Date.now();
    nowMark.hidden = !(now > dayStart && now < dayStart + DAY_MS);
    if (!nowMark.hidden) nowMark.style.left = pct(now);
  }

  function drawSelection() {
    const from = parseClock(dayStart, clipStart.input.value || "");
    const to = parseClock(dayStart, clipEnd.input.value || "");
    selection.hidden = !(from !== null && to !== null && to > from);
    if (!selection.hidden) {
      selection.style.left = pct(from);
      selection.style.width = `${((to - from) / DAY_MS) * 100}%`;
    }
  }

  function drawCoverage() {
    clear(spansLayer);
    clear(spanList);
    let total = 0;
    for (const span of coverage.spans) {
      const from = Date.parse(span.start);
      const to = Date.parse(span.end);
      total += to - from;
      const block = h("div", { class: "timeline-span" });
      block.style.left = pct(from);
      block.style.width = `${Math.max(0.15, ((to - from) / DAY_MS) * 100)}%`;
      spansLayer.append(block);
      spanList.append(
        h(
          "li",
          {},
          h(
            "button",
            { type: "button", class: "link", onclick: () => playFrom(from) },
            `▶ ${clockUtc(from)}–${clockUtc(to)} (${formatDuration((to - from) / 1000)})`,
          ),
        ),
      );
    }
    const gaps = coverage.gaps.length;
    summary.textContent = coverage.spans.length
      ? `Recorded ${formatDuration(total / 1000)} in ${coverage.spans.length} span${coverage.spans.length === 1 ? "" : "s"}; ` +
        `${gaps} gap${gaps === 1 ? "" : "s"}.`
      : "Nothing was recorded on this day.";
    drawCursor();
  }

  async function loadDay() {
    summary.textContent = "Loading…";
    const query = { start: iso(dayStart), end: iso(dayStart + DAY_MS) };
    try {
      coverage = await api(`/cameras/${id}/recordings/coverage`, { query });
      if (stopped) return;
      drawCoverage();
    } catch (error) {
      coverage = { spans: [], gaps: [] };
      drawCoverage();
      summary.textContent = `The coverage could not be loaded: ${describe(error)}`;
    }
    loadThumbs(query);
  }

  async function loadThumbs(query) {
    for (const url of thumbUrls.splice(0)) URL.revokeObjectURL(url);
    clear(thumbs);
    let list = [];
    try {
      list = await api(`/cameras/${id}/thumbnails`, { query });
    } catch {
      return; // no thumbnails: the strip stays empty
    }
    if (stopped || !Array.isArray(list) || !list.length) return;
    const step = Math.max(1, Math.ceil(list.length / THUMBS_SHOWN));
    const picked = list.filter((_, index) => index % step === 0).slice(0, THUMBS_SHOWN);
    for (const thumb of picked) {
      const ms = Math.round(thumb.time * 1000);
      const img = h("img", { alt: `Thumbnail at ${clockUtc(ms)} UTC`, loading: "lazy" });
      const button = h("button", { type: "button", class: "thumb", onclick: () => playFrom(ms) }, [
        img,
        h("span", {}, clockUtc(ms)),
      ]);
      thumbs.append(h("li", {}, button));
      // The picture needs the bearer header: fetched here, shown through an object URL.
      apiBlob(`/cameras/${id}/${thumb.url.replace(/^\.?\//, "")}`)
        .then((blob) => {
          if (stopped) return;
          const url = URL.createObjectURL(blob);
          thumbUrls.push(url);
          img.src = url;
        })
        .catch(() => img.replaceWith(h("span", { class: "no-picture" }, "–")));
    }
  }

  // ----- playback ------------------------------------------------------------------------------------------
  function stopPlayback() {
    if (hls) {
      hls.destroy();
      hls = null;
    }
  }

  async function playFrom(ms) {
    cursorMs = ms;
    drawCursor();
    const spans = coverage.spans.map((s) => [Date.parse(s.start), Date.parse(s.end)]);
    const span = spans.find(([, to]) => to > ms);
    if (!span) {
      playState.textContent = "Nothing was recorded after this time on this day.";
      return;
    }
    const from = Math.max(ms, span[0]);
    const to = Math.min(from + PLAY_WINDOW_MS, dayStart + DAY_MS, Date.now());
    if (to <= from) {
      playState.textContent = "Nothing to play here yet.";
      return;
    }
    if (from !== ms) {
      cursorMs = from;
      drawCursor();
    }
    stopPlayback();
    if (!window.Hls || !window.Hls.isSupported()) {
      playState.textContent = "This browser cannot run hls.js (no MediaSource).";
      return;
    }
    const playlist = new URL(
      `/api/v1/cameras/${id}/playback.m3u8?start=${encodeURIComponent(iso(from))}&end=${encodeURIComponent(iso(to))}`,
      location.href,
    ).href;
    if (stopped) return;
    playState.textContent = `Loading from ${clockUtc(from)} UTC…`;
    hls = new window.Hls({
      // The bearer token goes to the playlist only; its media URLs are signed.
      xhrSetup: (xhr, url) => {
        if (url !== playlist) return;
        if (!xhr.readyState) xhr.open("GET", url, true);
        xhr.setRequestHeader("Authorization", `Bearer ${accessToken()}`);
      },
    });
    const mine = hls;
    hls.on(window.Hls.Events.MANIFEST_PARSED, () => {
      video.muted = true;
      const promise = video.play();
      if (promise) promise.catch(() => (playState.textContent = "Press play to start."));
    });
    hls.on(window.Hls.Events.FRAG_BUFFERED, () => {
      if (mine === hls) playState.textContent = `Playing from ${clockUtc(from)} UTC`;
    });
    hls.on(window.Hls.Events.ERROR, (_event, data) => {
      if (mine !== hls || !data.fatal) return;
      if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR) {
        hls.recoverMediaError();
        return;
      }
      stopPlayback();
      playState.textContent = `Playback failed: ${data.details}`;
      if (data.type === window.Hls.ErrorTypes.NETWORK_ERROR) {
        // Ask once more ourselves, to show the API's own words ("nothing was recorded in this range" ...).
        request(`/cameras/${id}/playback.m3u8`, { query: { start: iso(from), end: iso(to) } })
          .then(() => (playState.textContent = "Playback failed: the recording could not be loaded."))
          .catch((error) => (playState.textContent = `Cannot play from ${clockUtc(from)}: ${describe(error)}`));
      }
    });
    hls.loadSource(playlist);
    hls.attachMedia(video);
  }

  video.addEventListener("timeupdate", () => {
    if (!hls || !hls.playingDate) return;
    const at = hls.playingDate.getTime();
    recordedAt.textContent = formatTime(at);
    cursorMs = at;
    drawCursor();
  });

  // ----- the bar: pointer and keyboard ---------------------------------------------------------------------
  function timeAt(clientX) {
    const box = bar.getBoundingClientRect();
    const fraction = Math.min(1, Math.max(0, (clientX - box.left) / box.width));
    return dayStart + Math.round(fraction * 86400) * 1000;
  }
  bar.addEventListener("click", (event) => playFrom(timeAt(event.clientX)));
  bar.addEventListener("keydown", (event) => {
    const stepMs = (event.shiftKey ? 10 : 1) * 60_000;
    const base = cursorMs ?? dayStart;
    let target = null;
    if (event.key === "ArrowRight" || event.key === "ArrowUp") target = base + stepMs;
    else if (event.key === "ArrowLeft" || event.key === "ArrowDown") target = base - stepMs;
    else if (event.key === "Home") target = dayStart;
    else if (event.key === "End") target = dayStart + DAY_MS - 1000;
    else if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      playFrom(base);
      return;
    }
    if (target === null) return;
    event.preventDefault();
    cursorMs = Math.min(dayStart + DAY_MS - 1000, Math.max(dayStart, target));
    drawCursor();
  });

  // ----- day switching -------------------------------------------------------------------------------------
  function setDay(value) {
    if (!/^\d{4}-\d{2}-\d{2}$/.test(value)) return;
    day = value;
    dayStart = dayStartMs(day);
    date.input.value = day;
    next.disabled = day >= todayUtc();
    cursorMs = null;
    stopPlayback();
    clipStart.input.value = "";
    clipEnd.input.value = "";
    drawSelection();
    loadDay();
  }
  date.input.addEventListener("change", () => setDay(date.input.value));
  prev.addEventListener("click", () => setDay(new Date(dayStart - DAY_MS).toISOString().slice(0, 10)));
  next.addEventListener("click", () => setDay(new Date(dayStart + DAY_MS).toISOString().slice(0, 10)));
  reload.addEventListener("click", () => loadDay());

  // ----- export --------------------------------------------------------------------------------------------
  const clock = (ms) => clockUtc(ms);
  markIn.addEventListener("click", () => {
    if (cursorMs === null) return toast("Click the timeline first to place the cursor.", "info");
    clipStart.input.value = clock(cursorMs);
    drawSelection();
  });
  markOut.addEventListener("click", () => {
    if (cursorMs === null) return toast("Click the timeline first to place the cursor.", "info");
    clipEnd.input.value = clock(cursorMs);
    drawSelection();
  });
  clipStart.input.addEventListener("input", drawSelection);
  clipEnd.input.addEventListener("input", drawSelection);
  exportForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const from = parseClock(dayStart, clipStart.input.value || "");
    const to = parseClock(dayStart, clipEnd.input.value || "");
    if (from === null || to === null || to <= from) {
      exportState.textContent = "Choose a clip start and a later clip end.";
      return;
    }
    exportButton.disabled = true;
    exportState.textContent = `Exporting ${clock(from)}–${clock(to)} UTC…`;
    try {
      const blob = await apiBlob(`/cameras/${id}/export.mp4`, { query: { start: iso(from), end: iso(to) } });
      const url = URL.createObjectURL(blob);
      const safe = camera.name.replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 60) || "camera";
      const name = `${safe}-${iso(from).replace(/[:.]/g, "-")}.mp4`;
      const link = h("a", { href: url, download: name, class: "offscreen" }, "download");
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      exportState.textContent = `Exported ${clock(from)}–${clock(to)} UTC (${Math.round(blob.size / 1024)} KiB): ${name}`;
    } catch (error) {
      exportState.textContent = `Export failed: ${describe(error)}`;
      toastError(error, "Export failed");
    } finally {
      exportButton.disabled = false;
    }
  });

  // New files and closed ones change today's coverage: redraw from the API (no polling).
  const refreshOn = (message) => {
    if (message.camera_id === id && day === todayUtc()) loadDay();
  };
  const offs = [live.on("recording-closed", refreshOn), live.on("recording-started", refreshOn)];
  const nowTimer = setInterval(drawCursor, 30_000);

  await loadDay();
  return () => {
    stopped = true;
    for (const off of offs) off();
    clearInterval(nowTimer);
    stopPlayback();
    for (const url of thumbUrls) URL.revokeObjectURL(url);
  };
}
