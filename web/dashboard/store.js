// What the pages share: the cameras (loaded over REST, then kept current by live events), their live figures,
// the open alerts, and the latest dashboard summary. Pages subscribe and redraw only what changed.

import { apiAll } from "./api.js";
import { live } from "./live.js";

// Fields the API returns only to cameras:write callers; live events never carry them, so an update keeps them.
const SECRET_FIELDS = ["stream_key", "publish_url", "source_url"];

class Store {
  constructor() {
    this.cameras = new Map(); // id -> CameraOut plus {viewers, recording}
    this.loaded = false;
    this.loading = null;
    this.alerts = new Map(); // id -> Alert
    this.dashboard = null; // the latest /analytics/dashboard body or dashboard-update
    this.listeners = new Map(); // "cameras" | "camera" | "alerts" | "dashboard" -> Set
  }

  on(name, handler) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(handler);
    return () => this.listeners.get(name).delete(handler);
  }

  emit(name, payload) {
    for (const handler of [...(this.listeners.get(name) || [])]) {
      try {
        handler(payload);
      } catch (error) {
        console.error(`store handler for ${name} failed`, error);
      }
    }
  }

  /** All cameras over REST (pages of 500); emits "cameras". */
  loadCameras() {
    if (this.loading) return this.loading;
    this.loading = (async () => {
      try {
        const items = await apiAll("/cameras");
        const fresh = new Map();
        for (const camera of items) {
          const known = this.cameras.get(camera.id);
          fresh.set(camera.id, { viewers: known ? known.viewers : 0, recording: known ? known.recording : null, ...camera });
        }
        this.cameras = fresh;
        this.loaded = true;
        this.emit("cameras", [...this.cameras.values()]);
        return this.cameras;
      } finally {
        this.loading = null;
      }
    })();
    return this.loading;
  }

  /** Merge fields into a camera; emits "camera" (one changed) and returns it. */
  patch(id, fields) {
    const known = this.cameras.get(id);
    if (!known) return null;
    const merged = { ...known, ...fields };
    this.cameras.set(id, merged);
    this.emit("camera", merged);
    return merged;
  }

  /** A camera from the API (create, edit, rotate-key answers, or a camera-updated event). */
  upsert(camera) {
    const known = this.cameras.get(camera.id);
    const merged = { viewers: 0, recording: null, ...(known || {}), ...camera };
    if (known) {
      for (const key of SECRET_FIELDS) {
        if (camera[key] === undefined || camera[key] === null) merged[key] = known[key];
      }
    }
    this.cameras.set(camera.id, merged);
    if (known) this.emit("camera", merged);
    else this.emit("cameras", [...this.cameras.values()]);
    return merged;
  }

  remove(id) {
    if (this.cameras.delete(id)) this.emit("cameras", [...this.cameras.values()]);
  }

  setDashboard(body) {
    this.dashboard = body;
    // Bitrate and viewers of live cameras ride along with the summary.
    for (const [id, figures] of Object.entries((body && body.cameras_live) || {})) {
      const known = this.cameras.get(id);
      if (known && (known.bitrate_bps !== figures.bitrate_bps || known.viewers !== figures.viewers)) {
        this.patch(id, { bitrate_bps: figures.bitrate_bps, viewers: figures.viewers });
      }
    }
    if (body && body.alerts && Array.isArray(body.alerts.items)) {
      this.alerts = new Map(body.alerts.items.map((alert) => [alert.id, alert]));
      this.emit("alerts", this.openAlerts());
    }
    this.emit("dashboard", body);
  }

  alert(alert) {
    this.alerts.set(alert.id, alert);
    this.emit("alerts", this.openAlerts());
  }

  openAlerts() {
    return [...this.alerts.values()].filter((alert) => alert.state !== "resolved");
  }

  clear() {
    this.cameras = new Map();
    this.loaded = false;
    this.alerts = new Map();
    this.dashboard = null;
  }
}

export const store = new Store();
// For tests and debugging in the console.
window.dashboardStore = store;

// ----- live events into the store -------------------------------------------------------------------------

function cameraOf(message) {
  if (message.camera_id) return message.camera_id;
  const data = message.data || {};
  return data.name || null; // stream events: cameras stream as <publish app>/<camera id>
}

live.on("camera-status", (message) => {
  const data = message.data || {};
  const fields = { status: data.status, enabled: data.enabled, bitrate_bps: data.bitrate_bps };
  if (data.status !== "online") fields.live = false;
  for (const key of Object.keys(fields)) if (fields[key] === undefined) delete fields[key];
  store.patch(message.camera_id, fields);
});
live.on("camera-updated", (message) => {
  const camera = (message.data || {}).camera;
  if (camera && camera.id) store.upsert(camera);
});
live.on("camera-deleted", (message) => store.remove(message.camera_id));
live.on("stream-started", (message) => store.patch(cameraOf(message), { live: true }));
live.on("stream-stopped", (message) => store.patch(cameraOf(message), { live: false, bitrate_bps: 0, viewers: 0 }));
live.on("recording-started", (message) => store.patch(message.camera_id, { recording: true }));
live.on("recording-closed", (message) => store.patch(message.camera_id, { recording: false }));
live.on("system-alert", (message) => store.alert(message.data || {}));
live.on("dashboard-update", (message) => store.setDashboard(message.data || {}));
live.on("resync", () => {
  if (store.loaded) store.loadCameras().catch(() => {});
});
