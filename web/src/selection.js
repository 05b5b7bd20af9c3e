// The images chosen for the next submit: each one's cut-out preview or the reason it will not be sent, and a
// button to take it out of the selection.

import * as api from "./api.js";

// What the server decodes (pipeline/image.py); anything else is refused here, per file, before any upload.
const ACCEPTED = new Map([
  ["image/png", "PNG"],
  ["image/jpeg", "JPEG"],
  ["image/webp", "WebP"],
  ["image/gif", "GIF"],
]);
export const ACCEPTED_TYPES = [...ACCEPTED.keys()];
export const ACCEPTED_LIST = "PNG, JPEG, WebP or GIF";

/** What to call a file's type in a message: "BMP", "TXT", or "this file type". */
function typeName(file) {
  const subtype = (file.type.split("/")[1] || "").replace(/^x-(ms-)?/, "");
  const extension = /\.([A-Za-z0-9]{1,5})$/.exec(file.name)?.[1];
  return (subtype || extension || "").toUpperCase() || "this file type";
}

export class Selection {
  /** `container` holds the previews; `onChange()` runs whenever what can be sent changes. */
  constructor(container, onChange) {
    this.container = container;
    this.onChange = onChange;
    this.items = [];
    this.nextId = 0;
    this.checks = Promise.resolve(); // cut-outs are asked for one at a time
  }

  /** Add files; a file already chosen (same name, size and date) is not added twice. */
  add(files) {
    for (const file of files) {
      const known = this.items.some(
        (item) => item.file.name === file.name && item.file.size === file.size && item.file.lastModified === file.lastModified,
      );
      if (known) continue;
      const item = { id: `image-${(this.nextId += 1)}`, file, status: "checking", reason: "" };
      this.items.push(item);
      item.element = this.render(item);
      this.container.append(item.element);
      if (ACCEPTED.has(file.type)) {
        this.checks = this.checks.then(() => this.check(item));
      } else {
        this.reject(item, `${typeName(file)} is not supported: choose ${ACCEPTED_LIST} images`);
      }
    }
    this.onChange();
  }

  /** The files a submit sends: every one not refused (those still being checked included). */
  sendable() {
    return this.items.filter((item) => item.status !== "rejected").map((item) => item.file);
  }

  /** After a submit: drop the files that were sent, keep the refused ones with their reasons on screen. */
  clearSent() {
    for (const item of this.items.filter((item) => item.status !== "rejected")) this.remove(item, { quiet: true });
    this.onChange();
  }

  remove(item, { quiet = false } = {}) {
    this.items = this.items.filter((other) => other !== item);
    item.removed = true;
    item.element.remove();
    if (item.url) URL.revokeObjectURL(item.url);
    if (!quiet) this.onChange();
  }

  render(item) {
    const figure = document.createElement("figure");
    figure.className = "cutout-preview";
    figure.dataset.name = item.file.name;
    figure.dataset.status = item.status;
    const pending = document.createElement("p");
    pending.className = "hint cutout-pending";
    pending.textContent = "cutting out…";
    const caption = document.createElement("figcaption");
    caption.textContent = item.file.name;
    caption.title = item.file.name;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove-image";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Remove ${item.file.name}`);
    remove.title = "Remove from the selection";
    remove.addEventListener("click", () => {
      const next = item.element.nextElementSibling || item.element.previousElementSibling;
      this.remove(item);
      (next?.querySelector(".remove-image") || document.getElementById("drop-zone")).focus();
    });
    figure.append(pending, caption, remove);
    return figure;
  }

  async check(item) {
    if (item.removed) return;
    try {
      item.url = await api.cutout(item.file);
      if (item.removed) return URL.revokeObjectURL(item.url);
      const img = document.createElement("img");
      img.className = "cutout";
      img.alt = `Cut-out of ${item.file.name}`;
      img.src = item.url;
      item.element.querySelector(".cutout-pending").replaceWith(img);
      this.setStatus(item, "ready");
    } catch (err) {
      if (item.removed) return;
      if (err.status >= 400 && err.status < 500 && err.status !== 401 && err.status !== 403) {
        this.reject(item, err.message); // the server read the file and refused it: it would refuse the job too
      } else {
        const note = item.element.querySelector(".cutout-pending");
        note.className = "hint cutout-pending";
        note.textContent = `No preview (${err.message}); it will still be sent`;
        this.setStatus(item, "unchecked");
      }
    }
  }

  reject(item, reason) {
    item.reason = reason;
    const note = item.element.querySelector(".cutout-pending");
    note.className = "error cutout-error";
    note.textContent = `Not sent: ${reason}`;
    this.setStatus(item, "rejected");
  }

  setStatus(item, status) {
    item.status = status;
    item.element.dataset.status = status;
    this.onChange();
  }
}
