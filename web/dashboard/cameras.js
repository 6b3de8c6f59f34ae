// #/cameras: the live camera grid. A card per camera: status (dot and word), a snapshot (fetched with the
// bearer header and shown through an object URL, refreshed every ~10 s for online cameras on screen), bitrate
// and viewers from live events; filters by name and status; bulk actions for camera managers.

import { apiBlob } from "./api.js";
import { store } from "./store.js";
import { bulkAction, cameraDialog } from "./manage.js";
import { clear, errorBox, field, formatBitrate, h, pageHeader, setStatusBadge, statusBadge, toastError } from "./ui.js";

const SNAPSHOT_EVERY_MS = 10_000;
const SNAPSHOT_PARALLEL = 3;

export function isOnline(camera) {
  return camera.status === "online" || Boolean(camera.live);
}

function matches(camera, text, status) {
  if (text && !camera.name.toLowerCase().includes(text)) return false;
  if (!status) return true;
  if (status === "disabled") return !camera.enabled;
  return camera.status === status;
}

export async function camerasView(container, ctx) {
  const writer = ctx.can("cameras:write");
  const selected = new Set();
  const cards = new Map(); // id -> {item, parts}
  const snapshots = new Map(); // id -> {url, at, busy}
  const visible = new Set();
  let inFlight = 0;
  let stopped = false;

  const add = writer
    ? h("button", { type: "button", class: "primary", onclick: () => cameraDialog().catch(toastError) }, "Add camera")
    : null;
  const search = field("Filter by name", { type: "search", placeholder: "Name contains…", autocomplete: "off" });
  const status = field("Status", {}, [
    ["", "All"],
    ["online", "Online"],
    ["offline", "Offline"],
    ["error", "Error"],
    ["disabled", "Disabled"],
  ]);
  const summary = h("p", { class: "summary muted", role: "status" });
  const grid = h("ul", { class: "camera-grid", "aria-label": "Cameras" });

  // Bulk actions (cameras:write).
  const selectAll = writer ? field("Select all shown", { type: "checkbox" }) : null;
  const selectedCount = h("span", { class: "selected-count" }, "0 selected");
  const bulkButtons = writer
    ? ["enable", "disable", "delete"].map((action) =>
        h(
          "button",
          {
            type: "button",
            class: action === "delete" ? "danger" : "",
            disabled: true,
            onclick: async () => {
              try {
                await bulkAction(action, [...selected]);
                selected.clear();
                redraw();
              } catch (error) {
                toastError(error, `Bulk ${action} failed`);
              }
            },
          },
          { enable: "Enable", disable: "Disable", delete: "Delete" }[action],
        ),
      )
    : [];
  const bulk = writer
    ? h("div", { class: "bulk-bar", role: "group", "aria-label": "Bulk actions" }, [
        selectAll.row,
        selectedCount,
        bulkButtons,
      ])
    : null;

  container.append(
    pageHeader("Cameras", add),
    h("div", { class: "filters" }, [search.row, status.row]),
    bulk,
    summary,
    grid,
  );

  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      const id = entry.target.dataset.cameraId;
      if (entry.isIntersecting) visible.add(id);
      else visible.delete(id);
    }
    pump();
  });

  function updateBulk() {
    if (!writer) return;
    for (const id of [...selected]) if (!store.cameras.has(id)) selected.delete(id);
    selectedCount.textContent = `${selected.size} selected`;
    for (const button of bulkButtons) button.disabled = selected.size === 0;
    const shown = [...cards.keys()];
    selectAll.input.checked = shown.length > 0 && shown.every((id) => selected.has(id));
    selectAll.input.indeterminate = !selectAll.input.checked && shown.some((id) => selected.has(id));
  }

  function buildCard(camera) {
    const picture = h("img", { class: "snapshot", alt: `Snapshot of ${camera.name}`, hidden: true });
    const placeholder = h("span", { class: "no-picture" }, "No picture");
    const badge = statusBadge(camera.status);
    const title = h("a", { class: "card-link", href: `#/cameras/${camera.id}` }, camera.name);
    const bitrate = h("dd", { class: "bitrate" });
    const viewers = h("dd", { class: "viewers" });
    const tags = h("div", { class: "tags" });
    const location = h("p", { class: "location muted" });
    let checkbox = null;
    if (writer) {
      checkbox = h("input", {
        type: "checkbox",
        class: "select",
        "aria-label": `Select ${camera.name}`,
        checked: selected.has(camera.id),
      });
      checkbox.addEventListener("change", () => {
        if (checkbox.checked) selected.add(camera.id);
        else selected.delete(camera.id);
        updateBulk();
      });
    }
    const item = h("li", { class: "card", dataset: { cameraId: camera.id } }, [
      h("div", { class: "card-media" }, [picture, placeholder]),
      h("div", { class: "card-body" }, [
        h("div", { class: "card-title" }, [checkbox, h("h2", {}, title)]),
        h("div", { class: "card-status" }, [badge, tags]),
        location,
        h("dl", { class: "figures" }, [h("dt", {}, "Bitrate"), bitrate, h("dt", {}, "Viewers"), viewers]),
      ]),
    ]);
    const parts = { picture, placeholder, badge, title, bitrate, viewers, tags, location, checkbox };
    fillCard(item, parts, camera);
    return { item, parts };
  }

  function fillCard(item, parts, camera) {
    parts.title.textContent = camera.name;
    setStatusBadge(parts.badge, camera.status);
    item.dataset.status = camera.status;
    parts.bitrate.textContent = isOnline(camera) ? formatBitrate(camera.bitrate_bps) : "–";
    parts.viewers.textContent = isOnline(camera) ? String(camera.viewers ?? 0) : "–";
    parts.location.textContent = [camera.location, camera.company].filter(Boolean).join(" · ");
    clear(parts.tags);
    if (!camera.enabled) parts.tags.append(h("span", { class: "tag tag-disabled" }, "Disabled"));
    const recording = camera.recording ?? (camera.recording_enabled && isOnline(camera));
    if (recording) parts.tags.append(h("span", { class: "tag tag-rec" }, "REC"));
    if (camera.source) parts.tags.append(h("span", { class: "tag" }, "Pulled"));
    const snap = snapshots.get(camera.id);
    const showPicture = Boolean(snap && snap.url && isOnline(camera));
    parts.picture.hidden = !showPicture;
    parts.placeholder.hidden = showPicture;
    parts.placeholder.textContent = isOnline(camera) ? "Waiting for a picture…" : "Offline: no picture";
    if (parts.checkbox) parts.checkbox.checked = selected.has(camera.id);
  }

  function updateSummary(shownCount = cards.size) {
    const all = [...store.cameras.values()];
    const online = all.filter(isOnline).length;
    summary.textContent =
      `${all.length} camera${all.length === 1 ? "" : "s"}, ${online} online` +
      (shownCount !== all.length ? `; ${shownCount} shown` : "");
  }

  function redraw() {
    const text = search.input.value.trim().toLowerCase();
    const wanted = status.input.value;
    const all = [...store.cameras.values()];
    const shown = all.filter((camera) => matches(camera, text, wanted));
    const keep = new Set(shown.map((c) => c.id));
    for (const [id, card] of cards) {
      if (!keep.has(id)) {
        observer.unobserve(card.item);
        card.item.remove();
        cards.delete(id);
        visible.delete(id);
      }
    }
    for (const [index, camera] of shown.entries()) {
      let card = cards.get(camera.id);
      if (!card) {
        card = buildCard(camera);
        cards.set(camera.id, card);
        observer.observe(card.item);
      } else {
        fillCard(card.item, card.parts, camera);
      }
      if (grid.children[index] !== card.item) grid.insertBefore(card.item, grid.children[index] || null);
    }
    updateSummary(shown.length);
    if (!all.length) {
      grid.replaceChildren(h("li", { class: "empty" }, writer ? "No cameras yet: add one." : "No cameras yet."));
    } else if (!shown.length) {
      grid.replaceChildren(h("li", { class: "empty" }, "No camera matches the filter."));
    } else {
      const stray = grid.querySelector(".empty");
      if (stray) stray.remove();
    }
    updateBulk();
    pump();
  }

  // Snapshots: only for online cameras on screen, while the tab is visible, a few at a time.
  function pump() {
    if (document.visibilityState !== "visible") return;
    const now = Date.now();
    for (const id of visible) {
      if (inFlight >= SNAPSHOT_PARALLEL) return;
      const camera = store.cameras.get(id);
      if (!camera || !isOnline(camera)) continue;
      const snap = snapshots.get(id) || { url: null, at: 0, busy: false };
      snapshots.set(id, snap);
      if (snap.busy || now - snap.at < SNAPSHOT_EVERY_MS) continue;
      fetchSnapshot(id, snap);
    }
  }

  async function fetchSnapshot(id, snap) {
    snap.busy = true;
    snap.at = Date.now();
    inFlight += 1;
    try {
      const blob = await apiBlob(`/cameras/${id}/snapshot.jpg`);
      if (stopped) return;
      const url = URL.createObjectURL(blob);
      const card = cards.get(id);
      if (card) {
        card.parts.picture.src = url;
        await card.parts.picture.decode().catch(() => {});
      }
      if (snap.url) URL.revokeObjectURL(snap.url);
      snap.url = url;
      const camera = store.cameras.get(id);
      if (card && camera) fillCard(card.item, card.parts, camera);
    } catch (error) {
      // Not streaming yet, or no keyframe decodable yet (503): try sooner than the full period.
      snap.at = Date.now() - SNAPSHOT_EVERY_MS + 2000;
    } finally {
      snap.busy = false;
      inFlight -= 1;
    }
  }

  const timer = setInterval(pump, 1000);
  const offCameras = store.on("cameras", redraw);
  const offCamera = store.on("camera", (camera) => {
    const card = cards.get(camera.id);
    const text = search.input.value.trim().toLowerCase();
    if (card && matches(camera, text, status.input.value)) {
      fillCard(card.item, card.parts, camera);
      updateSummary();
      pump();
    } else {
      redraw();
    }
  });
  search.input.addEventListener("input", redraw);
  status.input.addEventListener("change", redraw);
  if (selectAll) {
    selectAll.input.addEventListener("change", () => {
      for (const id of cards.keys()) {
        if (selectAll.input.checked) selected.add(id);
        else selected.delete(id);
      }
      for (const [, card] of cards) if (card.parts.checkbox) card.parts.checkbox.checked = selected.has(card.item.dataset.cameraId);
      updateBulk();
    });
  }
  document.addEventListener("visibilitychange", pump);

  summary.textContent = "Loading cameras…";
  try {
    await store.loadCameras();
  } catch (error) {
    container.append(errorBox(error, "The cameras could not be loaded"));
  }
  redraw();

  return () => {
    stopped = true;
    clearInterval(timer);
    offCameras();
    offCamera();
    observer.disconnect();
    document.removeEventListener("visibilitychange", pump);
    for (const snap of snapshots.values()) if (snap.url) URL.revokeObjectURL(snap.url);
  };
}
