// Small helpers shared by the console and the wallboard.

const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content || "";

// The API as the signed-in agent: the session cookie authenticates, the CSRF token proves
// the request comes from our own page.
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    location.assign(`/login?next=${encodeURIComponent(location.pathname)}`);
    throw new Error("signed out");
  }
  const data = await response.json().catch(() => ({}));
  // The error body rides along, for pages that show more than the sentence (a template's line).
  if (!response.ok) throw Object.assign(new Error(data.detail || `HTTP ${response.status}`), { status: response.status, data });
  return data;
}

// An element with attributes and children; strings become text nodes, never markup.
export function el(tag, attributes = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children) {
    if (child === "" || child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
}

export function when(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

const BADGES = { voice: "Call", sms: "SMS", email: "Mail", telegram: "Telegram", webchat: "Chat" };

// The channel as a short written badge: colour is never the only signal.
export function channelIcon(channel) {
  return el("span", { class: `channel channel-${channel || "other"}` }, [BADGES[channel] || channel || "?"]);
}

export function duration(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  const [hours, minutes, rest] = [Math.floor(whole / 3600), Math.floor((whole % 3600) / 60), whole % 60];
  const mmss = `${String(minutes).padStart(hours ? 2 : 1, "0")}:${String(rest).padStart(2, "0")}`;
  return hours ? `${hours}:${mmss}` : mmss;
}
