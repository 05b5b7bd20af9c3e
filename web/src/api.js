// The ORFEAS JSON API as the studio uses it. Every call throws ApiError with the server's message on failure.

export class ApiError extends Error {
  /** `status` is the HTTP status, 0 when the server could not be reached. */
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/** The session's CSRF token (a cookie the page may read), sent back with every state-changing request. */
function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)orfeas_csrf=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function request(path, init = {}) {
  const headers = new Headers(init.headers || {});
  if (UNSAFE.has((init.method || "GET").toUpperCase())) headers.set("X-CSRF-Token", csrfToken());
  let response;
  try {
    response = await fetch(path, { ...init, headers, credentials: "same-origin" });
  } catch (err) {
    throw new ApiError(`server unreachable (${err.message})`);
  }
  if (response.status === 401) {
    // signed out or the session ended: back to the sign-in page, then here again
    location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      message = body?.error?.message || body?.detail || message;
      if (typeof message !== "string") message = JSON.stringify(message);
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(message, response.status);
  }
  return response;
}

const json = async (path, init) => (await request(path, init)).json();

export const generators = () => json("/api/generators");
export const me = () => json("/api/auth/me");
export const logout = () => request("/api/auth/logout", { method: "POST" });
export const listJobs = (limit = 20, offset = 0) => json(`/api/jobs?limit=${limit}&offset=${offset}`);
export const queuedCount = async () => (await json("/api/jobs?status=queued&limit=1")).total;
export const getJob = (id) => json(`/api/jobs/${id}`);
export const cancelJob = (id) => json(`/api/jobs/${id}`, { method: "DELETE" });
export const submitJobs = (form) => json("/api/jobs", { method: "POST", body: form });
export const performanceSummary = () => json("/api/performance/summary");
export const recommendations = () => json("/api/performance/recommendations");
export const deviceStatus = () => json("/api/gpu/status");

/** The background-removed cut-out of one image, as a blob URL. */
export async function cutout(file) {
  const form = new FormData();
  form.append("image", file, file.name);
  const blob = await (await request("/api/cutout", { method: "POST", body: form })).blob();
  return URL.createObjectURL(blob);
}

/** The WebSocket URL for a job's events path, on this page's host. */
export function socketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}
