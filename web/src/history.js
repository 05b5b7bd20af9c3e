// History: every job the signed-in person may see (sent from this page, the CLI's client, the API or an agent),
// newest first, refreshed from the server while the page is open, a page of PAGE_SIZE at a time.

import * as api from "./api.js";
import { endReason, plural, progressText } from "./describe.js";
import { FINISHED } from "./follow.js";

const PAGE_SIZE = 30;
const MAX_LIMIT = 200; // GET /api/jobs answers at most this many per request
const ACTIVE_REFRESH_MS = 2000; // while a listed job is queued or running
const IDLE_REFRESH_MS = 5000; // otherwise, to pick up jobs other clients send

export class History {
  /** `list` is the <ul>, `more` the "show more" button; `onView(job)` opens a finished job's model. */
  constructor(list, more, onView) {
    this.list = list;
    this.more = more;
    this.onView = onView;
    this.shown = PAGE_SIZE;
    this.items = new Map(); // job id → {li, signature}
    this.timer = null;
    this.loading = null;
    more.addEventListener("click", () => {
      this.shown += PAGE_SIZE;
      this.refresh();
    });
  }

  /** Load now, then keep loading: every ACTIVE_REFRESH_MS while a job is unfinished, else IDLE_REFRESH_MS. */
  start() {
    this.refresh();
  }

  /** Fetch the first `shown` jobs and update the list in place (focus and thumbnails stay). */
  refresh() {
    clearTimeout(this.timer);
    if (!this.loading) this.loading = this.load().finally(() => (this.loading = null));
    return this.loading;
  }

  async load() {
    let jobs = [];
    let total = 0;
    try {
      while (jobs.length < this.shown) {
        const page = await api.listJobs(Math.min(MAX_LIMIT, this.shown - jobs.length), jobs.length);
        jobs = jobs.concat(page.jobs);
        total = page.total;
        if (!page.jobs.length || jobs.length >= total) break;
      }
    } catch {
      this.schedule(IDLE_REFRESH_MS); // keep the last listing; the connection status says what is wrong
      return;
    }
    this.render(jobs, total);
    this.schedule(jobs.some((job) => !FINISHED.has(job.status)) ? ACTIVE_REFRESH_MS : IDLE_REFRESH_MS);
  }

  schedule(delay) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => (document.hidden ? this.schedule(delay) : this.refresh()), delay);
  }

  render(jobs, total) {
    const nodes = jobs.map((job) => {
      const signature = [job.status, job.progress, job.stage, job.error, job.preview_url].join("|");
      const known = this.items.get(job.id);
      if (known && known.signature === signature) return known.li;
      const li = this.renderItem(job);
      if (known?.li.contains(document.activeElement)) queueMicrotask(() => li.focus());
      this.items.set(job.id, { li, signature });
      return li;
    });
    const ids = new Set(jobs.map((job) => job.id));
    for (const id of this.items.keys()) if (!ids.has(id)) this.items.delete(id);
    const current = [...this.list.children];
    if (current.length !== nodes.length || current.some((node, index) => node !== nodes[index])) {
      this.list.replaceChildren(...nodes);
    }
    const empty = this.list.parentElement.querySelector(".history-empty");
    if (empty) empty.hidden = jobs.length > 0;
    const older = total - jobs.length;
    this.more.hidden = older <= 0;
    this.more.textContent = `Show ${Math.min(PAGE_SIZE, older)} more (${plural(older, "older job")})`;
  }

  renderItem(job) {
    const li = document.createElement("li");
    li.className = "history-item";
    li.dataset.jobId = job.id;
    li.dataset.status = job.status;
    let picture;
    if (job.preview_url) {
      picture = document.createElement("img");
      picture.className = "thumb";
      picture.alt = "";
      picture.loading = "lazy";
      picture.src = job.preview_url;
    } else {
      // no model to show: a placeholder of the same size saying why
      picture = document.createElement("div");
      picture.className = "thumb placeholder";
      picture.setAttribute("aria-hidden", "true");
      picture.textContent = FINISHED.has(job.status) ? "no model" : "…";
    }
    const name = document.createElement("span");
    name.className = "history-name";
    name.textContent = job.input_name || job.id;
    name.title = name.textContent;
    const status = document.createElement("span");
    status.className = "history-status";
    status.textContent = progressText(job);
    li.append(picture, name, status);
    const reason = endReason(job);
    if (reason) {
      const why = document.createElement("span");
      why.className = "history-reason error";
      why.textContent = reason;
      why.title = reason;
      li.append(why);
    }
    const when = document.createElement("time");
    when.className = "history-time hint";
    if (job.created_at) {
      when.dateTime = job.created_at;
      when.textContent = new Date(job.created_at).toLocaleString();
    }
    li.append(when);
    if (job.status === "succeeded" && job.result_urls?.glb) {
      li.tabIndex = 0;
      li.setAttribute("role", "button");
      li.setAttribute("aria-label", `View ${name.textContent}`);
      li.addEventListener("click", () => this.onView(job));
      li.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          this.onView(job);
        }
      });
    }
    return li;
  }
}
