// The agent console (/agent): presence, the queue, my sessions, tickets, one conversation with its
// context, replies with canned replies, notes, transfer and close. Live updates come from the agent
// event stream (GET /api/v1/agent/events), read with fetch() so the token travels in the
// Authorization header (EventSource cannot send headers, and the token never goes into a URL).
// Plain ES module, no build step; server text is only ever put into the page as text nodes.
import { ApiError, el } from "./dom.js";

const API = "/api/v1/agent";
const TOKEN_KEY = "c_app.agent_token";
const HEARTBEAT_MS = 20_000;
const TYPING_MS = 3000;
const TICKETS_MS = 30_000; // tickets have no live event: their list is read again this often
const $ = (id) => document.getElementById(id);
const ui = {
  login: $("login"), loginForm: $("login-form"), token: $("token"), loginError: $("login-error"),
  desk: $("desk"), me: $("me"), presence: $("presence"), live: $("live"), stats: $("stats"), logout: $("logout"),
  queue: $("queue"), queueEmpty: $("queue-empty"), queueCount: $("queue-count"),
  mine: $("mine"), mineEmpty: $("mine-empty"), mineCount: $("mine-count"),
  tickets: $("tickets"), ticketsEmpty: $("tickets-empty"), ticketCount: $("ticket-count"),
  title: $("conv-title"), convState: $("conv-state"), claim: $("claim"), transferBox: $("transfer-box"),
  transferTo: $("transfer-to"), transfer: $("transfer"), close: $("close-session"), messages: $("conv-messages"),
  typing: $("customer-typing"), replyForm: $("reply-form"), reply: $("reply"), internal: $("internal"),
  cannedPick: $("canned-pick"), suggest: $("canned-suggest"), status: $("status"),
  ctxQuestion: $("ctx-question"), ctxMemories: $("ctx-memories"), ctxSources: $("ctx-sources"), ctxNotes: $("ctx-notes"),
  cannedList: $("canned-list"), cannedForm: $("canned-form"), cannedShortcut: $("canned-shortcut"),
  cannedContent: $("canned-content"), cannedSharedBox: $("canned-shared-box"), cannedShared: $("canned-shared"),
};

const state = {
  token: sessionStorage.getItem(TOKEN_KEY), me: null, queue: [], mine: [], tickets: [], canned: [],
  current: null, // the open session's item (QueueItem + notes)
  loadedAt: 0, unread: new Set(), stream: null, lastEventId: null, heartbeat: 0, ticketTimer: 0,
  typingSent: 0, typingTimer: 0,
  suggestions: [], suggestIndex: 0,
};


const auth = () => (state.token ? { Authorization: `Bearer ${state.token}` } : {});

async function api(path, { method = "GET", body, query = {} } = {}) {
  const url = new URL(API + path, location.origin);
  for (const [key, value] of Object.entries(query)) url.searchParams.set(key, value);
  const init = { method, headers: auth() };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(url, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new ApiError(response.status, data?.error?.message || `请求失败（${response.status}）`);
    const refused = response.status === 401 || (response.status === 403 && data?.error?.message === "仅限客服人员访问");
    if (refused && path !== "/me") showLogin(error.message); // the login itself says why
    throw error;
  }
  return data?.data;
}

function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

