// Follows a job's progress over its WebSocket; while the socket is down (a server restart), polls the job and
// reconnects with exponential backoff until the job ends.

import { getJob, socketUrl } from "./api.js";

export const FINISHED = new Set(["succeeded", "failed", "canceled"]);
const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 5000;
const POLL_MS = 1000;

/**
 * Calls onUpdate(partialJob) for every change and onEnd(job) once when the job finishes.
 * onConnection(connected) reports whether the socket is up. Returns a function that stops following.
 */
export function followJob(job, { onUpdate, onEnd, onConnection }) {
  let attempt = 0;
  let socket = null;
  let retryTimer = null;
  let pollTimer = null;
  let done = false;

  const finish = (final) => {
    if (done) return;
    done = true;
    stop();
    onConnection(true);
    onEnd(final);
  };

  const handle = (event) => {
    if (event.type === "end") {
      finish(event);
    } else if (event.type === "progress") {
      onUpdate(event);
      if (FINISHED.has(event.status)) {
        // the end message follows; fetch the full job in case the socket drops first
        getJob(job.id).then(finish, () => {});
      }
    } else if (event.type === "error") {
      finish({ ...job, status: "failed", error: event.error?.message || "job not found" });
    }
  };

  const poll = async () => {
    try {
      const current = await getJob(job.id);
      if (FINISHED.has(current.status)) finish(current);
      else onUpdate(current);
    } catch {
      // still unreachable; the next poll or reconnect will tell
    }
  };

  const startPolling = () => {
    if (!pollTimer && !done) pollTimer = setInterval(poll, POLL_MS);
  };

  const stopPolling = () => {
    clearInterval(pollTimer);
    pollTimer = null;
  };

  const connect = () => {
    if (done) return;
    socket = new WebSocket(socketUrl(job.events_url || `/api/jobs/${job.id}/events`));
    socket.onopen = () => {
      attempt = 0;
      stopPolling();
      onConnection(true);
    };
    socket.onmessage = (message) => {
      try {
        handle(JSON.parse(message.data));
      } catch {
        // ignore a malformed message
      }
    };
    socket.onclose = () => {
      socket = null;
      if (done) return;
      onConnection(false);
      startPolling();
      const delay = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** attempt);
      attempt += 1;
      retryTimer = setTimeout(connect, delay);
    };
  };

  function stop() {
    done = true;
    clearTimeout(retryTimer);
    stopPolling();
    if (socket) {
      socket.onclose = null;
      socket.close();
      socket = null;
    }
  }

  connect();
  return stop;
}
