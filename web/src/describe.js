// Words for what the API returns: stage names, a job's state, and why a job ended without a model.

/** "shape_generation" → "shape generation". */
export function stageLabel(stage) {
  return stage ? String(stage).replaceAll("_", " ") : "";
}

/** `count` and the noun, singular or plural: "1 job", "3 jobs". */
export function plural(count, noun, many = `${noun}s`) {
  return `${Number(count).toLocaleString("en")} ${count === 1 ? noun : many}`;
}

/** One line on where a job is: "queued", "running · 40% · shape generation", "succeeded". */
export function progressText(job) {
  if (job.status !== "running") return job.status || "";
  const stage = stageLabel(job.stage);
  return ["running", `${Number(job.progress) || 0}%`, stage].filter(Boolean).join(" · ");
}

/** Why a job has no model: the failure's message, or when it was canceled; "" for other jobs. */
export function endReason(job) {
  if (job.status === "failed") return job.error || "failed without a message";
  if (job.status !== "canceled") return "";
  if (job.error) return job.error;
  // the job row keeps the stage it had reached; the progress number would read as if it were still going
  return job.started_at ? `canceled during ${stageLabel(job.stage) || "generation"}` : "canceled while queued";
}
