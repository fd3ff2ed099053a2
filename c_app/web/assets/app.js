// The chat page: session list, streamed answers, image upload, stop, feedback, history, and the
// human agent's side (issue 10): agent messages and typing arrive on the session's event stream
// (GET /session/{id}/events, read with fetch() so the token stays in a header), a rating after the
// agent closes, and a ticket form when nobody is there.
// Plain ES module, no build step, no third-party code. Text from the server is only ever put into
// the page as text nodes (see markdown.js).
import { ApiError, el } from "./dom.js";

import { renderMarkdown, safeUrl } from "./markdown.js";

const API = "/api/v1/chat";
const $ = (id) => document.getElementById(id);
const ui = {
  sidebar: $("sidebar"), backdrop: $("backdrop"), toggle: $("toggle-sidebar"), list: $("session-list"),
  listEmpty: $("session-empty"), newSession: $("new-session"), title: $("title"), messages: $("messages"),
  welcome: $("welcome"), form: $("composer"), input: $("input"), file: $("file"), send: $("send"),
  stop: $("stop"), attachments: $("attachments"), status: $("status"), agentTyping: $("agent-typing"),
};
const INPUT_PLACEHOLDER = ui.input.placeholder;
const TICKET_PLACEHOLDER = "请输入您的问题和联系方式（手机或邮箱），我们会尽快联系您";
const TYPING_MS = 3000;

function randomId(bytes = 8) {
  // getRandomValues works on plain-http pages too, where crypto.randomUUID does not exist.
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function currentUser() {
  const named = new URLSearchParams(location.search).get("user");
  if (named) return named.slice(0, 128);
  let id = localStorage.getItem("c_app.user");
  if (!id) localStorage.setItem("c_app.user", (id = `web_${randomId()}`));
  return id;
}

function currentToken() {
  // With auth on, open the page as /chat?user=<id>#token=<the customer's JWT>: a fragment never leaves
  // the browser (no request line, no server log, no Referer). Never hand a page an API key: it acts
  // for every user. `?token=` still works for old links. Either way the token is kept for this tab
  // only (sessionStorage), sent as a bearer header, and wiped from the address bar (and so from the
  // history and bookmarks) at once.
  const query = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.slice(1));
  const given = fragment.get("token") || query.get("token");
  if (given) sessionStorage.setItem("c_app.token", given);
  if (query.has("token") || fragment.has("token")) {
    query.delete("token");
    fragment.delete("token");
    const search = query.toString();
    const hash = fragment.toString();
    history.replaceState(history.state, "", `${location.pathname}${search ? `?${search}` : ""}${hash ? `#${hash}` : ""}`);
  }
  return sessionStorage.getItem("c_app.token");
}

const state = {
  user: currentUser(), token: currentToken(), session: null, sessions: [], controller: null, attachments: [],
  live: null, // { session, controller, lastEventId, agent } while the session's event stream is open
  typingSent: 0, typingTimer: 0,
};
const auth = () => (state.token ? { Authorization: `Bearer ${state.token}` } : {});
const sessionKey = `c_app.session.${state.user}`;


async function api(path, { method = "GET", body, query = {} } = {}) {
  const url = new URL(API + path, location.origin);
  for (const [key, value] of Object.entries(query)) url.searchParams.set(key, value);
  const init = { method, headers: auth() };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(url, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data?.error?.message || `请求失败（${response.status}）`);
  return data;
}

const mine = () => ({ user_id: state.user }); // narrows session/message routes to this user

function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
}

function scrollToEnd() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

// ---- sessions ----------------------------------------------------------------------------------

async function loadSessions() {
  state.sessions = await api(`/sessions/${encodeURIComponent(state.user)}`, { query: { limit: 100 } });
  renderSessions();
}

