// #/system (system:read): figures of the server (GET /analytics/system, /system) and of the fleet
// (GET /analytics/dashboard), as cards. The fleet figures follow the live `dashboard-update` events.

import { api, describe } from "./api.js";
import { store } from "./store.js";
import {
  clear,
  formatBitrate,
  formatBytes,
  formatDuration,
  formatPercent,
  formatTime,
  h,
  pageHeader,
} from "./ui.js";

function card(title, rows, extra = null) {
  return h("section", { class: "stat-card", "aria-label": title }, [
    h("h2", {}, title),
    h(
      "dl",
      {},
      rows.filter(Boolean).map(([label, value]) => [h("dt", {}, label), h("dd", {}, value === undefined ? "–" : String(value))]),
    ),
    extra,
  ]);
}

function byProtocol(map) {
  const entries = Object.entries(map || {});
  return entries.length ? entries.map(([k, v]) => `${k} ${v}`).join(", ") : "–";
}

export async function systemView(container) {
  const refresh = h("button", { type: "button" }, "Refresh");
  const stamp = h("p", { class: "muted", role: "status" });
  const fleet = h("div", { class: "stat-grid", id: "fleet-cards" });
  const server = h("div", { class: "stat-grid", id: "server-cards" });
  const alerts = h("div", { class: "alerts-panel" });
  container.append(
    pageHeader("System", refresh),
    stamp,
    h("h2", { class: "section-title" }, "Cameras and streams"),
    fleet,
    h("h2", { class: "section-title" }, "Open alerts"),
    alerts,
    h("h2", { class: "section-title" }, "Server"),
    server,
  );

  function drawFleet(body) {
    clear(fleet);
    if (!body) return;
    const cams = body.cameras || {};
    const streams = body.streams || {};
    const viewers = body.viewers || {};
    const bandwidth = body.bandwidth || {};
    fleet.append(
      card("Cameras", [
        ["Total", cams.total],
        ["Online", cams.online],
        ["Offline", cams.offline],
        ["Error", cams.error],
        ["Disabled", cams.disabled],
      ]),
      card("Streams", [
        ["Live", streams.live],
        ["By protocol", byProtocol(streams.by_protocol)],
      ]),
      card("Viewers", [
        ["Total", viewers.total],
        ["By protocol", byProtocol(viewers.by_protocol)],
      ]),
      card("Bandwidth", [
        ["Ingest", formatBitrate(bandwidth.ingest_bps)],
        ["Egress", formatBitrate(bandwidth.egress_bps)],
      ]),
    );
    const tiers = (body.storage && body.storage.tiers) || [];
    if (tiers.length) {
      fleet.append(
        card(
          "Storage",
          tiers.map((tier) => [
            tier.tier,
            `${formatBytes(tier.bytes)} in ${tier.files} files` +
              (tier.free_percent === null || tier.free_percent === undefined ? "" : `, ${formatPercent(tier.free_percent)} free`),
          ]),
        ),
      );
    }
    stamp.textContent = `Fleet figures at ${formatTime(body.at)}`;
  }

  function drawAlerts(open) {
    clear(alerts);
    if (!open.length) {
      alerts.append(h("p", {}, "No open alerts."));
      return;
    }
    alerts.append(
      h(
        "ul",
        { class: "alert-list" },
        open.map((alert) =>
          h("li", { class: `alert alert-${alert.severity}` }, [
            h("strong", {}, alert.severity === "critical" ? "Critical" : "Warning"),
            ` ${alert.message || alert.kind} `,
            h("span", { class: "muted" }, `since ${formatTime(alert.since)}`),
            alert.camera_id ? [" ", h("a", { href: `#/cameras/${alert.camera_id}` }, "camera")] : null,
          ]),
        ),
      ),
    );
  }

  async function loadServer() {
    clear(server);
    const [analytics, info] = await Promise.allSettled([api("/analytics/system"), api("/system")]);
    if (analytics.status === "fulfilled") {
      const s = analytics.value;
      const memory = s.memory || {};
      const loop = s.event_loop || {};
      const proc = s.process || {};
      server.append(
        card("Process", [
          ["CPU", formatPercent(s.cpu_percent)],
          ["Memory (RSS)", `${formatBytes(memory.rss_bytes)} of ${formatBytes(memory.total_bytes)} (${formatPercent(memory.used_percent)})`],
          ["Event loop lag", loop.lag_seconds === undefined ? "–" : `${(loop.lag_seconds * 1000).toFixed(1)} ms (max ${(loop.lag_max_seconds * 1000).toFixed(1)} ms)`],
          ["Uptime", formatDuration(proc.uptime_seconds)],
          ["Threads", proc.threads],
          ["Open files", proc.open_fds],
          ["PID", proc.pid],
          ["Version", proc.version],
        ]),
        ...(s.disk || []).map((disk) =>
          card(`Disk ${disk.path}`, [
            ["Used", formatPercent(disk.used_percent)],
            ["Free", formatBytes(disk.free_bytes)],
            ["Size", formatBytes(disk.total_bytes)],
          ]),
        ),
      );
    } else {
      server.append(h("p", { class: "error-box", role: "alert" }, `Server figures unavailable: ${describe(analytics.reason)}`));
    }
    if (info.status === "fulfilled") {
      const i = info.value;
      server.append(
        card("Service", [
          ["Version", i.version],
          ["Uptime", formatDuration(i.uptime_seconds)],
          ["Database", i.database],
          ["Publish mode", i.publish_mode],
          ["Live streams", i.live_streams],
          ["Cameras", `${i.cameras_online} online of ${i.cameras}`],
        ]),
      );
    }
  }

  async function loadFleet() {
    try {
      store.setDashboard(await api("/analytics/dashboard"));
    } catch (error) {
      clear(fleet).append(h("p", { class: "error-box", role: "alert" }, `Fleet figures unavailable: ${describe(error)}`));
    }
  }

  const offDashboard = store.on("dashboard", drawFleet);
  const offAlerts = store.on("alerts", drawAlerts);
  refresh.addEventListener("click", () => Promise.all([loadFleet(), loadServer()]));
  drawFleet(store.dashboard);
  drawAlerts(store.openAlerts());
  await Promise.all([loadFleet(), loadServer()]);
  return () => {
    offDashboard();
    offAlerts();
  };
}
