// DOM helpers: elements built with textContent only (no HTML strings, so no markup from the API can run),
// toasts, modal dialogs (Escape closes them), clipboard, number and time formats.

import { describe } from "./api.js";

/**
 * h("button", {class: "x", onclick: fn, type: "button"}, "text", child, [more])
 * Attributes: class, text, dataset {}, on<event> functions, boolean properties (checked, disabled, hidden ...),
 * everything else through setAttribute. Children: strings, nodes, arrays, null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") element.className = value;
    else if (key === "text") element.textContent = value;
    else if (key === "dataset") Object.assign(element.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") element.addEventListener(key.slice(2), value);
    else if (key in element && typeof value === "boolean") element[key] = value;
    else if (key === "value") element.value = value;
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else parent.append(child instanceof Node ? child : String(child));
  }
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

let uid = 0;
export function nextId(prefix = "f") {
  uid += 1;
  return `${prefix}-${uid}`;
}

/** A labelled form field: returns {row, input}. `options` for a select: [[value, label], ...]. */
export function field(label, attrs = {}, options = null) {
  const id = attrs.id || nextId("field");
  let input;
  if (options) {
    input = h("select", { ...attrs, id }, options.map(([value, text]) => h("option", { value }, text)));
    if (attrs.value !== undefined) input.value = attrs.value;
  } else {
    input = h("input", { type: "text", ...attrs, id });
  }
  const checkbox = input.type === "checkbox";
  const row = h(
    "div",
    { class: checkbox ? "field field-check" : "field" },
    checkbox ? [input, h("label", { for: id }, label)] : [h("label", { for: id }, label), input],
  );
  return { row, input };
}

// ----- toasts ---------------------------------------------------------------------------------------------

const TOAST_MS = { info: 4000, success: 4000, warning: 8000, error: 10000 };

export function toast(message, kind = "info") {
  const region = document.getElementById("toasts");
  if (!region) return;
  const close = h("button", { type: "button", class: "toast-close", "aria-label": "Dismiss" }, "×");
  const item = h("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" }, [
    h("span", { class: "toast-text" }, message),
    close,
  ]);
  const remove = () => item.remove();
  close.addEventListener("click", remove);
  region.append(item);
  while (region.children.length > 5) region.firstElementChild.remove();
  setTimeout(remove, TOAST_MS[kind] || 5000);
}

/** Show what went wrong: a readable message, never JSON. */
export function toastError(error, prefix = "") {
  if (error && error.name === "AbortError") return;
  toast(prefix ? `${prefix}: ${describe(error)}` : describe(error), "error");
}

/** An inline error box (role=alert) for a page or a form. */
export function errorBox(error, prefix = "") {
  const text = prefix ? `${prefix}: ${describe(error)}` : describe(error);
  return h("p", { class: "error-box", role: "alert" }, text);
}

// ----- dialogs --------------------------------------------------------------------------------------------

/**
 * A modal dialog (native <dialog>: focus stays inside, Escape closes it). `body` is a node; `onSubmit` (async)
 * makes it a form whose errors show inside the dialog. Resolves the returned promise when it closes.
 */
export function openDialog({ title, body, submitLabel = null, onSubmit = null, cancelLabel = "Close", danger = false }) {
  const opener = document.activeElement;
  const titleId = nextId("dialog-title");
  const errors = h("div", { class: "dialog-errors" });
  const submit = submitLabel
    ? h("button", { type: "submit", class: danger ? "danger" : "primary" }, submitLabel)
    : null;
  const cancel = h("button", { type: "button", class: "secondary" }, cancelLabel);
  const form = h("form", { method: "dialog", class: "dialog-form" }, [
    h("h2", { id: titleId }, title),
    body,
    errors,
    h("div", { class: "dialog-actions" }, [cancel, submit]),
  ]);
  const dialog = h("dialog", { class: "dialog", "aria-labelledby": titleId }, form);
  document.body.append(dialog);
  let result = false;
  let done;
  const closed = new Promise((resolve) => {
    done = resolve;
  });
  const close = (value = false) => {
    result = value;
    if (dialog.open) dialog.close();
  };
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (opener && typeof opener.focus === "function" && document.contains(opener)) opener.focus();
    done(result);
  });
  cancel.addEventListener("click", () => close(false));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!onSubmit) {
      close(true);
      return;
    }
    clear(errors);
    if (submit) submit.disabled = true;
    try {
      const value = await onSubmit();
      if (value !== false) close(value === undefined ? true : value);
    } catch (error) {
      errors.append(errorBox(error));
    } finally {
      if (submit) submit.disabled = false;
    }
  });
  dialog.showModal();
  const first = form.querySelector("input:not([type=hidden]):not([readonly]), select, textarea");
  (first || submit || cancel).focus();
  return { dialog, close, closed };
}