function renderSessions() {
  ui.listEmpty.hidden = state.sessions.length > 0;
  ui.list.replaceChildren(
    ...state.sessions.map((s) =>
      el(
        "li",
        { class: s.session_id === state.session ? "session active" : "session" },
        el("button", { type: "button", class: "session-open", title: s.title, onclick: () => openSession(s.session_id) },
          el("span", { class: "session-title", textContent: s.title }),
          el("span", { class: "muted small", textContent: `${s.message_count} 条消息` })),
        el("button", { type: "button", class: "icon", title: "重命名", "aria-label": "重命名", textContent: "✎",
          onclick: () => renameSession(s) }),
        el("button", { type: "button", class: "icon", title: "删除", "aria-label": "删除", textContent: "🗑",
          onclick: () => deleteSession(s) }),
      ),
    ),
  );
  const current = state.sessions.find((s) => s.session_id === state.session);
  ui.title.textContent = current ? current.title : "新对话";
}

async function renameSession(session) {
  const title = prompt("新的会话标题", session.title);
  if (title === null) return;
  try {
    await api(`/session/${encodeURIComponent(session.session_id)}`, { method: "PATCH", body: { title }, query: mine() });
    await loadSessions();
  } catch (err) {
    setStatus(err.message, true);
  }
}

async function deleteSession(session) {
  if (!confirm(`删除会话“${session.title}”及其全部消息？`)) return;
  try {
    await api(`/session/${encodeURIComponent(session.session_id)}`, { method: "DELETE", query: mine() });
    if (session.session_id === state.session) startNewSession();
    await loadSessions();
  } catch (err) {
    setStatus(err.message, true);
  }
}

function clearConversation() {
  ui.messages.replaceChildren(ui.welcome);
  ui.welcome.hidden = false;
}

function startNewSession() {
  if (state.controller) return;
  stopWatching();
  showMode("active");
  // The id is made here and the session is created by the first message (the seed's /stream does so).
  state.session = null;
  localStorage.removeItem(sessionKey);
  clearConversation();
  renderSessions();
  closeSidebar();
  ui.input.focus();
}

async function openSession(sessionId) {
  if (state.controller) return;
  state.session = sessionId;
  localStorage.setItem(sessionKey, sessionId);
  renderSessions();
  closeSidebar();
  clearConversation();
  try {
    const page = await api(`/session/${encodeURIComponent(sessionId)}/messages`, {
      query: { ...mine(), order: "desc", limit: 50 },
    });
    for (const message of page.messages.reverse()) renderStored(message);
    scrollToEnd();
    watchSession(sessionId);
    const info = await api(`/session/${encodeURIComponent(sessionId)}`, { query: mine() });
    showMode(info.status);
  } catch (err) {
    if (err.status !== 404) setStatus(err.message, true);
  }
}

// ---- messages ----------------------------------------------------------------------------------

function addBubble(role) {
  ui.welcome.hidden = true;
  const bubble = el("div", { class: "bubble" });
  const row = el("div", { class: `msg ${role}` }, bubble);
  ui.messages.append(row);
  return { row, bubble };
}

function imageUrls(parts) {
  return (parts || []).filter((p) => p.type === "image_url").map((p) => p.image_url?.url).filter(Boolean);
}

function renderQuestion(text, images) {
  const { bubble } = addBubble("user");
  if (text) bubble.append(el("div", { class: "text", textContent: text }));
  for (const url of images) {
    // Our uploads are same-origin paths; anything else must be an http(s) or inline image.
    const src = url.startsWith("/static/uploads/") || /^data:image\//.test(url) ? url : safeUrl(url);
    if (src) bubble.append(el("img", { class: "thumb", src, alt: "图片" }));
  }
}

function answerView() {
  const { row, bubble } = addBubble("assistant");
  const body = el("div", { class: "md" });
  const extras = el("div", { class: "extras" });
  bubble.append(body, extras);
  return { row, body, extras, text: "", frame: 0 };
}

function paintAnswer(view) {
  view.body.replaceChildren(renderMarkdown(view.text));
}

