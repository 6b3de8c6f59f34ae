// #/tokens (tokens:manage): API tokens. Create one (the secret is shown once, in the dialog that answers the
// creation), list, revoke.

import { api } from "./api.js";
import {
  clear,
  confirmDialog,
  copyWithFeedback,
  errorBox,
  field,
  formatTime,
  h,
  openDialog,
  pageHeader,
  pager,
  toast,
  toastError,
} from "./ui.js";

const PAGE = 50;

export async function tokensView(container, ctx) {
  let offset = 0;
  const body = h("div", { class: "table-wrap" });
  const paging = h("div");
  container.append(
    pageHeader(
      "API tokens",
      h("button", { type: "button", class: "primary", onclick: () => createDialog(ctx).then((ok) => ok && load()) }, "Create token"),
    ),
    h("p", { class: "muted" }, ctx.can("users:manage") ? "Tokens of every user." : "Your tokens."),
    body,
    paging,
  );

  async function load() {
    let page;
    try {
      page = await api("/tokens", { query: { limit: PAGE, offset } });
    } catch (error) {
      clear(body).append(errorBox(error, "The tokens could not be loaded"));
      return;
    }
    const rows = page.items.map((token) =>
      h("tr", {}, [
        h("td", {}, token.name),
        h("td", {}, h("code", {}, `${token.prefix}…`)),
        h("td", {}, String(token.user_id)),
        h("td", {}, token.scopes.join(", ")),
        h("td", {}, token.expires_at ? formatTime(token.expires_at) : "never"),
        h("td", {}, formatTime(token.last_used_at)),
        h("td", {}, token.revoked ? "Revoked" : "Active"),
        h(
          "td",
          { class: "actions" },
          token.revoked
            ? null
            : h(
                "button",
                {
                  type: "button",
                  class: "danger",
                  onclick: async () => {
                    if (!(await confirmDialog("Revoke this token?", `${token.name} stops working at once.`, "Revoke"))) return;
                    try {
                      await api(`/tokens/${token.id}`, { method: "DELETE" });
                      toast(`${token.name} revoked.`, "success");
                      load();
                    } catch (error) {
                      toastError(error, "Revoke failed");
                    }
                  },
                },
                "Revoke",
              ),
        ),
      ]),
    );
    clear(body).append(
      h("table", { class: "table" }, [
        h("caption", { class: "offscreen" }, "API tokens"),
        h(
          "thead",
          {},
          h("tr", {}, ["Name", "Prefix", "User", "Scopes", "Expires", "Last used", "State", "Actions"].map((t) => h("th", { scope: "col" }, t))),
        ),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: "8" }, "No tokens yet."))),
      ]),
    );
    clear(paging).append(pager(offset, PAGE, page.total, (next) => ((offset = next), load())));
  }

  await load();
  return null;
}

async function createDialog(ctx) {
  const name = field("Name", { required: true, maxlength: 128, autocomplete: "off" });
  const days = field("Expires after (days; empty: never)", { type: "number", min: "1", max: "3650", value: "90" });
  const allow = field("Allowed client networks (optional, comma-separated CIDRs)", { placeholder: "10.0.0.0/8, 192.0.2.7/32" });
  const owner = ctx.can("users:manage") ? field("For user id (optional; default: you)", { type: "number", min: "1" }) : null;
  const scopes = h("fieldset", { class: "flags" }, h("legend", {}, "Scopes (at most your own permissions)"));
  const boxes = ctx.me.permissions.map((permission) => {
    const box = field(permission, { type: "checkbox", value: permission, checked: permission.endsWith(":read") });
    scopes.append(box.row);
    return box.input;
  });
  let created = null;
  const ok = await openDialog({
    title: "Create an API token",
    body: h("div", { class: "form-grid" }, [name.row, scopes, days.row, allow.row, owner && owner.row]),
    submitLabel: "Create",
    cancelLabel: "Cancel",
    onSubmit: async () => {
      const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
      if (!chosen.length) throw new Error("Choose at least one scope.");
      const request = { name: name.input.value.trim(), scopes: chosen };
      request.expires_in_days = days.input.value ? Number(days.input.value) : null;
      const networks = allow.input.value.split(",").map((s) => s.trim()).filter(Boolean);
      if (networks.length) request.ip_allowlist = networks;
      if (owner && owner.input.value) request.user_id = Number(owner.input.value);
      created = await api("/tokens", { method: "POST", body: request });
      return true;
    },
  }).closed;
  if (!ok || !created) return false;
  const secret = h("input", { type: "text", readonly: true, value: created.token, class: "secret", "aria-label": "Token secret" });
  const copy = h("button", { type: "button", onclick: () => copyWithFeedback(created.token, "Token copied") }, "Copy");
  await openDialog({
    title: "Token created",
    body: h("div", {}, [
      h("p", { class: "notice" }, "Copy the secret now: it is shown only this once."),
      h("div", { class: "publish-row" }, [secret, copy]),
    ]),
    cancelLabel: "Done",
  }).closed;
  return true;
}