/** Yes or no, asked in a dialog. */
export function confirmDialog(title, message, confirmLabel = "Confirm", danger = true) {
  return openDialog({
    title,
    body: h("p", {}, message),
    submitLabel: confirmLabel,
    cancelLabel: "Cancel",
    danger,
  }).closed;
}

// ----- clipboard ------------------------------------------------------------------------------------------

/** Copy text; navigator.clipboard where allowed (secure contexts), else a selected textarea and execCommand. */
export async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    // fall through to the old way
  }
  const area = h("textarea", { class: "offscreen", readonly: true, "aria-hidden": "true" });
  area.value = text;
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

/** Copy and tell the user; when the browser refuses, show the text selected so it can be copied by hand. */
export async function copyWithFeedback(text, what = "Copied") {
  if (await copyText(text)) {
    toast(`${what} to the clipboard.`, "success");
    return;
  }
  const input = h("input", { type: "text", readonly: true, value: text, "aria-label": "Text to copy" });
  const shown = openDialog({ title: "Copy by hand", body: h("div", {}, h("p", {}, "Press Ctrl+C (⌘C) to copy:"), input) });
  input.focus();
  input.select();
  await shown.closed;
}

// ----- formats --------------------------------------------------------------------------------------------

export function formatBitrate(bps) {
  if (bps === null || bps === undefined || !Number.isFinite(bps)) return "–";
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbit/s`;
  if (bps >= 1e3) return `${(bps / 1e3).toFixed(0)} kbit/s`;
  return `${Math.round(bps)} bit/s`;
}

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function formatPercent(value) {
  return value === null || value === undefined || !Number.isFinite(value) ? "–" : `${value.toFixed(1)} %`;
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.floor(seconds);
  const days = Math.floor(s / 86400);
  const hours = Math.floor((s % 86400) / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  if (days) return `${days} d ${hours} h`;
  if (hours) return `${hours} h ${minutes} min`;
  if (minutes) return `${minutes} min ${s % 60} s`;
  return `${s} s`;
}

/** "2024-05-01 12:34:56 UTC" from an ISO string, epoch ms or a Date. */
export function formatTime(value) {
  if (value === null || value === undefined || value === "") return "–";
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return "–";
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC").replace(/Z$/, " UTC");
}

/** "12:34:56" (UTC) of epoch ms. */
export function clockUtc(ms) {
  return new Date(ms).toISOString().slice(11, 19);
}

// ----- bits of pages --------------------------------------------------------------------------------------

const STATUS_LABELS = { online: "Online", offline: "Offline", error: "Error", disabled: "Disabled" };

/** A status dot with its word next to it (colour is never the only signal). */
export function statusBadge(status) {
  const known = STATUS_LABELS[status] ? status : "offline";
  return h("span", { class: `status status-${known}`, dataset: { status: known } }, [
    h("span", { class: "dot", "aria-hidden": "true" }),
    h("span", { class: "status-label" }, STATUS_LABELS[known]),
  ]);
}

export function setStatusBadge(element, status) {
  const known = STATUS_LABELS[status] ? status : "offline";
  element.className = `status status-${known}`;
  element.dataset.status = known;
  element.querySelector(".status-label").textContent = STATUS_LABELS[known];
}

/** A page heading with an optional toolbar. */
export function pageHeader(title, ...tools) {
  return h("div", { class: "page-header" }, [h("h1", {}, title), h("div", { class: "toolbar" }, tools)]);
}

/** Previous/next buttons and "x–y of total". `onPage(offset)` is called with the new offset. */
export function pager(offset, limit, total, onPage) {
  const last = Math.min(offset + limit, total);
  return h("div", { class: "pager" }, [
    h("button", { type: "button", disabled: offset <= 0, onclick: () => onPage(Math.max(0, offset - limit)) }, "Previous"),
    h("span", { class: "pager-info", role: "status" }, total ? `${offset + 1}–${last} of ${total}` : "nothing"),
    h("button", { type: "button", disabled: last >= total, onclick: () => onPage(offset + limit) }, "Next"),
  ]);
}