function appendText(view, text) {
  view.text += text;
  // Re-render at most once per frame however fast the deltas arrive.
  view.frame ||= requestAnimationFrame(() => {
    view.frame = 0;
    paintAnswer(view);
    scrollToEnd();
  });
}

function showSources(view, sources) {
  if (!sources?.length) return;
  const items = sources.map((s) => el("li", { textContent: s.title || s.question || String(s.content || "").slice(0, 40) }));
  view.extras.append(el("details", { class: "sources" }, el("summary", { textContent: `参考来源（${sources.length}）` }),
    el("ul", {}, ...items)));
}

function showSuggestions(view, questions) {
  if (!questions?.length) return;
  view.extras.append(el("div", { class: "chips" }, ...questions.map((q) =>
    el("button", { type: "button", class: "chip", textContent: q, onclick: () => send(q) }))));
}

function showNotice(view, text, kind = "notice") {
  view.extras.append(el("div", { class: kind, textContent: text }));
}

// ---- the human agent (issue 10) ----------------------------------------------------------------

function showMode(status) {
  // "ticket": nobody is there, the next message is left for the agents (留言).
  const ticket = status === "ticket";
  ui.input.placeholder = ticket ? TICKET_PLACEHOLDER : INPUT_PLACEHOLDER;
  document.body.dataset.mode = status || "active";
}

function liveNotice(text, kind = "notice live-notice") {
  ui.welcome.hidden = true;
  ui.messages.append(el("div", { class: `system ${kind}`, textContent: text }));
  scrollToEnd();
}

function showTicketForm() {
  liveNotice("当前没有人工客服在线。请在下方输入框留下您的问题和联系方式（手机或邮箱），我们会尽快与您联系。", "ticket-form handoff");
  showMode("ticket");
  ui.input.focus();
}

function showRating(sessionId) {
  if (ui.messages.querySelector(`.rating[data-session-id="${sessionId}"]`)) return;
  let score = 0;
  const stars = [1, 2, 3, 4, 5].map((n) => el("button", {
    type: "button", class: "star", textContent: "★", title: `${n} 分`, "aria-label": `${n} 分`,
    onclick: () => {
      score = n;
      stars.forEach((star, i) => star.setAttribute("aria-pressed", String(i < n)));
    },
  }));
  const comment = el("textarea", { class: "rating-comment", rows: 2, maxLength: 1000, placeholder: "说说您的感受（可选）" });
  const note = el("div", { class: "small muted" });
  const submit = el("button", { type: "button", class: "primary rating-submit", textContent: "提交评价" });
  const box = el("div", { class: "rating", "data-session-id": sessionId },
    el("div", { textContent: "本次人工服务已结束，请为客服打分：" }), el("div", { class: "stars" }, ...stars), comment, submit, note);
  submit.addEventListener("click", async () => {
    if (!score) {
      note.textContent = "请先选择 1-5 分";
      return;
    }
    try {
      await api(`/session/${encodeURIComponent(sessionId)}/rating`, {
        method: "POST", body: { score, comment: comment.value.trim() }, query: mine(),
      });
      box.replaceChildren(el("div", { class: "rating-done", textContent: `感谢您的评价（${score} 分）！` }));
    } catch (err) {
      note.textContent = err.message;
    }
  });
  ui.welcome.hidden = true;
  ui.messages.append(box);
  scrollToEnd();
}

function showAgentTyping(name) {
  ui.agentTyping.textContent = `客服 ${name || ""} 正在输入…`;
  ui.agentTyping.hidden = false;
  clearTimeout(state.typingTimer);
  state.typingTimer = setTimeout(() => { ui.agentTyping.hidden = true; }, TYPING_MS + 1000);
}

