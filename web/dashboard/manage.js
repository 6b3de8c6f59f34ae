// Camera management (cameras:write): the add/edit form, key rotation, deletion, bulk actions, and the publish
// URL block. Stream keys and publish URLs are shown only when the API returned them, which it does for
// cameras:write callers alone.

import { api } from "./api.js";
import { store } from "./store.js";
import { confirmDialog, copyWithFeedback, field, h, openDialog, toast } from "./ui.js";

const TEXT_FIELDS = [
  ["name", "Name", { required: true, maxlength: 128 }],
  ["company", "Company", { maxlength: 128 }],
  ["vendor", "Vendor", { maxlength: 128 }],
  ["model", "Model", { maxlength: 128 }],
  ["serial_number", "Serial number", { maxlength: 128 }],
  ["location", "Location", { maxlength: 255 }],
];
const FLAGS = [
  ["enabled", "Enabled (may publish)", true],
  ["recording_enabled", "Record", false],
  ["private", "Private (playback needs a token)", true],
];

/** Add (camera null) or edit a camera in a dialog; resolves to the saved camera or false. */
export async function cameraDialog(camera = null) {
  const inputs = {};
  const rows = [];
  for (const [key, label, attrs] of TEXT_FIELDS) {
    const value = camera ? (camera[key] ?? "") : "";
    const built = field(label, { ...attrs, name: key, value, autocomplete: "off" });
    inputs[key] = built.input;
    rows.push(built.row);
  }
  const source = field("Source URL (pull from RTSP/RTMP/HTTP-FLV; empty: the camera pushes)", {
    name: "source_url",
    type: "url",
    maxlength: 2048,
    value: camera ? (camera.source_url ?? "") : "",
    placeholder: "rtsp://user:password@camera/stream",
    autocomplete: "off",
  });
  inputs.source_url = source.input;
  rows.push(source.row);
  const flags = h("fieldset", { class: "flags" }, h("legend", {}, "Options"));
  for (const [key, label, initial] of FLAGS) {
    const built = field(label, { type: "checkbox", name: key, checked: camera ? Boolean(camera[key]) : initial });
    inputs[key] = built.input;
    flags.append(built.row);
  }
  rows.push(flags);
  const body = h("div", { class: "form-grid" }, rows);

  const shown = openDialog({
    title: camera ? `Edit ${camera.name}` : "Add a camera",
    body,
    submitLabel: camera ? "Save" : "Add camera",
    cancelLabel: "Cancel",
    onSubmit: async () => {
      const values = {};
      for (const [key] of TEXT_FIELDS) values[key] = inputs[key].value.trim();
      values.source_url = inputs.source_url.value.trim();
      for (const [key] of FLAGS) values[key] = inputs[key].checked;
      let saved;
      if (camera) {
        // Only what changed: fields this caller never saw stay as they are.
        const changes = {};
        for (const [key, value] of Object.entries(values)) {
          const before = camera[key] ?? (typeof value === "boolean" ? false : "");
          if (value !== before) changes[key] = value;
        }
        if (!Object.keys(changes).length) return camera;
        saved = await api(`/cameras/${camera.id}`, { method: "PUT", body: changes });
        toast(`${saved.name} saved.`, "success");
      } else {
        const create = { ...values };
        if (!create.source_url) delete create.source_url;
        if (!create.company) delete create.company; // servers without the company field still accept the rest
        saved = await api("/cameras", { method: "POST", body: create });
      }
      return store.upsert(saved);
    },
  });
  const result = await shown.closed;
  if (result && !camera) await createdDialog(result);
  return result;
}

async function createdDialog(camera) {
  const body = h("div", {}, [
    h("p", {}, `${camera.name} was added. Point the camera (or OBS/ffmpeg) at its publish URL:`),
    camera.publish_url ? publishBlock(camera) : h("p", {}, "The publish URL is shown to camera managers only."),
  ]);
  await openDialog({ title: "Camera added", body, cancelLabel: "Done" }).closed;
}

/** The publish URL (hidden until asked), with Show and Copy buttons; null when the API gave none. */
export function publishBlock(camera) {
  if (!camera.publish_url) return null;
  const id = `publish-${camera.id}`;
  const input = h("input", {
    id,
    type: "password",
    readonly: true,
    value: camera.publish_url,
    class: "publish-url",
    autocomplete: "off",
    spellcheck: "false",
  });
  const show = h("button", { type: "button", "aria-pressed": "false", "aria-controls": id }, "Show");
  show.addEventListener("click", () => {
    const visible = input.type === "password";
    input.type = visible ? "text" : "password";
    show.textContent = visible ? "Hide" : "Show";
    show.setAttribute("aria-pressed", String(visible));
  });
  const copy = h("button", { type: "button", class: "copy-publish-url" }, "Copy");
  copy.addEventListener("click", () => copyWithFeedback(input.value, "Publish URL copied"));
  return h("div", { class: "publish" }, [
    h("label", { for: id }, "Publish URL (contains the secret stream key)"),
    h("div", { class: "publish-row" }, [input, show, copy]),
  ]);
}

/** Confirm, then give the camera a new stream key; resolves to the updated camera or null. */
export async function rotateKey(camera) {
  const ok = await confirmDialog(
    "Rotate the stream key?",
    `${camera.name} gets a new stream key. The old key stops working at once and a running publisher is ` +
      "disconnected: the camera must be given the new publish URL.",
    "Rotate key",
  );
  if (!ok) return null;
  const rotated = store.upsert(await api(`/cameras/${camera.id}/rotate-key`, { method: "POST" }));
  toast(`${camera.name} has a new stream key.`, "success");
  return rotated;
}

export async function deleteCamera(camera) {
  const ok = await confirmDialog(
    "Delete this camera?",
    `${camera.name} is deleted and its publisher disconnected. Recordings stay on disk.`,
    "Delete",
  );
  if (!ok) return false;
  await api(`/cameras/${camera.id}`, { method: "DELETE" });
  store.remove(camera.id);
  toast(`${camera.name} deleted.`, "success");
  return true;
}

/** enable | disable | delete for many cameras at once (POST /cameras/bulk). */
export async function bulkAction(action, ids) {
  if (!ids.length) return null;
  if (action === "delete") {
    const ok = await confirmDialog(
      `Delete ${ids.length} camera${ids.length === 1 ? "" : "s"}?`,
      "They are deleted and their publishers disconnected. Recordings stay on disk.",
      "Delete",
    );
    if (!ok) return null;
  }
  const result = await api("/cameras/bulk", { method: "POST", body: { action, ids } });
  for (const id of ids) {
    if (result.not_found.includes(id)) continue;
    if (action === "delete") store.remove(id);
    else store.patch(id, { enabled: action === "enable" });
  }
  const verb = { enable: "enabled", disable: "disabled", delete: "deleted" }[action];
  toast(`${result.affected} camera${result.affected === 1 ? "" : "s"} ${verb}.`, "success");
  return result;
}

export async function setRecording(camera, on) {
  const answer = await api(`/cameras/${camera.id}/recording`, { method: "POST", body: { action: on ? "start" : "stop" } });
  store.patch(camera.id, { recording: answer.recording });
  toast(`${camera.name}: recording ${answer.recording ? "started" : "stopped"}.`, "success");
  return answer;
}
