// The monitor view: time per pipeline stage, bottlenecks, advice, the device and the queue, refreshed while shown.

import * as api from "./api.js";
import { plural, stageLabel } from "./describe.js";

const REFRESH_MS = 3000;
const SVG = "http://www.w3.org/2000/svg";

export class Monitor {
  constructor(root) {
    this.root = root;
    this.timer = null;
  }

  start() {
    if (this.timer) return;
    this.refresh();
    this.timer = setInterval(() => {
      if (!document.hidden) this.refresh();
    }, REFRESH_MS);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  async refresh() {
    const [summary, advice, device, queued] = await Promise.allSettled([
      api.performanceSummary(),
      api.recommendations(),
      api.deviceStatus(),
      api.queuedCount(),
    ]);
    if (summary.status === "fulfilled") {
      renderSummary(summary.value);
      renderStageChart(document.getElementById("stage-chart"), summary.value.stage_breakdown || {});
      renderList(
        document.getElementById("bottlenecks"),
        summary.value.bottlenecks || [],
        (item) => `${capitalize(item.label || stageLabel(item.stage))}: ${percent(item.share)} of the time`,
        "No bottlenecks.",
      );
    }
    if (advice.status === "fulfilled") {
      renderList(
        document.getElementById("recommendations"),
        advice.value.recommendations || [],
        (item) => capitalize(item.reason ? `${item.message} (${item.reason})` : item.message),
        "Nothing to change.",
      );
    }
    if (device.status === "fulfilled") renderDevice(document.getElementById("device"), device.value);
    document.getElementById("queue-depth").textContent =
      queued.status === "fulfilled" ? String(queued.value) : "unknown";
  }
}

function capitalize(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : text;
}

function percent(share) {
  return `${Math.round((share || 0) * 100)}%`;
}

function seconds(value) {
  return value == null ? "–" : `${Number(value).toFixed(2)} s`;
}

function bytes(value) {
  if (value == null) return "–";
  const gib = value / 1024 ** 3;
  return gib >= 1 ? `${gib.toFixed(1)} GiB` : `${(value / 1024 ** 2).toFixed(0)} MiB`;
}

function renderSummary(summary) {
  const text = summary.total_pipelines
    ? `${plural(summary.total_pipelines, "finished job")}; average ${seconds(summary.avg_duration)}, ` +
      `p50 ${seconds(summary.p50_duration)}, p95 ${seconds(summary.p95_duration)}`
    : "No finished jobs yet.";
  document.getElementById("pipeline-summary").textContent = text;
}

/** A horizontal bar chart (inline SVG) of each stage's share of the pipeline time. */
function renderStageChart(container, breakdown) {
  const stages = Object.entries(breakdown).sort((a, b) => (b[1].share || 0) - (a[1].share || 0));
  container.replaceChildren();
  if (!stages.length) {
    container.textContent = "No stage timings yet.";
    return;
  }
  const rowHeight = 28;
  const labelWidth = 170;
  const width = 540;
  const barSpace = width - labelWidth - 110;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${stages.length * rowHeight}`);
  svg.setAttribute("role", "img");
  svg.setAttribute(
    "aria-label",
    "Share of job time per stage: " + stages.map(([s, v]) => `${stageLabel(s)} ${percent(v.share)}`).join(", "),
  );
  stages.forEach(([stage, value], index) => {
    const y = index * rowHeight;
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", labelWidth - 8);
    label.setAttribute("y", y + rowHeight / 2 + 5);
    label.setAttribute("text-anchor", "end");
    label.textContent = capitalize(stageLabel(stage));
    const bar = document.createElementNS(SVG, "rect");
    bar.setAttribute("class", "bar");
    bar.dataset.stage = stage;
    bar.setAttribute("x", labelWidth);
    bar.setAttribute("y", y + 5);
    bar.setAttribute("height", rowHeight - 10);
    bar.setAttribute("width", Math.max(1, (value.share || 0) * barSpace));
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${capitalize(stageLabel(stage))}: ${percent(value.share)}, average ${seconds(value.avg_seconds)}`;
    bar.append(title);
    const amount = document.createElementNS(SVG, "text");
    amount.setAttribute("x", labelWidth + Math.max(1, (value.share || 0) * barSpace) + 6);
    amount.setAttribute("y", y + rowHeight / 2 + 5);
    amount.textContent = `${percent(value.share)} · ${seconds(value.avg_seconds)}`;
    svg.append(label, bar, amount);
  });
  container.append(svg);
}

function renderList(list, items, describe, empty) {
  list.replaceChildren(
    ...(items.length ? items : [null]).map((item) => {
      const li = document.createElement("li");
      if (item === null) {
        li.textContent = empty;
        li.className = "empty";
      } else {
        li.textContent = describe(item);
        if (item.severity) li.dataset.severity = item.severity;
      }
      return li;
    }),
  );
}

function renderDevice(list, status) {
  const memory = status.memory || {};
  const trend = status.trend || {};
  const rows = [
    ["Device", `${status.name || status.device || "unknown"}${status.gpu ? " (GPU)" : " (CPU)"}`],
    ["Memory", `${bytes(memory.used)} of ${bytes(memory.total)} (${percent(memory.used_fraction)})`],
    [status.gpu ? "GPU busy" : "CPU busy", status.utilization == null ? "not measured yet" : percent(status.utilization)],
    ["Trend", describeTrend(trend)],
    ["Batch size", status.batch_size == null ? "–" : String(status.batch_size)],
    ["Batch reason", status.batch_reason || "–"],
  ];
  if (status.note) rows.push(["Note", status.note]);
  list.replaceChildren(
    ...rows.flatMap(([term, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      return [dt, dd];
    }),
  );
}

// Utilization is a fraction (0-1) in both the reading and the trend.
function describeTrend(trend) {
  if (!trend.direction) return "–";
  return trend.mean_utilization == null ? trend.direction : `${trend.direction}, mean ${percent(trend.mean_utilization)}`;
}
