// #/audit (audit:read): the audit log, newest first, with the filters GET /audit-logs takes
// (user_id, actor, action or prefix*, resource_type, resource_id, success, since, until) and paging.

import { api } from "./api.js";
import { clear, errorBox, field, formatTime, h, pageHeader, pager } from "./ui.js";

const PAGE = 50;

/** "YYYY-MM-DD[ HH:MM[:SS]]" typed as UTC to ISO-8601 (the API reads times without an offset as UTC). */
function utcIso(value) {
  const text = value.trim();
  if (!text) return "";
  return /^\d{4}-\d{2}-\d{2}$/.test(text) ? `${text}T00:00:00` : text.replace(" ", "T");
}

export async function auditView(container) {
  let offset = 0;
  const actor = field("Actor (username)", { maxlength: 64, autocomplete: "off" });
  const action = field("Action (exact, or prefix*)", { maxlength: 64, placeholder: "camera.*", autocomplete: "off" });
  const resourceType = field("Resource type", { maxlength: 32, placeholder: "camera", autocomplete: "off" });
  const resourceId = field("Resource id", { maxlength: 64, autocomplete: "off" });
  const userId = field("User id", { type: "number", min: "0", autocomplete: "off" });
  const success = field("Outcome", {}, [
    ["", "Any"],
    ["true", "Succeeded"],
    ["false", "Failed"],
  ]);
  // Plain text: a browser's date-time picker shows the viewer's local format, and these times are UTC.
  const when = { placeholder: "YYYY-MM-DD HH:MM", pattern: "\\d{4}-\\d{2}-\\d{2}([ T]\\d{2}:\\d{2}(:\\d{2})?)?", autocomplete: "off" };
  const since = field("Since (UTC)", when);
  const until = field("Until (UTC)", when);
  const reset = h("button", { type: "reset" }, "Clear");
  const form = h("form", { class: "filters audit-filters", role: "search", "aria-label": "Filter the audit log" }, [
    actor.row,
    action.row,
    resourceType.row,
    resourceId.row,
    userId.row,
    success.row,
    since.row,
    until.row,
    h("div", { class: "toolbar" }, [h("button", { type: "submit", class: "primary" }, "Apply"), reset]),
  ]);
  const body = h("div", { class: "table-wrap" });
  const paging = h("div");
  container.append(pageHeader("Audit log"), form, body, paging);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    offset = 0;
    load();
  });
  form.addEventListener("reset", () =>
    setTimeout(() => {
      offset = 0;
      load();
    }),
  );

  async function load() {
    const query = {
      limit: PAGE,
      offset,
      actor: actor.input.value.trim(),
      action: action.input.value.trim(),
      resource_type: resourceType.input.value.trim(),
      resource_id: resourceId.input.value.trim(),
      user_id: userId.input.value.trim(),
      success: success.input.value,
      since: utcIso(since.input.value),
      until: utcIso(until.input.value),
    };
    let page;
    try {
      page = await api("/audit-logs", { query });
    } catch (error) {
      clear(body).append(errorBox(error, "The audit log could not be loaded"));
      clear(paging);
      return;
    }
    const rows = page.items.map((entry) =>
      h("tr", { class: entry.success ? "" : "failed" }, [
        h("td", {}, formatTime(entry.at)),
        h("td", {}, entry.actor || "–"),
        h("td", {}, entry.ip || "–"),
        h("td", {}, entry.action),
        h("td", {}, `${entry.resource_type}${entry.resource_id ? ` ${entry.resource_id}` : ""}`),
        h("td", {}, entry.success ? "ok" : "failed"),
        h("td", { class: "details-cell" }, entry.details ? describeDetails(entry.details) : "–"),
      ]),
    );
    clear(body).append(
      h("table", { class: "table" }, [
        h("caption", { class: "offscreen" }, "Audit entries"),
        h(
          "thead",
          {},
          h("tr", {}, ["Time (UTC)", "Actor", "IP", "Action", "Resource", "Outcome", "Details"].map((t) => h("th", { scope: "col" }, t))),
        ),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: "7" }, "No entries match."))),
      ]),
    );
    clear(paging).append(pager(offset, PAGE, page.total, (next) => ((offset = next), load())));
  }

  await load();
  return null;
}

/** key=value pairs, readable, not raw JSON; nested objects as key.sub=value. */
function describeDetails(details, prefix = "") {
  const parts = [];
  for (const [key, value] of Object.entries(details)) {
    const name = prefix ? `${prefix}.${key}` : key;
    if (Array.isArray(value)) parts.push(`${name}=${value.map((v) => (typeof v === "object" ? describeDetails(v) : v)).join(",")}`);
    else if (value && typeof value === "object") parts.push(describeDetails(value, name));
    else parts.push(`${name}=${value}`);
  }
  return parts.join("  ");
}
