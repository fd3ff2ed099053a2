// Shared pieces of the operator console: the token, the admin API client, DOM helpers.
// Text from the server only ever becomes text nodes (el() sets textContent, never innerHTML).

export const API = "/api/v1/admin";
const TOKEN_KEY = "c_app.admin_token";

export const $ = (id) => document.getElementById(id);

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export function authHeaders() {
  const value = token.get();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

import { ApiError, el } from "./dom.js";

export { ApiError, el };

// Set by admin.js: what a 401 does (back to the login form with a message).
let onUnauthorized = () => {};
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

export function errorFrom(status, data) {
  const message = data?.error?.message || data?.detail || `请求失败（${status}）`;
  const error = new ApiError(status, typeof message === "string" ? message : `请求失败（${status}）`, data?.error?.details);
  if (status === 401) onUnauthorized(error.message);
  return error;
}

/** Call an admin JSON route; resolves to the envelope's `data`. */
export async function api(path, { method = "GET", body, query = {}, raw = false } = {}) {
  const url = new URL(API + path, location.origin);
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const init = { method, headers: authHeaders(), cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    throw new ApiError(0, "网络错误，请检查连接后重试");
  }
  if (raw && response.ok) return response;
  const data = await response.json().catch(() => null);
  if (!response.ok) throw errorFrom(response.status, data);
  return data?.data;
}

let toastTimer = null;
export function toast(text, isError = false) {
  const node = $("toast");
  node.textContent = text;
  node.classList.toggle("bad", isError);
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (node.hidden = true), isError ? 6000 : 3000);
}

/** A failed call: a 401 has already gone back to the login form; anything else is shown. */
export function report(error) {
  if (error?.status === 401) return;
  toast(error?.message || String(error), true);
}

export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

export const OUTCOMES = {
  answered: "已回答",
  clarified: "需澄清",
  no_match: "未命中",
  handoff: "转人工",
  smalltalk: "闲聊",
  blocked: "已拦截",
};
export const GAP_KINDS = { no_match: "未命中", clarified: "需澄清", disliked: "点踩", handoff: "转人工" };

export function badge(kind, label) {
  return el("span", { class: `badge badge-${kind}`, textContent: label ?? OUTCOMES[kind] ?? kind });
}

/** Previous / page x of y / next, calling go(page). */
export function renderPager(container, { total, page, page_size: pageSize }, go) {
  const pages = Math.max(1, Math.ceil((total || 0) / (pageSize || 1)));
  container.replaceChildren(
    el("button", { type: "button", textContent: "上一页", disabled: page <= 1, onclick: () => go(page - 1) }),
    el("span", { class: "muted small", textContent: `第 ${page} / ${pages} 页` }),
    el("button", { type: "button", textContent: "下一页", disabled: page >= pages, onclick: () => go(page + 1) }),
  );
}

/** A confirmation in the page's own dialog; resolves true when confirmed. */
export function confirmDialog(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}
