// The operator console (/admin): login with the ADMIN_TOKEN, then four tabs.
// Plain ES modules, no build step; uPlot (vendored) draws the charts. The token stays in this tab's
// sessionStorage and travels only as an Authorization header, never in a URL.

import { $, api, setUnauthorizedHandler, token } from "./admin-core.js";
import { loadEntries, setupKnowledge } from "./admin-kb.js";
import { loadGaps, setupGaps } from "./admin-gaps.js";
import { loadFigures, resizeCharts, setupFigures } from "./admin-charts.js";
import { loadConversations, setupConversations } from "./admin-conversations.js";

const TABS = {
  kb: () => loadEntries(),
  gaps: () => loadGaps(),
  figures: () => loadFigures(),
  conversations: () => loadConversations(),
};
let current = "kb";

function showLogin(message = "") {
  token.clear();
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  $("console").hidden = true;
  $("login").hidden = false;
  const error = $("login-error");
  error.textContent = message;
  error.hidden = !message;
  $("login-token").value = "";
  $("login-token").focus();
}

function showConsole() {
  $("login").hidden = true;
  $("console").hidden = false;
  selectTab(current);
}

function selectTab(name) {
  current = name in TABS ? name : "kb";
  for (const tab of document.querySelectorAll(".tab")) {
    tab.setAttribute("aria-selected", String(tab.dataset.tab === current));
  }
  for (const key of Object.keys(TABS)) $(`panel-${key}`).hidden = key !== current;
  // The tab lives in the fragment so a reload stays put (no data there, only the tab's name).
  if (location.hash !== `#${current}`) history.replaceState(null, "", `#${current}`);
  TABS[current]();
  if (current === "figures") requestAnimationFrame(resizeCharts);
}

async function login(event) {
  event.preventDefault();
  const value = $("login-token").value.trim();
  if (!value) return;
  const submit = $("login-submit");
  submit.disabled = true;
  token.set(value);
  try {
    await api("/knowledge", { query: { page: 1, page_size: 1 } }); // any admin route checks the token
    showConsole();
  } catch (error) {
    if (error.status !== 401) showLogin(error.message); // a 401 already showed the form with its message
  } finally {
    submit.disabled = false;
  }
}

function init() {
  setUnauthorizedHandler((message) =>
    showLogin(token.get() ? `登录失败或已失效：${message || "管理员令牌无效"}` : "请先登录"),
  );
  setupKnowledge();
  setupGaps();
  setupFigures();
  setupConversations();
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => showLogin("已退出登录"));
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => selectTab(tab.dataset.tab));
  current = location.hash.slice(1) in TABS ? location.hash.slice(1) : "kb";
  if (token.get()) showConsole();
  else showLogin();
  document.body.dataset.ready = "true";
}

init();
