// The ORFEAS studio: pick images, see their cut-outs, generate models, follow the jobs, view and download results.

import * as api from "./api.js";
import { FINISHED, followJob } from "./follow.js";
import { Monitor } from "./monitor.js";
import { Viewer } from "./viewer.js";

const ACCEPTED = new Set(["image/png", "image/jpeg", "image/webp"]);
const HISTORY_LIMIT = 30;
const $ = (id) => document.getElementById(id);

const state = { files: [], disconnected: new Set(), jobs: new Map() };
let viewer = null;

// ---- images and cut-outs

function chooseFiles(files) {
  state.files = [...files].filter((file) => ACCEPTED.has(file.type));
  $("generate").disabled = state.files.length === 0;
  showCutouts(state.files);
}

async function showCutouts(files) {
  const previews = $("cutout-previews");
  previews.replaceChildren();
  for (const file of files) {
    const figure = document.createElement("figure");
    figure.className = "cutout-preview";
    const caption = document.createElement("figcaption");
    caption.textContent = file.name;
    const pending = document.createElement("p");
    pending.className = "hint";
    pending.textContent = "cutting out…";
    figure.append(pending, caption);
    previews.append(figure);
    try {
      const img = document.createElement("img");
      img.className = "cutout";
      img.alt = `Cut-out of ${file.name}`;
      img.src = await api.cutout(file);
      pending.replaceWith(img);
    } catch (err) {
      pending.className = "error cutout-error";
      pending.textContent = `Cut-out failed: ${err.message}`;
    }
  }
}

function setUpDropZone() {
  const zone = $("drop-zone");
  const input = $("file-input");
  zone.addEventListener("click", (event) => {
    if (event.target !== input) input.click();
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  input.addEventListener("change", () => chooseFiles(input.files));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    chooseFiles(event.dataTransfer.files);
  });
}

// ---- options and submit

async function loadGenerators() {
  const select = $("opt-backend");
  const defaults = new Map();
  try {
    const listing = await api.generators();
    for (const generator of listing.generators) {
      select.append(new Option(generator.name, generator.name, false, generator.name === listing.default));
      defaults.set(generator.name, generator.default_resolution);
    }
    setConnection("server", true);
  } catch (err) {
    showFormError(`Could not load the generators: ${err.message}`);
    setConnection("server", false);
  }
  const showDefault = () => {
    const resolution = defaults.get(select.value);
    $("opt-resolution").placeholder = resolution ? `default ${resolution}` : "default";
  };
  select.addEventListener("change", showDefault);
  showDefault();
}

function showFormError(message) {
  const error = $("form-error");
  error.textContent = message;
  error.hidden = !message;
}

async function generate(event) {
  event.preventDefault();
  showFormError("");
  const formats = [...document.querySelectorAll("input[name=format]:checked")].map((box) => box.value);
  if (!state.files.length) return showFormError("Choose at least one image.");
  if (!formats.length) return showFormError("Choose at least one format.");
  const form = new FormData();
  for (const file of state.files) form.append("image", file, file.name);
  form.append("backend", $("opt-backend").value);
  const resolution = $("opt-resolution").value.trim();
  if (resolution) form.append("resolution", resolution);
  form.append("faces", $("opt-faces").value || "50000");
  form.append("texture", $("opt-texture").checked ? "true" : "false");
  form.append("formats", formats.join(","));
  form.append("seed", "0");

  const button = $("generate");
  button.disabled = true;
  try {
    const { jobs } = await api.submitJobs(form);
    for (const job of jobs) trackJob(job);
    refreshHistory();
  } catch (err) {
    showFormError(`Could not submit: ${err.message}`);
  } finally {
    button.disabled = state.files.length === 0;
  }
}

// ---- jobs

function trackJob(job) {
  const item = renderJob(job);
  $("jobs").prepend(item);
  state.jobs.set(job.id, item);
  if (FINISHED.has(job.status)) return;
  followJob(job, {
    onUpdate: (update) => updateJob(item, update),
    onEnd: (final) => {
      updateJob(item, final);
      refreshHistory();
    },
    onConnection: (connected) => setConnection(job.id, connected),
  });
}

function renderJob(job) {
  const li = document.createElement("li");
  li.className = "job";
  li.dataset.jobId = job.id;
  li.innerHTML = `
    <div class="job-head">
      <span class="job-name"></span>
      <span class="job-status" role="status" aria-live="polite"></span>
    </div>
    <progress class="job-progress" max="100" value="0"></progress>
    <span class="job-stage"></span>
    <p class="job-error error" hidden></p>
    <div class="job-actions">
      <button type="button" class="cancel">Cancel</button>
    </div>`;
  li.querySelector(".job-name").textContent = job.input_name || job.id;
  li.querySelector(".job-progress").setAttribute("aria-label", `Progress of ${job.input_name || job.id}`);
  li.querySelector(".cancel").addEventListener("click", async (event) => {
    event.target.disabled = true;
    try {
      updateJob(li, await api.cancelJob(job.id));
    } catch (err) {
      updateJob(li, { error: `Cancel failed: ${err.message}` });
      event.target.disabled = false;
    }
  });
  updateJob(li, job);
  return li;
}

