// JSON over fetch with Django's CSRF header. A network failure throws NetworkError; an HTTP error
// resolves with its status and body, so callers can say plainly what went wrong.

export class NetworkError extends Error {}

function cookie(name) {
  const hit = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
  return hit ? decodeURIComponent(hit.slice(name.length + 1)) : "";
}

export function csrfToken() {
  return cookie("csrftoken");
}

export async function postJSON(url, body = {}) {
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify(body),
    });
  } catch (err) {
    throw new NetworkError(String(err));
  }
  let data = null;
  if (response.status !== 204) {
    const text = await response.text();
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = { error: "bad_response", detail: `the server answered ${response.status} without JSON` };
    }
  }
  return { status: response.status, ok: response.ok, data };
}

export async function getJSON(url) {
  try {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    return { status: response.status, ok: response.ok, data: response.ok ? await response.json() : null };
  } catch (err) {
    throw new NetworkError(String(err));
  }
}

/** A random v4 UUID, also where crypto.randomUUID is missing (plain http on a LAN host). */
export function newUUID() {
  if (window.crypto?.randomUUID) return window.crypto.randomUUID();
  const b = window.crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A readable sentence from an error body: {"detail": "..."} or DRF's {"field": ["..."]}. */
export function describe(data, fallback) {
  if (!data) return fallback;
  const detail = data.detail ?? data;
  if (typeof detail === "string") return detail;
  if (typeof detail === "object") {
    return Object.entries(detail)
      .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(" ") : typeof v === "string" ? v : JSON.stringify(v)}`)
      .join("; ");
  }
  return fallback;
}
