// The dashboard shell: login, who is logged in, the navigation the role may use, hash routing between pages,
// the live connection indicator and the alerts badge.

import { api, describe, loggedIn, login, logout, onSessionEnd } from "./api.js";
import { live } from "./live.js";
import { store } from "./store.js";
import { clear, errorBox, field, formatTime, h, openDialog, toast } from "./ui.js";
import { camerasView } from "./cameras.js";
import { cameraView } from "./camera.js";
import { timelineView, recordingsIndexView } from "./timeline.js";
import { usersView } from "./users.js";
import { tokensView } from "./tokens.js";
import { auditView } from "./audit.js";
import { systemView } from "./system.js";

const main = document.getElementById("main");
const topbar = document.getElementById("topbar");
const nav = document.getElementById("nav");
const navToggle = document.getElementById("nav-toggle");

const CAMERA_ID = "([0-9a-f]{32})";
// Order = navigation order. `nav`: label in the menu (null: not listed). `permission`: needed to open it.
const ROUTES = [
  { path: "/cameras", pattern: /^\/cameras$/, view: camerasView, nav: "Cameras", permission: "cameras:read" },
  { path: null, pattern: new RegExp(`^/cameras/${CAMERA_ID}$`), view: cameraView, permission: "cameras:read" },
  {
    path: "/recordings",
    pattern: /^\/recordings$/,
    view: recordingsIndexView,
    nav: "Recordings",
    permission: "recordings:read",
  },
  { path: null, pattern: new RegExp(`^/recordings/${CAMERA_ID}$`), view: timelineView, permission: "recordings:read" },
  { path: "/users", pattern: /^\/users$/, view: usersView, nav: "Users", permission: "users:manage" },
  { path: "/tokens", pattern: /^\/tokens$/, view: tokensView, nav: "API tokens", permission: "tokens:manage" },
  { path: "/audit", pattern: /^\/audit$/, view: auditView, nav: "Audit log", permission: "audit:read" },
  { path: "/system", pattern: /^\/system$/, view: systemView, nav: "System", permission: "system:read" },
];

// Who is logged in (GET /auth/me): {id, username, role, permissions, via}.
const session = { me: null };
let unmount = null;
let routeToken = 0;

export function can(permission) {
  return Boolean(session.me && session.me.permissions.includes(permission));
}

export function me() {
  return session.me;
}

// ----- login ----------------------------------------------------------------------------------------------

function showLogin(message = "") {
  stopPage();
  topbar.hidden = true;
  document.title = "Log in · mediaserver";
  const user = field("Username", { name: "username", autocomplete: "username", required: true });
  const password = field("Password", {
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: true,
  });
  const errors = h("div", { class: "form-errors" });
  const submit = h("button", { type: "submit", class: "primary" }, "Log in");
  const form = h("form", { class: "login-form", "aria-labelledby": "login-title" }, [
    h("h1", { id: "login-title" }, "mediaserver"),
    h("p", { class: "muted" }, "Sign in to the operator's dashboard."),
    message ? h("p", { class: "notice", role: "status" }, message) : null,
    user.row,
    password.row,
    errors,
    submit,
  ]);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(errors);
    submit.disabled = true;
    try {
      await login(user.input.value.trim(), password.input.value);
      password.input.value = "";
      await start();
    } catch (error) {
      errors.append(errorBox(error));
      password.input.select();
    } finally {
      submit.disabled = false;
    }
  });
  clear(main).append(h("section", { class: "login" }, form));
  user.input.focus();
}

onSessionEnd((reason) => {
  live.stop();
  store.clear();
  session.me = null;
  showLogin(reason);
});

document.getElementById("logout").addEventListener("click", async () => {
  await logout();
});

// ----- shell ----------------------------------------------------------------------------------------------

function renderNav() {
  clear(nav);
  const list = h("ul", {});
  for (const route of ROUTES) {
    if (!route.nav || !can(route.permission)) continue;
    list.append(h("li", {}, h("a", { href: `#${route.path}`, dataset: { path: route.path } }, route.nav)));
  }
  nav.append(list);
  const who = document.getElementById("who");
  clear(who).append(
    h("span", { class: "who-name" }, session.me.username),
    " ",
    h("span", { class: "who-role" }, `(${session.me.role})`),
  );
}

function markCurrent(path) {
  for (const link of nav.querySelectorAll("a")) {
    const current = path === link.dataset.path || path.startsWith(`${link.dataset.path}/`);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

navToggle.addEventListener("click", () => {
  const open = navToggle.getAttribute("aria-expanded") !== "true";
  navToggle.setAttribute("aria-expanded", String(open));
  nav.classList.toggle("open", open);
});

function closeNav() {
  navToggle.setAttribute("aria-expanded", "false");
  nav.classList.remove("open");
}

// Escape folds the phone menu (dialogs close on Escape by themselves).
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && nav.classList.contains("open") && !document.querySelector("dialog[open]")) {
    closeNav();
    navToggle.focus();
  }
});