function onLiveEvent(live, { type, data }) {
  if (live.session !== state.session) return;
  if (type === "queued") {
    const wait = data.estimated_wait_seconds ? `，预计等待约 ${Math.max(1, Math.round(data.estimated_wait_seconds / 60))} 分钟` : "";
    liveNotice(`您正在排队，前面还有 ${Math.max(0, (data.position ?? 1) - 1)} 位${wait}`);
  } else if (type === "agent_joined") {
    live.agent = data.agent_name || "";
    showMode("with_agent");
    liveNotice(`人工客服 ${live.agent} 已接入，为您服务`);
  } else if (type === "agent_message" && data.message) {
    ui.agentTyping.hidden = true;
    renderAgentMessage(data.message);
    if (data.message.id != null) {
      api(`/session/${encodeURIComponent(live.session)}/read`, {
        method: "POST", body: { message_id: data.message.id }, query: mine(),
      }).catch(() => {});
    }
  } else if (type === "agent_typing") {
    showAgentTyping(data.agent_name);
  } else if (type === "closed") {
    live.agent = null;
    ui.agentTyping.hidden = true;
    showMode("active");
    liveNotice("人工服务已结束，如有其他问题可以继续向智能客服提问");
    if (data.rating_requested !== false) showRating(live.session);
  }
}

function stopWatching() {
  state.live?.controller.abort();
  state.live = null;
  ui.agentTyping.hidden = true;
}

async function watchSession(sessionId) {
  if (state.live?.session === sessionId) return;
  stopWatching();
  const live = (state.live = { session: sessionId, controller: new AbortController(), lastEventId: null, agent: null });
  let delay = 500;
  while (state.live === live) {
    try {
      const headers = { ...auth(), Accept: "text/event-stream" };
      if (live.lastEventId) headers["Last-Event-ID"] = live.lastEventId; // a reconnect misses nothing
      const url = `${API}/session/${encodeURIComponent(sessionId)}/events?user_id=${encodeURIComponent(state.user)}`;
      const response = await fetch(url, { headers, signal: live.controller.signal });
      if (response.status === 404 || response.status === 401 || response.status === 403) {
        if (state.live === live) state.live = null;
        return;
      }
      if (!response.ok) throw new Error(String(response.status));
      delay = 500;
      document.body.dataset.live = "true"; // tests wait for this
      for await (const event of readEvents(response.body, true)) {
        if (event.id) live.lastEventId = event.id;
        onLiveEvent(live, event);
      }
    } catch (err) {
      if (err.name === "AbortError") return;
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10_000);
  }
}

function sendTyping() {
  if (!state.live?.agent || !state.session) return;
  const now = Date.now();
  if (now - state.typingSent < TYPING_MS) return;
  state.typingSent = now;
  api(`/session/${encodeURIComponent(state.session)}/typing`, { method: "POST", query: mine() }).catch(() => {});
}

function showFeedback(view, messageId, rating) {
  const buttons = {
    like: el("button", { type: "button", class: "icon", textContent: "👍", title: "有帮助", "aria-label": "有帮助" }),
    dislike: el("button", { type: "button", class: "icon", textContent: "👎", title: "没帮助", "aria-label": "没帮助" }),
  };
  const paint = (value) => {
    for (const [name, button] of Object.entries(buttons)) button.setAttribute("aria-pressed", String(name === value));
  };
  for (const [name, button] of Object.entries(buttons)) {
    button.addEventListener("click", async () => {
      const next = button.getAttribute("aria-pressed") === "true" ? null : name; // a second click clears
      try {
        await api(`/message/${messageId}/feedback`, { method: "POST", body: { rating: next }, query: mine() });
        paint(next);
      } catch (err) {
        setStatus(err.message, true);
      }
    });
  }
  paint(rating);
  view.extras.append(el("div", { class: "feedback", "data-message-id": String(messageId) }, buttons.like, buttons.dislike));
}