function updateJob(li, job) {
  const merged = { ...(li.job || {}), ...job };
  li.job = merged;
  li.dataset.status = merged.status || "";
  li.querySelector(".job-status").textContent = merged.status || "";
  li.querySelector(".job-stage").textContent = merged.stage || "";
  const progress = li.querySelector(".job-progress");
  progress.value = merged.status === "succeeded" ? 100 : Number(merged.progress) || 0;
  progress.setAttribute("aria-valuetext", `${progress.value}%${merged.stage ? `, ${merged.stage}` : ""}`);
  const error = li.querySelector(".job-error");
  error.textContent = merged.error || "";
  error.hidden = !merged.error;
  const cancel = li.querySelector(".cancel");
  if (cancel && FINISHED.has(merged.status)) cancel.remove();
  // a progress event says "succeeded" before the end message brings the result URLs
  const hasResults = Object.keys(merged.result_urls || {}).length > 0;
  if (merged.status === "succeeded" && hasResults && !li.querySelector(".view")) addResultActions(li, merged);
}

function addResultActions(li, job) {
  const actions = li.querySelector(".job-actions");
  const view = document.createElement("button");
  view.type = "button";
  view.className = "view";
  view.textContent = "View";
  if (job.result_urls?.glb) {
    view.addEventListener("click", () => showModel(job));
  } else {
    view.disabled = true;
    view.title = "Ask for GLB to view the model here";
  }
  actions.append(view);
  const stem = (job.input_name || "model").replace(/\.[^.]+$/, "").replace(/[^A-Za-z0-9_.-]/g, "_") || "model";
  for (const [format, url] of Object.entries(job.result_urls || {})) {
    const link = document.createElement("a");
    link.className = "download";
    link.dataset.format = format;
    link.href = url;
    link.download = format === "obj" ? `${stem}.obj.zip` : `${stem}.${format}`;
    link.textContent = format.toUpperCase();
    link.setAttribute("aria-label", `Download ${job.input_name || "model"} as ${format.toUpperCase()}`);
    actions.append(link);
  }
}

// ---- connection status: "reconnecting…" while any job's socket (or the first request) is down

function setConnection(key, connected) {
  if (connected) state.disconnected.delete(key);
  else state.disconnected.add(key);
  $("connection").textContent = state.disconnected.size ? "reconnecting…" : "connected";
}

// ---- viewer

async function showModel(job) {
  const message = $("viewer").querySelector(".viewer-message");
  if (!viewer) {
    message.textContent = "WebGL is not available in this browser: download the model instead.";
    return;
  }
  document.body.dataset.modelLoaded = "false";
  message.textContent = `Loading ${job.input_name || "model"}…`;
  try {
    await viewer.load(job.result_urls.glb);
    message.textContent = "";
    const faces = job.result?.faces;
    $("face-count").textContent = faces == null ? "" : `${Number(faces).toLocaleString("en")} faces`;
    document.body.dataset.modelLoaded = "true";
  } catch (err) {
    message.textContent = `Could not load the model: ${err.message}`;
  }
}

// ---- history

async function refreshHistory() {
  let jobs;
  try {
    ({ jobs } = await api.listJobs(HISTORY_LIMIT));
  } catch {
    return; // keep the last listing; the connection status already says what is wrong
  }
  $("history").replaceChildren(...jobs.map(renderHistoryItem));
}

function renderHistoryItem(job) {
  const li = document.createElement("li");
  li.className = "history-item";
  li.dataset.jobId = job.id;
  li.dataset.status = job.status;
  const thumb = document.createElement("img");
  thumb.className = "thumb";
  thumb.alt = "";
  thumb.loading = "lazy";
  if (job.preview_url) thumb.src = job.preview_url;
  const name = document.createElement("span");
  name.className = "history-name";
  name.textContent = job.input_name || job.id;
  const status = document.createElement("span");
  status.className = "history-status";
  status.textContent = job.status;
  const when = document.createElement("time");
  when.className = "history-time hint";
  if (job.created_at) {
    when.dateTime = job.created_at;
    when.textContent = new Date(job.created_at).toLocaleString();
  }
  li.append(thumb, name, status, when);
  if (job.status === "succeeded" && job.result_urls?.glb) {
    li.tabIndex = 0;
    li.setAttribute("role", "button");
    li.setAttribute("aria-label", `View ${name.textContent}`);
    li.addEventListener("click", () => showModel(job));
    li.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        showModel(job);
      }
    });
  }
  return li;
}

// ---- tabs

function setUpTabs(monitor) {
  const tabs = [
    [$("tab-studio"), $("studio")],
    [$("tab-monitor"), $("monitor-view")],
  ];
  const select = (chosen) => {
    for (const [tab, panel] of tabs) {
      const active = tab === chosen;
      tab.setAttribute("aria-selected", String(active));
      panel.hidden = !active;
    }
    if (chosen.id === "tab-monitor") monitor.start();
    else monitor.stop();
    if (chosen.id === "tab-studio") viewer?.resize();
  };
  for (const [tab] of tabs) tab.addEventListener("click", () => select(tab));
}

// ---- who is signed in

async function showUser() {
  try {
    const user = await api.me();
    if (user.auth === "off") return; // one person on this machine: nothing to sign out of
    $("user-name").textContent = user.admin ? `${user.name} (admin)` : user.name;
    $("user-bar").hidden = false;
    $("logout").addEventListener("click", async () => {
      await api.logout().catch(() => {});
      location.assign("/login");
    });
  } catch {
    // the request itself sends a signed-out page to /login
  }
}

// ---- start

function start() {
  try {
    viewer = new Viewer($("viewer"));
  } catch (err) {
    $("viewer").querySelector(".viewer-message").textContent = `3D view unavailable: ${err.message}`;
  }
  setUpDropZone();
  $("options").addEventListener("submit", generate);
  $("wireframe-toggle").addEventListener("change", (event) => viewer?.setWireframe(event.target.checked));
  setUpTabs(new Monitor($("monitor-view")));
  showUser();
  loadGenerators();
  refreshHistory();
}

start();