function waited(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} 秒`;
  if (s < 3600) return `${Math.floor(s / 60)} 分 ${s % 60} 秒`;
  return `${Math.floor(s / 3600)} 小时 ${Math.floor((s % 3600) / 60)} 分`;
}

function clock(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString("zh-CN", { hour12: false });
}

// ---- login -------------------------------------------------------------------------------------

function showLogin(message = "") {
  stopStream();
  clearInterval(state.heartbeat);
  clearInterval(state.ticketTimer);
  ui.desk.hidden = true;
  ui.login.hidden = false;
  ui.loginError.hidden = !message;
  ui.loginError.textContent = message;
  ui.token.focus();
}

async function login(token) {
  state.token = token || null;
  if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
  else sessionStorage.removeItem(TOKEN_KEY);
  try {
    state.me = await api("/me");
  } catch (err) {
    // Without a token this was the development-mode try: the login form, without an error.
    showLogin(token || (err.status !== 401 && err.status !== 403) ? err.message : "");
    return;
  }
  ui.login.hidden = true;
  ui.desk.hidden = false;
  ui.me.textContent = `${state.me.name}（${state.me.role === "supervisor" ? "主管" : "客服"}）`;
  ui.presence.value = state.me.status;
  ui.cannedSharedBox.hidden = state.me.role !== "supervisor";
  startStream();
  startHeartbeat();
  await Promise.all([loadQueue(), loadMine(), loadTickets(), loadCanned(), loadStats()]).catch((err) =>
    setStatus(err.message, true));
  document.body.dataset.ready = "true"; // tests wait for this
}

function logout() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.current = null;
  document.body.dataset.ready = "false";
  showLogin();
}

// ---- presence ----------------------------------------------------------------------------------

async function setPresence(status) {
  try {
    state.me = await api("/presence", { method: "POST", body: { status } });
    ui.presence.value = state.me.status;
    ui.presence.dataset.status = state.me.status;
    await Promise.all([loadStats(), loadTickets()]); // coming online: the messages left meanwhile
  } catch (err) {
    setStatus(err.message, true);
  }
}

function startHeartbeat() {
  clearInterval(state.heartbeat);
  clearInterval(state.ticketTimer);
  state.heartbeat = setInterval(() => {
    if (ui.presence.value === "online") api("/heartbeat", { method: "POST" }).catch(() => {});
  }, HEARTBEAT_MS);
  state.ticketTimer = setInterval(() => loadTickets().catch(() => {}), TICKETS_MS);
}

async function loadStats() {
  const s = await api("/stats");
  const parts = [`排队 ${s.queue_length}`, `在线客服 ${s.agents_online ?? "—"}`, `未处理留言 ${s.tickets_open ?? "—"}`];
  if (s.wait_p50_seconds != null) parts.push(`等待中位数 ${waited(s.wait_p50_seconds)}`);
  if (s.csat_average != null) parts.push(`满意度 ${Number(s.csat_average).toFixed(1)}`);
  ui.stats.textContent = parts.join(" · ");
}

// ---- lists -------------------------------------------------------------------------------------

function itemWait(item) {
  // waited_seconds is the server's figure at load time; queued items keep counting here.
  const extra = item.status === "queued" ? (Date.now() - state.loadedAt) / 1000 : 0;
  return item.waited_seconds + extra;
}

function sessionRow(item, { unread = false } = {}) {
  const active = state.current?.session_id === item.session_id;
  const wait = el("span", { class: "wait", textContent: `等待 ${waited(itemWait(item))}` });
  wait.dataset.sessionId = item.session_id;
  return el("li", {
    class: `item${active ? " active" : ""}${unread ? " unread" : ""}`,
    onclick: () => openSession(item.session_id),
  },
  el("div", { class: "item-head" }, el("span", { class: "item-user", textContent: item.user_id }), wait),
  el("div", { class: "item-text", textContent: item.last_question || "（无问题）" }));
}

function renderQueue() {
  ui.queue.replaceChildren(...state.queue.map((item) => sessionRow(item)));
  ui.queueEmpty.hidden = state.queue.length > 0;
  ui.queueCount.textContent = String(state.queue.length);
}

function renderMine() {
  ui.mine.replaceChildren(...state.mine.map((item) => sessionRow(item, { unread: state.unread.has(item.session_id) })));
  ui.mineEmpty.hidden = state.mine.length > 0;
  ui.mineCount.textContent = String(state.mine.length);
}

async function loadQueue() {
  const data = await api("/queue");
  state.queue = data.items;
  state.loadedAt = Date.now();
  renderQueue();
}

async function loadMine() {
  state.mine = (await api("/sessions")).items;
  renderMine();
}

function tick() {
  // Waiting times count up without reloading.
  for (const node of ui.queue.querySelectorAll(".wait")) {
    const item = state.queue.find((i) => i.session_id === node.dataset.sessionId);
    if (item) node.textContent = `等待 ${waited(itemWait(item))}`;
  }
}

async function loadTickets() {
  const data = await api("/tickets", { query: { page_size: 50 } });
  state.tickets = data.items;
  ui.ticketCount.textContent = String(data.open_count);
  ui.tickets.replaceChildren(...state.tickets.map((t) => {
    const contact = [t.phone && `电话 ${t.phone}`, t.email && `邮箱 ${t.email}`].filter(Boolean).join(" · ") || "未留联系方式";
    const row = el("li", { class: `item ticket ${t.status}` },
      el("div", { class: "item-head" }, el("span", { class: "item-user", textContent: t.user_id }),
        el("span", { class: "muted small", textContent: clock(t.created_at) })),
      el("div", { class: "contact", textContent: contact }),
      el("div", { class: "item-text", textContent: t.content }));
    if (t.status === "open") {
      row.append(el("button", { type: "button", class: "ticket-close", textContent: "标记已处理",
        onclick: (event) => { event.stopPropagation(); closeTicket(t.id); } }));
    } else {
      row.append(el("span", { class: "muted small", textContent: `已处理（${t.closed_by || ""}）` }));
    }
    return row;
  }));
  ui.ticketsEmpty.hidden = state.tickets.length > 0;
}

async function closeTicket(id) {
  try {
    await api(`/tickets/${id}/close`, { method: "POST" });
  } catch (err) {
    setStatus(err.message, true);
  }
  await loadTickets().catch(() => {});
}

// ---- the conversation --------------------------------------------------------------------------

const ROLE_NAMES = { user: "客户", assistant: "机器人", agent: "客服" };

function messageRow(message) {
  const who = message.role === "agent" ? `客服 ${message.agent_name || ""}` : ROLE_NAMES[message.role] || message.role;
  const row = el("div", { class: `msg ${message.role}` },
    el("span", { class: "who", textContent: `${who} · ${clock(message.created_at)}` }),
    el("div", { class: "bubble", textContent: message.content }));
  if (message.id != null) row.dataset.messageId = String(message.id);
  return row;
}

function noteRow(note) {
  return el("div", { class: "msg note" },
    el("span", { class: "who", textContent: `内部备注 · ${note.agent_name} · ${clock(note.created_at)}` }),
    el("div", { class: "bubble", textContent: note.content }));
}

function appendMessage(message) {
  if (message.id != null && ui.messages.querySelector(`[data-message-id="${message.id}"]`)) return; // no duplicates
  ui.messages.append(messageRow(message));
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function list(node, items, render) {
  node.replaceChildren(...(items.length ? items.map(render) : [el("li", { class: "none", textContent: "无" })]));
}

function renderContext(item) {
  ui.ctxQuestion.textContent = item?.last_question || "—";
  list(ui.ctxMemories, item?.memories || [], (m) => el("li", { textContent: m.content }));
  list(ui.ctxSources, item?.sources || [], (s) => el("li", {},
    el("span", { class: "tag", textContent: s.title || s.question || "来源" }),
    String(s.content || "").slice(0, 120)));
  list(ui.ctxNotes, item?.notes || [], (n) => el("li", { textContent: `${n.agent_name}：${n.content}` }));
}

function renderControls() {
  const item = state.current;
  const mineNow = item && item.status === "assigned" && item.agent_id === state.me.agent_id;
  ui.claim.hidden = !(item && item.status === "queued");
  ui.transferBox.hidden = !mineNow;
  ui.close.hidden = !mineNow;
  ui.replyForm.hidden = !mineNow;
  const states = { queued: `排队中（第 ${item?.position ?? "?"} 位）`, assigned: `由 ${item?.agent_name || ""} 接待`, closed: "已结束" };
  ui.convState.textContent = item ? states[item.status] || item.status : "";
}

async function openSession(sessionId) {
  try {
    const item = await api(`/sessions/${encodeURIComponent(sessionId)}`);
    state.current = item;
  } catch (err) {
    setStatus(err.message, true);
    return;
  }
  state.unread.delete(sessionId);
  const item = state.current;
  ui.title.textContent = `客户 ${item.user_id}`;
  ui.messages.replaceChildren(...item.conversation.map(messageRow));
  for (const note of item.notes || []) ui.messages.append(noteRow(note));
  ui.messages.scrollTop = ui.messages.scrollHeight;
  ui.typing.hidden = true;
  renderContext(item);
  renderControls();
  renderQueue();
  renderMine();
  if (!ui.transferBox.hidden) loadTransferTargets().catch(() => {});
  setStatus("");
}

async function refreshCurrent() {
  if (state.current) await openSession(state.current.session_id);
}

async function claim() {
  const item = state.current;
  if (!item) return;
  try {
    await api(`/sessions/${encodeURIComponent(item.session_id)}/claim`, { method: "POST" });
  } catch (err) {
    setStatus(err.message, true);
  }
  await Promise.all([loadQueue(), loadMine()]).catch(() => {});
  await refreshCurrent();
  ui.reply.focus();
}

async function sendReply() {
  const item = state.current;
  const content = ui.reply.value.trim();
  if (!item || !content) return;
  const internal = ui.internal.checked;
  ui.replyForm.querySelector("#send").disabled = true;
  try {
    const data = await api(`/sessions/${encodeURIComponent(item.session_id)}/messages`, {
      method: "POST", body: { content, internal },
    });
    ui.reply.value = "";
    ui.internal.checked = false;
    hideSuggestions();
    if (data.note) {
      ui.messages.append(noteRow(data.note));
      item.notes = [...(item.notes || []), data.note];
      renderContext(item);
    } else if (data.message) {
      appendMessage(data.message);
    }
    ui.messages.scrollTop = ui.messages.scrollHeight;
    setStatus("");
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    ui.replyForm.querySelector("#send").disabled = false;
  }
}

function sendTyping() {
  const item = state.current;
  if (!item || ui.replyForm.hidden || ui.internal.checked) return;
  const now = Date.now();
  if (now - state.typingSent < TYPING_MS) return;
  state.typingSent = now;
  api(`/sessions/${encodeURIComponent(item.session_id)}/typing`, { method: "POST" }).catch(() => {});
}

async function loadTransferTargets() {
  const data = await api("/agents");
  const others = data.agents.filter((a) => a.agent_id !== state.me.agent_id);
  ui.transferTo.replaceChildren(...(others.length
    ? others.map((a) => el("option", { value: a.agent_id, textContent: `${a.name}（${{ online: "在线", away: "离开", offline: "离线" }[a.status] || a.status}）` }))
    : [el("option", { value: "", textContent: "没有其他客服" })]));
}

async function transfer() {
  const item = state.current;
  const target = ui.transferTo.value;
  if (!item || !target) return;
  try {
    await api(`/sessions/${encodeURIComponent(item.session_id)}/transfer`, { method: "POST", body: { agent_id: target } });
    setStatus("已转接");
  } catch (err) {
    setStatus(err.message, true);
  }
  await loadMine().catch(() => {});
  await refreshCurrent();
}

async function closeSession() {
  const item = state.current;
  if (!item) return;
  try {
    await api(`/sessions/${encodeURIComponent(item.session_id)}/close`, { method: "POST" });
  } catch (err) {
    setStatus(err.message, true);
  }
  await Promise.all([loadMine(), loadStats()]).catch(() => {});
  await refreshCurrent();
}

// ---- canned replies ----------------------------------------------------------------------------

function usableCanned() {
  // An agent's own reply wins over a shared one with the same shortcut.
  const seen = new Set();
  return state.canned.filter((c) => (seen.has(c.shortcut) ? false : (seen.add(c.shortcut), true)));
}

async function loadCanned() {
  state.canned = (await api("/canned-replies")).items;
  ui.cannedPick.replaceChildren(el("option", { value: "", textContent: "快捷回复…" }),
    ...usableCanned().map((c) => el("option", { value: String(c.id), textContent: `/${c.shortcut}` })));
  list(ui.cannedList, state.canned, (c) => {
    const mayEdit = !c.shared || state.me.role === "supervisor";
    return el("li", {},
      el("span", { class: "tag", textContent: `/${c.shortcut}${c.shared ? "（公共）" : ""}` }), c.content,
      ...(mayEdit ? [el("button", { type: "button", class: "link", textContent: "删除", onclick: () => deleteCanned(c) })] : []));
  });
}

async function saveCanned(event) {
  event.preventDefault();
  try {
    await api("/canned-replies", { method: "POST", body: {
      shortcut: ui.cannedShortcut.value.trim(), content: ui.cannedContent.value, shared: ui.cannedShared.checked,
    } });
    ui.cannedForm.reset();
    await loadCanned();
    setStatus("快捷回复已保存");
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function deleteCanned(reply) {
  if (!confirm(`删除快捷回复 /${reply.shortcut}？`)) return;
  try {
    await api(`/canned-replies/${reply.id}`, { method: "DELETE" });
    await loadCanned();
  } catch (err) {
    setStatus(err.message, true);
  }
}

function insertCanned(reply) {
  // Replaces the "/shortcut" being typed (or inserts at the caret when picked from the list).
  const value = ui.reply.value;
  const match = /(^|\s)\/[\p{L}\p{N}_-]*$/u.exec(value.slice(0, ui.reply.selectionStart));
  if (match) {
    const start = match.index + match[1].length;
    ui.reply.value = value.slice(0, start) + reply.content + value.slice(ui.reply.selectionStart);
  } else {
    const at = ui.reply.selectionStart ?? value.length;
    ui.reply.value = value.slice(0, at) + reply.content + value.slice(at);
  }
  hideSuggestions();
  ui.reply.focus();
}

function hideSuggestions() {
  state.suggestions = [];
  ui.suggest.hidden = true;
}

function showSuggestions() {
  const before = ui.reply.value.slice(0, ui.reply.selectionStart);
  const match = /(?:^|\s)\/([\p{L}\p{N}_-]*)$/u.exec(before);
  if (!match) return hideSuggestions();
  const typed = match[1].toLowerCase();
  state.suggestions = usableCanned().filter((c) => c.shortcut.toLowerCase().startsWith(typed));
  if (!state.suggestions.length) return hideSuggestions();
  state.suggestIndex = Math.min(state.suggestIndex, state.suggestions.length - 1);
  ui.suggest.replaceChildren(...state.suggestions.map((c, i) => el("li", {
    class: i === state.suggestIndex ? "active" : "", role: "option",
    onmousedown: (event) => { event.preventDefault(); insertCanned(c); },
  }, el("span", { class: "key", textContent: `/${c.shortcut}` }), el("span", { class: "val", textContent: c.content }))));
  ui.suggest.hidden = false;
}

// ---- the event stream --------------------------------------------------------------------------

function parseFrame(frame) {
  let type = "message";
  let id = null;
  const data = [];
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  try {
    return { type, id, data: JSON.parse(data.join("\n")) };
  } catch {
    return null;
  }
}

function stopStream() {
  state.stream?.abort();
  state.stream = null;
  ui.live.classList.remove("on");
}

async function startStream() {
  stopStream();
  const controller = (state.stream = new AbortController());
  let delay = 500;
  while (state.stream === controller) {
    try {
      const headers = { ...auth(), Accept: "text/event-stream" };
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId; // resume: nothing lost
      const response = await fetch(`${API}/events`, { headers, signal: controller.signal });
      if (response.status === 401 || response.status === 403) return showLogin("登录已失效，请重新登录");
      if (!response.ok) throw new Error(`事件流错误（${response.status}）`);
      ui.live.classList.add("on");
      delay = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parseFrame(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!event) continue;
          if (event.id) state.lastEventId = event.id;
          onEvent(event).catch(() => {});
        }
      }
    } catch (err) {
      if (err.name === "AbortError") return;
    }
    ui.live.classList.remove("on");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10_000);
  }
}

async function onEvent({ type, data }) {
  const current = state.current?.session_id;
  switch (type) {
    case "queue_added":
    case "queue_removed":
      await loadQueue();
      if (current && current === data.session_id && type === "queue_removed") await refreshCurrent();
      break;
    case "assigned":
      await Promise.all([loadQueue(), loadMine()]);
      if (!current || current === data.item?.session_id) await openSession(data.item.session_id);
      break;
    case "customer_message":
      if (current === data.session_id && data.message) {
        appendMessage(data.message);
        ui.typing.hidden = true;
      } else {
        state.unread.add(data.session_id);
        renderMine();
      }
      break;
    case "customer_typing":
      if (current === data.session_id) {
        ui.typing.hidden = false;
        clearTimeout(state.typingTimer);
        state.typingTimer = setTimeout(() => { ui.typing.hidden = true; }, TYPING_MS + 1000);
      }
      break;
    case "message_read": {
      const row = ui.messages.querySelector(`.msg.agent[data-message-id="${data.message_id}"]`);
      if (row && !row.querySelector(".read")) row.append(el("span", { class: "read", textContent: "已读" }));
      break;
    }
    case "transferred_away":
    case "closed":
      await loadMine();
      if (current === data.session_id) await refreshCurrent();
      break;
    case "rated":
      setStatus(`客户评价：${data.score} 分${data.comment ? `，${data.comment}` : ""}`);
      await loadStats();
      break;
    default:
      break;
  }
  if (type === "queue_added" || type === "closed" || type === "assigned") loadStats().catch(() => {});
}

// ---- wiring ------------------------------------------------------------------------------------

ui.loginForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = ui.token.value.trim();
  ui.token.value = "";
  login(token);
});
ui.logout.addEventListener("click", logout);
ui.presence.addEventListener("change", () => setPresence(ui.presence.value));
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll(".tab")) {
      other.classList.toggle("active", other === tab);
      $(other.dataset.pane).hidden = other !== tab;
    }
    if (tab.id === "tab-tickets") loadTickets().catch((err) => setStatus(err.message, true));
  });
}
ui.claim.addEventListener("click", claim);
ui.transfer.addEventListener("click", transfer);
ui.close.addEventListener("click", closeSession);
ui.replyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sendReply();
});
ui.reply.addEventListener("keydown", (event) => {
  if (!ui.suggest.hidden && state.suggestions.length) {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const step = event.key === "ArrowDown" ? 1 : -1;
      state.suggestIndex = (state.suggestIndex + step + state.suggestions.length) % state.suggestions.length;
      showSuggestions();
      return;
    }
    if (event.key === "Enter" || event.key === "Tab") {
      event.preventDefault();
      insertCanned(state.suggestions[state.suggestIndex]);
      return;
    }
    if (event.key === "Escape") return hideSuggestions();
  }
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendReply();
  }
});
ui.reply.addEventListener("input", () => {
  state.suggestIndex = 0;
  showSuggestions();
  sendTyping();
});
ui.reply.addEventListener("blur", hideSuggestions);
ui.cannedPick.addEventListener("change", () => {
  const reply = state.canned.find((c) => String(c.id) === ui.cannedPick.value);
  ui.cannedPick.value = "";
  if (reply) insertCanned(reply);
});
ui.cannedForm.addEventListener("submit", saveCanned);
setInterval(tick, 1000);

// Log in again with the token kept for this tab; without one, try development mode (loopback, no token).
login(state.token || "");