function renderAgentMessage(message) {
  if (message.id != null && ui.messages.querySelector(`.msg.agent[data-message-id="${message.id}"]`)) return;
  const { row, bubble } = addBubble("agent");
  if (message.id != null) row.dataset.messageId = String(message.id);
  bubble.append(el("div", { class: "agent-name", textContent: `人工客服 ${message.agent_name || ""}` }),
    el("div", { class: "text", textContent: message.content }));
  scrollToEnd();
}

function renderStored(message) {
  if (message.role === "user") return renderQuestion(message.content, imageUrls(message.parts));
  if (message.role === "agent") return renderAgentMessage(message);
  const view = answerView();
  view.text = message.content;
  paintAnswer(view);
  if (message.status === "interrupted" || message.status === "partial") showNotice(view, "（回答未完成）");
  showSources(view, message.sources);
  showFeedback(view, message.id, message.feedback?.rating ?? null);
}

// ---- streaming ---------------------------------------------------------------------------------

/** Parse one SSE frame: typed (`event:` + JSON data) or the seed's plain framing. */
function parseFrame(frame) {
  let type = null;
  let id = null;
  const data = [];
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) continue; // comments are heartbeats
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  const payload = data.join("\n");
  if (type) {
    try {
      return { type, id, data: JSON.parse(payload) };
    } catch {
      return null;
    }
  }
  if (payload === "[DONE]") return { type: "done", data: {} };
  if (payload.startsWith('{"error"')) {
    try {
      return { type: "error", data: { message: JSON.parse(payload).error } };
    } catch { /* an answer that merely starts like one */ }
  }
  return { type: "delta", data: { text: payload.replace(/\\n/g, "\n").replace(/\\r/g, "\r") } };
}

async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = parseFrame(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
      if (event) yield event;
    }
  }
}

async function latestAnswerId() {
  // The plain framing carries no message id: ask the history for the answer just stored.
  const page = await api(`/session/${encodeURIComponent(state.session)}/messages`, {
    query: { ...mine(), order: "desc", limit: 1 },
  });
  const last = page.messages[0];
  return last && last.role === "assistant" ? last.id : null;
}

async function send(text) {
  text = text.trim();
  if (state.controller || (!text && !state.attachments.length)) return;
  if (!state.session) {
    state.session = `web_${randomId()}`;
    localStorage.setItem(sessionKey, state.session);
  }
  const images = state.attachments.splice(0).map((a) => a.url);
  renderAttachments();
  ui.input.value = "";
  autosize();
  renderQuestion(text, images);
  const content = images.length
    ? [...(text ? [{ type: "text", text }] : []), ...images.map((url) => ({ type: "image_url", image_url: { url } }))]
    : text;
  const view = answerView();
  view.row.classList.add("pending");
  const controller = (state.controller = new AbortController());
  setBusy(true);
  setStatus("");
  const result = { finished: false, messageId: null, status: null, handoff: false };
  try {
    const response = await fetch(`${API}/stream?events=typed`, {
      method: "POST",
      headers: { ...auth(), "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ user_id: state.user, session_id: state.session, message: { role: "user", content } }),
      signal: controller.signal,
    });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      throw new ApiError(response.status, data?.error?.message || `请求失败（${response.status}）`);
    }
    for await (const { type, data } of readEvents(response.body)) {
      if (type === "delta") appendText(view, data.text || "");
      else if (type === "sources") showSources(view, data.sources);
      else if (type === "handoff") {
        result.handoff = true;
        showNotice(view, data.message || "正在为您转接人工客服", "handoff");
      }
      else if (type === "suggestions") showSuggestions(view, data.questions);
      else if (type === "error") showNotice(view, data.message || "处理出错，请稍后重试", "error");
      else if (type === "done") {
        Object.assign(result, { finished: true, messageId: data.message_id ?? null, status: data.status ?? null });
      }
    }
  } catch (err) {
    if (err.name === "AbortError") showNotice(view, "已停止生成");
    else showNotice(view, err.message || "网络错误，请稍后重试", "error");
  } finally {
    cancelAnimationFrame(view.frame);
    paintAnswer(view);
    view.row.classList.remove("pending");
    if (!view.text) view.row.classList.add("empty-answer");
    state.controller = null;
    setBusy(false);
    scrollToEnd();
  }
  // An acknowledgement from the agent side (queued, held by a person, ticket taken) is not the bot's
  // answer: nothing to rate.
  const acknowledged = ["queued", "held", "ticket"].includes(result.status);
  if (result.finished && view.text && !acknowledged) {
    const id = result.messageId ?? (await latestAnswerId().catch(() => null));
    if (id) showFeedback(view, id, null);
  }
  if (result.status === "held" && state.live?.agent) {
    // A person holds the session: the acknowledgement is for plain clients; here the agent's own
    // replies arrive live, so the customer's message stands alone.
    view.row.remove();
  }
  if (result.status === "ticket") {
    showMode("active");
    showNotice(view, "留言已提交，我们会尽快与您联系", "ticket-ack notice");
  }
  if (result.finished) watchSession(state.session);
  if (result.handoff) {
    const info = await api(`/session/${encodeURIComponent(state.session)}`, { query: mine() }).catch(() => null);
    if (info?.status === "ticket") showTicketForm();
    else if (info) showMode(info.status);
  }
  await loadSessions().catch(() => {});
}