const conn = document.getElementById("conn");
live.on("state", (state) => {
  conn.dataset.state = state;
  const label = { open: "live", connecting: "connecting", closed: "reconnecting" }[state] || state;
  conn.querySelector(".conn-label").textContent = label;
  conn.title = state === "open" ? "Live updates are on" : "Live updates are off: reconnecting";
});

const badge = document.getElementById("alerts-badge");
function renderBadge(open) {
  badge.textContent = String(open.length);
  badge.setAttribute("aria-label", `${open.length} open alert${open.length === 1 ? "" : "s"}`);
  badge.classList.toggle("has-alerts", open.length > 0);
}
store.on("alerts", renderBadge);

live.on("system-alert", (message) => {
  const alert = message.data || {};
  const kind = alert.state === "resolved" ? "success" : alert.severity === "critical" ? "error" : "warning";
  const prefix = alert.state === "resolved" ? "Resolved" : alert.severity === "critical" ? "Critical" : "Warning";
  toast(`${prefix}: ${alert.message || alert.kind}`, kind);
});

document.getElementById("alerts-button").addEventListener("click", () => {
  const open = store.openAlerts();
  const body = open.length
    ? h(
        "ul",
        { class: "alert-list" },
        open.map((alert) =>
          h("li", { class: `alert alert-${alert.severity}` }, [
            h("strong", {}, alert.severity === "critical" ? "Critical" : "Warning"),
            " ",
            alert.message || alert.kind,
            h("div", { class: "muted" }, `since ${formatTime(alert.since)}`),
            alert.camera_id ? h("a", { href: `#/cameras/${alert.camera_id}` }, "Open camera") : null,
          ]),
        ),
      )
    : h("p", {}, "No open alerts.");
  const shown = openDialog({ title: "Open alerts", body });
  body.addEventListener("click", (event) => {
    if (event.target.closest("a")) shown.close();
  });
});

// ----- routing --------------------------------------------------------------------------------------------

function stopPage() {
  if (unmount) {
    try {
      unmount();
    } catch (error) {
      console.error("page cleanup failed", error);
    }
    unmount = null;
  }
}

function firstAllowed() {
  const route = ROUTES.find((r) => r.path && can(r.permission));
  return route ? route.path : null;
}

async function route() {
  if (!session.me) return;
  closeNav();
  let path = location.hash.replace(/^#/, "") || "";
  if (!path || path === "/") {
    const first = firstAllowed();
    if (first) {
      location.replace(`#${first}`);
      return;
    }
  }
  stopPage();
  const token = ++routeToken;
  const found = ROUTES.map((r) => ({ r, m: path.match(r.pattern) })).find((x) => x.m);
  markCurrent(path);
  const container = h("div", { class: "page" });
  clear(main).append(container);
  if (!found) {
    container.append(h("h1", {}, "Not found"), h("p", {}, "There is no such page."), homeLink());
    return;
  }
  if (!can(found.r.permission)) {
    container.append(
      h("h1", {}, "Not allowed"),
      h("p", {}, `Your role (${session.me.role}) may not open this page.`),
      homeLink(),
    );
    return;
  }
  try {
    const cleanup = await found.r.view(container, { params: found.m.slice(1), can, me: session.me });
    if (token !== routeToken) {
      if (typeof cleanup === "function") cleanup();
      return;
    }
    unmount = typeof cleanup === "function" ? cleanup : null;
  } catch (error) {
    if (token === routeToken) container.append(errorBox(error, "This page could not be shown"));
  }
  if (token === routeToken && document.activeElement === document.body) main.focus({ preventScroll: true });
}

function homeLink() {
  const first = firstAllowed();
  return first ? h("p", {}, h("a", { href: `#${first}` }, "Back to the dashboard")) : null;
}

window.addEventListener("hashchange", route);

async function start() {
  try {
    session.me = await api("/auth/me");
  } catch (error) {
    if (loggedIn()) {
      clear(main).append(
        h("section", { class: "login" }, [
          errorBox(error, "The dashboard could not load"),
          h("button", { type: "button", onclick: () => start() }, "Try again"),
        ]),
      );
    }
    return;
  }
  topbar.hidden = false;
  document.body.dataset.role = session.me.role;
  renderNav();
  renderBadge([]);
  live.start();
  if (can("cameras:read")) {
    api("/analytics/dashboard")
      .then((body) => store.setDashboard(body))
      .catch(() => {
        // the badge fills from live alerts instead
      });
  }
  await route();
}

window.addEventListener("error", (event) => {
  toast(`Something went wrong on this page: ${event.message}`, "error");
});
window.addEventListener("unhandledrejection", (event) => {
  toast(`Something went wrong: ${describe(event.reason)}`, "error");
});

if (loggedIn()) start();
else showLogin();
