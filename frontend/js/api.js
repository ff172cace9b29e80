// HTTP client of the dashboard: bearer token from localStorage, JSON helpers, SSE over fetch.
const TOKEN_KEY = "dyart.token";
const BASE = "/api/v1";

export function getToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  const token = getToken();
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

let unauthorized = () => {};

/** Calls handler(error) whenever the server answers 401 (no token, or one it does not accept). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export class ApiError extends Error {
  constructor(status, detail) {
    const text = Array.isArray(detail) ? detail.map((d) => d.message).join("; ") : detail;
    super(`${status}: ${text}`);
    this.status = status;
    this.detail = detail;
  }
}

/** No answer at all: the server is down or the network is gone (fetch itself failed). */
export class ConnectionError extends Error {}

/** fetch, with a failure to connect thrown as a ConnectionError (an abort stays an abort). */
async function send(url, init) {
  try {
    return await fetch(url, init);
  } catch (error) {
    if (init.signal?.aborted) throw error;
    throw new ConnectionError(`no answer from the server: ${error.message}`);
  }
}

/** A fresh random key (hex) for an Idempotency-Key header; works without a secure context. */
export function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function api(path, { method = "GET", body, extraHeaders = {} } = {}) {
  const base = body ? { "Content-Type": "application/json" } : {};
  const init = { method, headers: headers({ ...base, ...extraHeaders }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await send(BASE + path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw refused(response, data);
  return data;
}

/** The ApiError of a refused response, in the server's words (its JSON `detail`) where it gave
 * them; a 401 is also passed to the onUnauthorized handler. */
function refused(response, data) {
  const error = new ApiError(response.status, data.detail ?? response.statusText);
  if (response.status === 401) unauthorized(error);
  return error;
}

/** Downloads a URL with the token and saves it as a file; returns {name, size}. */
export async function download(url) {
  const response = await send(url, { headers: headers({ Accept: "*/*" }) });
  if (!response.ok) throw refused(response, await response.json().catch(() => ({})));
  const blob = await response.blob();
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="?([^";]+)"?/.exec(disposition);
  const name = match ? match[1] : url.split("/").pop();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  return { name, size: blob.size };
}

function parseBlock(block) {
  const event = { type: "message", data: [] };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "event") event.type = value;
    else if (field === "data") event.data.push(value);
    else if (field === "id") event.id = value;
  }
  return event.data.length ? { ...event, data: event.data.join("\n") } : null;
}

/**
 * Follows an SSE stream with fetch (so the token stays in a header); calls onEvent(type, data, id).
 * Returns a stop() function. Starts after event id `since` when given, and reconnects with
 * Last-Event-ID until an `end` event or stop(); a connection that is lost or refused with a
 * 5xx (503: database unavailable) is passed on as an `unavailable` event whose detail says so.
 */
export function follow(path, onEvent, { since = null } = {}) {
  const controller = new AbortController();
  let lastId = since;
  let ended = false;
  async function run() {
    while (!ended && !controller.signal.aborted) {
      try {
        const extra = { Accept: "text/event-stream" };
        if (lastId) extra["Last-Event-ID"] = lastId;
        const res = await send(BASE + path, { headers: headers(extra), signal: controller.signal });
        if (!res.ok || !res.body) {
          throw refused(res, await res.json().catch(() => ({})));
        }
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n?/g, "\n");
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const event = parseBlock(buffer.slice(0, cut));
            buffer = buffer.slice(cut + 2);
            if (!event) continue;
            if (event.id) lastId = event.id;
            if (event.type === "end") ended = true;
            let data = event.data;
            try { data = JSON.parse(data); } catch { /* plain text */ }
            onEvent(event.type, data, lastId);
          }
        }
      } catch (error) {
        if (controller.signal.aborted) return;
        if (error instanceof ApiError && error.status < 500) return;
        // the database or the server is away: say so as the stream itself would, and keep trying
        const detail = !(error instanceof ApiError) ? "Connection to the server lost; retrying…"
          : error.status === 503 ? error.detail : error.message;
        onEvent("unavailable", { detail });
      }
      if (!ended) await new Promise((r) => setTimeout(r, 2000));
    }
  }
  run();
  return () => controller.abort();
}
