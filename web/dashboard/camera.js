// #/cameras/<id>: watch one camera live (LL-HLS or WebRTC), its details and live figures, and for camera
// managers: edit, record, rotate the key, the publish URL, delete.

import { api } from "./api.js";
import { store } from "./store.js";
import { LivePlayer } from "./player.js";
import { isOnline } from "./cameras.js";
import { cameraDialog, deleteCamera, publishBlock, rotateKey, setRecording } from "./manage.js";
import {
  clear,
  errorBox,
  formatBitrate,
  formatTime,
  h,
  pageHeader,
  setStatusBadge,
  statusBadge,
  toastError,
} from "./ui.js";

const PROTOCOL_KEY = "mediaserver.protocol";

export async function cameraView(container, ctx) {
  const [id] = ctx.params;
  const writer = ctx.can("cameras:write");
  let camera;
  try {
    // Fresh from the API: the list may be stale, and only this answer is sure to carry the key for managers.
    camera = store.upsert(await api(`/cameras/${id}`));
  } catch (error) {
    container.append(
      pageHeader("Camera"),
      errorBox(error, "The camera could not be loaded"),
      h("p", {}, h("a", { href: "#/cameras" }, "Back to the cameras")),
    );
    return null;
  }
  document.title = `${camera.name} · mediaserver`;

  const title = h("h1", {}, camera.name);
  const badge = statusBadge(camera.status);
  const video = h("video", { class: "live-video", controls: true, muted: true, autoplay: true, playsinline: true });
  video.setAttribute("aria-label", `Live video of ${camera.name}`);
  const playerState = h("p", { class: "player-state", role: "status" }, "–");
  const player = new LivePlayer(video, (text, kind) => {
    playerState.textContent = text;
    playerState.dataset.kind = kind;
  });
  window.dashboardPlayer = player; // for tests and the console

  let protocol = sessionStorage.getItem(PROTOCOL_KEY) === "webrtc" ? "webrtc" : "hls";
  const protocolButtons = [
    ["hls", "LL-HLS"],
    ["webrtc", "WebRTC"],
  ].map(([value, label]) =>
    h(
      "button",
      {
        type: "button",
        class: "segmented",
        "aria-pressed": String(value === protocol),
        dataset: { protocol: value },
        onclick: () => {
          protocol = value;
          sessionStorage.setItem(PROTOCOL_KEY, value);
          for (const button of protocolButtons) button.setAttribute("aria-pressed", String(button.dataset.protocol === value));
          player.play(id, protocol);
        },
      },
      label,
    ),
  );

  const details = h("dl", { class: "details" });
  const actions = h("div", { class: "toolbar" });
  const publish = h("div", { class: "publish-slot" });

  function fill() {
    title.textContent = camera.name;
    setStatusBadge(badge, camera.status);
    clear(details);
    const rows = [
      ["Status", `${camera.status}${camera.enabled ? "" : " (disabled)"}`],
      ["Bitrate", isOnline(camera) ? formatBitrate(camera.bitrate_bps) : "–"],
      ["Viewers", isOnline(camera) ? String(camera.viewers ?? 0) : "–"],
      ["Last seen", formatTime(camera.last_seen)],
      ["Company", camera.company],
      ["Vendor", camera.vendor],
      ["Model", camera.model],
      ["Serial number", camera.serial_number],
      ["Location", camera.location],
      ["Recording", camera.recording_enabled ? "on" : "off"],
      ["Private", camera.private ? "yes (playback needs a token)" : "no"],
      ["Source", camera.source || "pushes (RTMP/WHIP)"],
      ["Stream", `live/${camera.id}`],
    ];
    for (const [label, value] of rows) {
      if (value === undefined || value === null || value === "") continue;
      details.append(h("dt", {}, label), h("dd", {}, String(value)));
    }
    clear(publish);
    const block = publishBlock(camera);
    if (block) publish.append(h("h2", {}, "Publishing"), block);
  }

  if (writer) {
    const act = (fn) => async () => {
      try {
        await fn();
      } catch (error) {
        toastError(error);
      }
    };
    actions.append(
      h(
        "button",
        {
          type: "button",
          onclick: act(async () => {
            const saved = await cameraDialog(camera);
            if (saved) {
              camera = saved;
              fill();
            }
          }),
        },
        "Edit",
      ),
      h("button", { type: "button", onclick: act(() => setRecording(camera, true)) }, "Start recording"),
      h("button", { type: "button", onclick: act(() => setRecording(camera, false)) }, "Stop recording"),
      h(
        "button",
        {
          type: "button",
          onclick: act(async () => {
            const rotated = await rotateKey(camera);
            if (rotated) {
              camera = rotated;
              fill();
            }
          }),
        },
        "Rotate key",
      ),
      h(
        "button",
        {
          type: "button",
          class: "danger",
          onclick: act(async () => {
            if (await deleteCamera(camera)) location.hash = "#/cameras";
          }),
        },
        "Delete",
      ),
    );
  }

  container.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/cameras" }, "← Cameras")),
    h("div", { class: "page-header" }, [h("div", { class: "title-row" }, [title, badge]), actions]),
    h("div", { class: "watch" }, [
      h("section", { class: "watch-player", "aria-label": "Live video" }, [
        h("div", { class: "toolbar", role: "group", "aria-label": "Playback protocol" }, protocolButtons),
        video,
        playerState,
        ctx.can("recordings:read")
          ? h("p", {}, h("a", { href: `#/recordings/${id}`, class: "timeline-link" }, "Recordings timeline →"))
          : null,
      ]),
      h("section", { class: "watch-details", "aria-label": "Details" }, [details, publish]),
    ]),
  );
  fill();
  player.play(id, protocol);

  const offCamera = store.on("camera", (changed) => {
    if (changed.id !== id) return;
    const wasOnline = isOnline(camera);
    camera = changed;
    fill();
    if (!wasOnline && isOnline(camera)) player.cameraLive();
  });
  const offCameras = store.on("cameras", () => {
    if (!store.cameras.has(id)) {
      playerState.textContent = "This camera was deleted.";
      player.stop();
    }
  });
  return () => {
    offCamera();
    offCameras();
    player.stop();
    if (window.dashboardPlayer === player) window.dashboardPlayer = null;
  };
}
