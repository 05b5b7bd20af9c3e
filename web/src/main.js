// The ORFEAS studio: pick images, see their cut-outs, generate models, follow the jobs, view and download results.

import * as api from "./api.js";
import { endReason, plural, stageLabel } from "./describe.js";
import { FINISHED, followJob } from "./follow.js";
import { History } from "./history.js";
import { Monitor } from "./monitor.js";
import { Selection } from "./selection.js";
import { Viewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);

const state = {
  disconnected: new Set(),
  jobs: new Map(),
  limits: {}, // {faces: {minimum, maximum, default}, resolution: {...}} from GET /api/generators
  variants: new Map(), // generator name -> its models usable here (hunyuan3d's), from GET /api/generators
  viewedAt: 0, // when the person last opened a model themselves (a finished job then does not replace it)
};
let viewer = null;
let selection = null;
let history = null;

// ---- images and cut-outs

function updateGenerateButton() {
  const count = selection.sendable().length;
  const button = $("generate");
  button.disabled = count === 0;
  button.textContent = count > 1 ? `Generate ${count} models` : "Generate";
}

function setUpDropZone() {
  const zone = $("drop-zone");
  const input = $("file-input");
  const choose = (files) => {
    showFormError("");
    selection.add(files);
  };
  zone.addEventListener("click", (event) => {
    if (event.target !== input) input.click();
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  input.addEventListener("change", () => {
    choose(input.files);
    input.value = ""; // choosing the same file again, after removing it, fires `change` again
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    choose(event.dataTransfer.files);
  });
}

// ---- options and submit

async function loadGenerators() {
  const select = $("opt-backend");
  const defaults = new Map();
  try {
    const listing = await api.generators();
    const unavailable = [];
    for (const generator of listing.generators) {
      const label = generator.available ? generator.name : `${generator.name} (not ready: weights missing)`;
      const option = new Option(label, generator.name, false, generator.name === listing.default);
      option.disabled = !generator.available;
      select.append(option);
      defaults.set(generator.name, generator.default_resolution);
      if (!generator.available) unavailable.push(generator);
      if (generator.variants) state.variants.set(generator.name, generator.variants.filter((v) => v.usable));
    }
    showUnavailable(unavailable);
    applyLimits(listing.limits || {});
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
  select.addEventListener("change", showModels);
  $("opt-model").addEventListener("change", showViewsChoice);
  showDefault();
  showModels();
}

/** The models of the chosen generator that can run here (hunyuan3d's variants), and the views choice they allow. */
function showModels() {
  const variants = state.variants.get($("opt-backend").value) || [];
  $("model-field").hidden = !variants.length;
  $("opt-model").replaceChildren(
    ...variants.map((variant) => {
      const option = new Option(`${variant.model}${variant.multiview ? " (views)" : ""}`, variant.model);
      option.dataset.multiview = String(variant.multiview);
      return option;
    }),
  );
  showViewsChoice();
}

function showViewsChoice() {
  const chosen = $("opt-model").selectedOptions[0];
  const multiview = !$("model-field").hidden && chosen?.dataset.multiview === "true";
  $("views-field").hidden = !multiview;
  $("opt-views").checked = multiview;
}

const VIEW_NAMES = ["front", "left", "back", "right"];

/** Under the generator list: which generators cannot run yet, and (opened) where their weights go. */
function showUnavailable(generators) {
  const hint = $("backend-hint");
  hint.hidden = !generators.length;
  const names = generators.map((generator) => generator.name).join(", ");
  hint.querySelector("summary").textContent =
    `${names} ${generators.length === 1 ? "is" : "are"} not ready on this server: weights missing (where to put them)`;
  hint.querySelector("ul").replaceChildren(
    ...generators.map((generator) => {
      const li = document.createElement("li");
      li.textContent = `${generator.name}: ${generator.reason}`;
      return li;
    }),
  );
}

/** Put the server's bounds on the number fields and say them in the hints. */
function applyLimits(limits) {
  state.limits = limits;
  const fields = { resolution: $("opt-resolution"), faces: $("opt-faces") };
  for (const [name, input] of Object.entries(fields)) {
    const bounds = limits[name];
    if (!bounds) continue;
    if (bounds.minimum != null) input.min = bounds.minimum;
    if (bounds.maximum != null) input.max = bounds.maximum;
    if (bounds.default != null && !input.value) input.value = bounds.default;
  }
  const range = (bounds) => `${Number(bounds.minimum).toLocaleString("en")}–${Number(bounds.maximum).toLocaleString("en")}`;
  if (limits.resolution) $("resolution-hint").textContent = `${range(limits.resolution)}; empty: the generator's default`;
  if (limits.faces) $("faces-hint").textContent = range(limits.faces);
}

/** The first problem with a number field against the server's bounds, marking the field; "" when all are fine. */
function checkNumbers() {
  const checks = [
    ["resolution", $("opt-resolution"), "Resolution"],
    ["faces", $("opt-faces"), "Faces"],
  ];
  let problem = "";
  for (const [name, input, label] of checks) {
    const text = input.value.trim();
    const bounds = state.limits[name] || {};
    let message = "";
    if (text === "" && name === "faces") message = `${label}: enter a number`;
    else if (text !== "" && !/^\d+$/.test(text)) message = `${label}: enter a whole number`;
    else if (text !== "" && bounds.minimum != null && Number(text) < bounds.minimum)
      message = `${label}: at least ${Number(bounds.minimum).toLocaleString("en")}`;
    else if (text !== "" && bounds.maximum != null && Number(text) > bounds.maximum)
      message = `${label}: at most ${Number(bounds.maximum).toLocaleString("en")}`;
    input.setAttribute("aria-invalid", String(Boolean(message)));
    problem ||= message;
  }
  return problem;
}

function showFormError(message) {
  const error = $("form-error");
  error.textContent = message;
  error.hidden = !message;
}

async function generate(event) {
  event.preventDefault();
  showFormError("");
  const files = selection.sendable();
  const formats = [...document.querySelectorAll("input[name=format]:checked")].map((box) => box.value);
  if (!files.length) return showFormError("Choose at least one image.");
  if (!formats.length) return showFormError("Choose at least one format.");
  const problem = checkNumbers();
  if (problem) return showFormError(problem);
  const asViews = !$("views-field").hidden && $("opt-views").checked;
  if (asViews && files.length > VIEW_NAMES.length) return showFormError("Views of one object: at most four images.");
  const form = new FormData();
  if (asViews) files.forEach((file, index) => form.append(VIEW_NAMES[index], file, file.name));
  else for (const file of files) form.append("image", file, file.name);
  form.append("backend", $("opt-backend").value);
  if (!$("model-field").hidden) form.append("generator_options", JSON.stringify({ model: $("opt-model").value }));
  const resolution = $("opt-resolution").value.trim();
  if (resolution) form.append("resolution", resolution);
  form.append("faces", $("opt-faces").value.trim());
  form.append("texture", $("opt-texture").checked ? "true" : "false");
  form.append("formats", formats.join(","));
  form.append("seed", "0");

  const button = $("generate");
  button.disabled = true;
  try {
    const { jobs } = await api.submitJobs(form);
    selection.clearSent(); // a second click must not send the same images again
    const submittedAt = Date.now();
    const rows = jobs.map((job) => trackJob(job, submittedAt));
    rows.at(-1)?.scrollIntoView({ block: "nearest", behavior: "smooth" }); // the newest row, on top of the list
    history.refresh();
  } catch (err) {
    showFormError(`Could not submit: ${err.message}`);
  } finally {
    updateGenerateButton();
  }
}

// ---- jobs sent from this page

function trackJob(job, submittedAt) {
  const item = renderJob(job);
  $("jobs").prepend(item);
  state.jobs.set(job.id, item);
  if (FINISHED.has(job.status)) return item;
  followJob(job, {
    onUpdate: (update) => updateJob(item, update),
    onEnd: (final) => {
      updateJob(item, final);
      history.refresh();
      // show the new model unless the person opened another one since sending this job
      if (final.status === "succeeded" && final.result_urls?.glb && state.viewedAt < submittedAt) showModel(final);
    },
    onConnection: (connected) => setConnection(job.id, connected),
  });
  return item;
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
  const ended = merged.status === "failed" || merged.status === "canceled";
  // a job that ended without a model shows why, not the progress it had reached
  li.querySelector(".job-stage").textContent = FINISHED.has(merged.status) ? "" : stageLabel(merged.stage);
  const progress = li.querySelector(".job-progress");
  progress.hidden = ended;
  progress.value = merged.status === "succeeded" ? 100 : Number(merged.progress) || 0;
  progress.setAttribute("aria-valuetext", `${progress.value}%${merged.stage ? `, ${stageLabel(merged.stage)}` : ""}`);
  const error = li.querySelector(".job-error");
  const reason = ended ? endReason(merged) : merged.error || "";
  error.textContent = reason;
  error.hidden = !reason;
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
    view.addEventListener("click", () => openModel(job));
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

/** The person asked for this model (View, a History tile): show it and bring the viewer on screen. */
function openModel(job) {
  state.viewedAt = Date.now();
  const card = $("viewer").closest(".card");
  const box = card.getBoundingClientRect();
  if (box.top < 0 || box.bottom > window.innerHeight) card.scrollIntoView({ block: "start", behavior: "smooth" });
  return showModel(job);
}

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
    $("face-count").textContent = faces == null ? "" : plural(faces, "face");
    $("viewer-name").textContent = job.input_name || "";
    document.body.dataset.modelLoaded = "true";
    document.body.dataset.modelJob = job.id;
  } catch (err) {
    message.textContent = `Could not load the model: ${err.message}`;
  }
}

// ---- tabs: click, or arrow keys / Home / End on the tab list (one tab in the Tab order at a time)

function setUpTabs(monitor) {
  const tabs = [
    [$("tab-studio"), $("studio")],
    [$("tab-monitor"), $("monitor-view")],
  ];
  const select = (chosen, { focus = false } = {}) => {
    for (const [tab, panel] of tabs) {
      const active = tab === chosen;
      tab.setAttribute("aria-selected", String(active));
      tab.tabIndex = active ? 0 : -1;
      panel.hidden = !active;
    }
    if (focus) chosen.focus();
    if (chosen.id === "tab-monitor") monitor.start();
    else monitor.stop();
    if (chosen.id === "tab-studio") viewer?.resize();
  };
  for (const [tab] of tabs) {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const index = tabs.findIndex(([other]) => other === tab);
      const target = {
        ArrowRight: (index + 1) % tabs.length,
        ArrowDown: (index + 1) % tabs.length,
        ArrowLeft: (index - 1 + tabs.length) % tabs.length,
        ArrowUp: (index - 1 + tabs.length) % tabs.length,
        Home: 0,
        End: tabs.length - 1,
      }[event.key];
      if (target === undefined) return;
      event.preventDefault();
      select(tabs[target][0], { focus: true });
    });
  }
  select(tabs[0][0]);
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
  selection = new Selection($("cutout-previews"), updateGenerateButton);
  history = new History($("history"), $("history-more"), openModel);
  setUpDropZone();
  const form = $("options");
  form.addEventListener("submit", generate);
  // an error about the form goes as soon as the person changes what it was about
  form.addEventListener("input", () => {
    showFormError("");
    for (const field of form.querySelectorAll("[aria-invalid=true]")) field.setAttribute("aria-invalid", "false");
  });
  $("wireframe-toggle").addEventListener("change", (event) => viewer?.setWireframe(event.target.checked));
  setUpTabs(new Monitor($("monitor-view")));
  showUser();
  loadGenerators();
  history.start();
}

start();
