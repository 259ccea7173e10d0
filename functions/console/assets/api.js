// The JSON API the console draws from: the same endpoints scripts use, with the session
// cookie (sent by the browser) and, on POSTs, the session's CSRF token.

let session = null;

/** An API failure: HTTP status, and the API's error object ({code, message, field?}). */
export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = error?.code;
    this.field = error?.field;
  }
}

async function csrfToken() {
  if (!session) {
    const response = await fetch("/console/session", { credentials: "same-origin" });
    if (response.status === 401) return loggedOut();
    session = await response.json();
  }
  return session;
}

function loggedOut() {
  // The session ended (expired, or the token changed): the login page is at /.
  window.location.assign("/");
  throw new ApiError(401, { message: "logged out" });
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    const { csrf_token, csrf_header } = await csrfToken();
    if (csrf_token) headers[csrf_header] = csrf_token;
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) return loggedOut();
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data?.error || { message: text.slice(0, 300) });
  return data;
}

export const api = {
  listRuns: (query) => call("GET", `/runs?${new URLSearchParams(query)}`),
  run: (id) => call("GET", `/runs/${encodeURIComponent(id)}`),
  submit: (request) => call("POST", "/runs", request),
  cancel: (id) => call("POST", `/runs/${encodeURIComponent(id)}/cancel`, {}),
  async logout() {
    await call("POST", "/console/logout", {});
  },
};

/** The console's own URL of a run's artifact (key `runs/{id}/artifacts/...`). */
export function artifactPath(runId, key) {
  const prefix = `runs/${runId}/artifacts/`;
  const rest = key.startsWith(prefix) ? key.slice(prefix.length) : key;
  return `/runs/${encodeURIComponent(runId)}/artifacts/${rest.split("/").map(encodeURIComponent).join("/")}`;
}

/**
 * One read of a phase's log from `offset` (the log-tail endpoint): the bytes, the next
 * offset, and whether the phase may still write. `null` when the endpoint is missing.
 */
export async function tailLog(runId, phase, stream, offset) {
  const query = new URLSearchParams({ offset: String(offset), stream });
  const response = await fetch(
    `/runs/${encodeURIComponent(runId)}/logs/${encodeURIComponent(phase)}?${query}`,
    { credentials: "same-origin", cache: "no-store" },
  );
  if (response.status === 401) return loggedOut();
  if (response.status === 416) {
    const data = await response.json().catch(() => ({}));
    return { bytes: new Uint8Array(), next: Number(data?.error?.size ?? data?.size ?? offset), writing: true, restart: true };
  }
  if (!response.ok) return null;
  return {
    bytes: new Uint8Array(await response.arrayBuffer()),
    next: Number(response.headers.get("Specrun-Log-Next-Offset") ?? offset),
    writing: response.headers.get("Specrun-Log-Writing") === "true",
  };
}