async function stop() {
  const controller = state.controller;
  if (!controller) return;
  // Ask the server to stop (it stores the partial answer); aborting alone also works, so errors are moot.
  await fetch(`${API}/session/${encodeURIComponent(state.session)}/stop?user_id=${encodeURIComponent(state.user)}`,
    { method: "POST", headers: auth() }).catch(() => {});
  controller.abort();
}

// ---- images ------------------------------------------------------------------------------------

function renderAttachments() {
  ui.attachments.replaceChildren(...state.attachments.map((a, i) =>
    el("span", { class: "attachment" }, el("img", { class: "thumb", src: a.url, alt: a.name }),
      el("button", { type: "button", class: "remove", title: "移除", "aria-label": "移除图片", textContent: "×",
        onclick: () => { state.attachments.splice(i, 1); renderAttachments(); } }))));
}

async function attach(file) {
  if (!state.session) {
    state.session = `web_${randomId()}`;
    localStorage.setItem(sessionKey, state.session);
  }
  const form = new FormData();
  form.append("file", file);
  form.append("user_id", state.user);
  form.append("session_id", state.session);
  setStatus("正在上传图片…");
  try {
    const result = await api("/upload-image", { method: "POST", body: form });
    state.attachments.push({ url: result.data.file_url, name: file.name });
    renderAttachments();
    setStatus("");
  } catch (err) {
    setStatus(err.message, true);
  }
}

// ---- wiring ------------------------------------------------------------------------------------

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 160)}px`;
}

function closeSidebar() {
  document.body.classList.remove("sidebar-open");
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  send(ui.input.value);
});
ui.input.addEventListener("keydown", (event) => {
  // Enter sends, except while an input method is composing Chinese text or with Shift for a new line.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send(ui.input.value);
  }
});
ui.input.addEventListener("input", () => {
  autosize();
  sendTyping();
});
ui.stop.addEventListener("click", stop);
ui.newSession.addEventListener("click", startNewSession);
ui.file.addEventListener("change", () => {
  for (const file of ui.file.files) attach(file);
  ui.file.value = "";
});
ui.toggle.addEventListener("click", () => document.body.classList.toggle("sidebar-open"));
ui.backdrop.addEventListener("click", closeSidebar);

async function start() {
  try {
    await loadSessions();
  } catch (err) {
    setStatus(err.message, true);
  }
  const saved = localStorage.getItem(sessionKey);
  const known = state.sessions.find((s) => s.session_id === saved) ?? state.sessions[0];
  if (known) await openSession(known.session_id);
  document.body.dataset.ready = "true"; // tests wait for this
}

start();
