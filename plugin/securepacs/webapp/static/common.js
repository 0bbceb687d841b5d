// Shared by every page: same-origin API calls with the CSRF header, logout, the idle-logoff warning.
const CSRF = { "X-Requested-With": "SecurePACS" };
const WARN_BEFORE_S = 60;
let lastActivity = Date.now();
let idleSeconds = 0;

export function touched() { lastActivity = Date.now(); }

export async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "same-origin", ...options, headers: { ...CSRF, ...(options.headers || {}) },
  });
  touched();
  if (response.status === 403 && !options.allowRefusal) {
    const me = await fetch("/securepacs/api/me", { credentials: "same-origin", headers: CSRF });
    if (me.status === 403) { toLogin("expired"); throw new Error("session ended"); }
  }
  return response;
}

export function toLogin(reason) {
  const next = location.pathname;
  const query = new URLSearchParams();
  if (next !== "/list" && next !== "/login") query.set("next", next);
  if (reason) query.set("reason", reason);
  location.assign("/login" + (query.toString() ? "?" + query : ""));
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) node.append(child);
  return node;
}

export function dicomDate(value) {
  return /^\d{8}$/.test(value || "") ? `${value.slice(0, 4)}-${value.slice(4, 6)}-${value.slice(6, 8)}` : (value || "");
}

export function personName(value) { return (value || "").replaceAll("^", " ").trim(); }

async function logout() {
  await fetch("/securepacs/logout", { method: "POST", credentials: "same-origin", headers: CSRF });
  location.assign("/login?reason=logout");
}

function idleWatch() {
  const box = document.getElementById("idle-warning");
  if (!box || !idleSeconds) return;
  const left = idleSeconds - (Date.now() - lastActivity) / 1000;
  if (left <= 0) { toLogin("idle"); return; }
  const warn = left <= Math.min(WARN_BEFORE_S, idleSeconds / 2);
  box.hidden = !warn;
  if (warn) document.getElementById("idle-left").textContent = String(Math.ceil(left));
}

// Header: who is logged in, the logout button, and the idle-logoff warning. Resolves to /api/me.
export async function startSession() {
  const response = await api("/securepacs/api/me");
  const me = await response.json();
  const user = document.getElementById("user");
  if (user) user.textContent = `${me.username} (${me.role}${me.clinic ? ", " + me.clinic : ""})`;
  const button = document.getElementById("logout");
  if (button) button.addEventListener("click", logout);
  const stay = document.getElementById("stay");
  if (stay) stay.addEventListener("click", () => api("/securepacs/api/me"));
  idleSeconds = me.session ? me.session.idle_seconds : 0;
  setInterval(idleWatch, 1000);
  return me;
}
