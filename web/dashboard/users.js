// #/users (users:manage): list, create, edit role/email/disabled/password, delete.

import { api } from "./api.js";
import { clear, confirmDialog, errorBox, field, formatTime, h, openDialog, pageHeader, pager, toast, toastError } from "./ui.js";

const ROLES = [
  ["viewer", "Viewer"],
  ["operator", "Operator"],
  ["admin", "Admin"],
  ["api_only", "API only (tokens, no login)"],
];
const PAGE = 50;

export async function usersView(container, ctx) {
  let offset = 0;
  const search = field("Username contains", { type: "search", autocomplete: "off" });
  const body = h("div", { class: "table-wrap" });
  const paging = h("div");
  container.append(
    pageHeader(
      "Users",
      h("button", { type: "button", class: "primary", onclick: () => userDialog(null).then((ok) => ok && load()) }, "Add user"),
    ),
    h("form", { class: "filters", role: "search", onsubmit: (e) => (e.preventDefault(), (offset = 0), load()) }, [
      search.row,
      h("button", { type: "submit" }, "Search"),
    ]),
    body,
    paging,
  );

  async function load() {
    let page;
    try {
      page = await api("/users", { query: { limit: PAGE, offset, q: search.input.value.trim() } });
    } catch (error) {
      clear(body).append(errorBox(error, "The users could not be loaded"));
      clear(paging);
      return;
    }
    const rows = page.items.map((user) =>
      h("tr", { dataset: { userId: String(user.id) } }, [
        h("td", {}, user.username),
        h("td", {}, user.email || "–"),
        h("td", {}, user.role),
        h("td", {}, user.disabled ? "Disabled" : "Active"),
        h("td", {}, formatTime(user.last_login_at)),
        h("td", { class: "actions" }, [
          h("button", { type: "button", onclick: () => userDialog(user).then((ok) => ok && load()) }, "Edit"),
          user.id === ctx.me.id
            ? null
            : h(
                "button",
                {
                  type: "button",
                  class: "danger",
                  onclick: async () => {
                    if (!(await confirmDialog("Delete this user?", `${user.username} is deleted and signed out.`, "Delete"))) return;
                    try {
                      await api(`/users/${user.id}`, { method: "DELETE" });
                      toast(`${user.username} deleted.`, "success");
                      load();
                    } catch (error) {
                      toastError(error, "Delete failed");
                    }
                  },
                },
                "Delete",
              ),
        ]),
      ]),
    );
    clear(body).append(
      h("table", { class: "table" }, [
        h("caption", { class: "offscreen" }, "Users"),
        h("thead", {}, h("tr", {}, ["Username", "Email", "Role", "State", "Last login", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: "6" }, "No users match."))),
      ]),
    );
    clear(paging).append(pager(offset, PAGE, page.total, (next) => ((offset = next), load())));
  }

  await load();
  return null;
}

/** Create (user null) or edit a user; resolves true when saved. */
function userDialog(user) {
  const username = user ? null : field("Username", { required: true, minlength: 3, maxlength: 64, autocomplete: "off" });
  const email = field("Email (optional)", { type: "email", value: user ? user.email || "" : "", autocomplete: "off" });
  const role = field("Role", { value: user ? user.role : "viewer" }, ROLES);
  const password = field(user ? "New password (leave empty to keep)" : "Password", {
    type: "password",
    required: !user,
    autocomplete: "new-password",
  });
  const disabled = field("Disabled (cannot sign in)", { type: "checkbox", checked: user ? user.disabled : false });
  return openDialog({
    title: user ? `Edit ${user.username}` : "Add a user",
    body: h("div", { class: "form-grid" }, [username && username.row, email.row, role.row, password.row, disabled.row]),
    submitLabel: user ? "Save" : "Add user",
    cancelLabel: "Cancel",
    onSubmit: async () => {
      const values = { role: role.input.value, disabled: disabled.input.checked };
      const mail = email.input.value.trim();
      if (user) {
        const changes = {};
        if (values.role !== user.role) changes.role = values.role;
        if (values.disabled !== user.disabled) changes.disabled = values.disabled;
        if (mail !== (user.email || "")) changes.email = mail;
        if (password.input.value) changes.password = password.input.value;
        if (!Object.keys(changes).length) return true;
        await api(`/users/${user.id}`, { method: "PUT", body: changes });
        toast(`${user.username} saved.`, "success");
      } else {
        const create = { username: username.input.value.trim(), password: password.input.value, ...values };
        if (mail) create.email = mail;
        const created = await api("/users", { method: "POST", body: create });
        toast(`${created.username} added.`, "success");
      }
      return true;
    },
  }).closed;
}
