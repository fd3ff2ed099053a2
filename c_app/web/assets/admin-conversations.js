// 会话记录 tab: browse and search conversations, open one read-only with each answer's sources and outcome.

import { renderMarkdown } from "./markdown.js";
import { $, OUTCOMES, api, badge, el, formatTime, renderPager, report } from "./admin-core.js";

const PAGE_SIZE = 20;
const state = { page: 1 };

function filters() {
  const since = $("conv-since").value;
  const until = $("conv-until").value;
  return {
    user_id: $("conv-user").value.trim(),
    // Whole days, in UTC like the rest of the console.
    since: since ? `${since}T00:00:00Z` : "",
    until: until ? `${until}T23:59:59Z` : "",
    outcome: $("conv-outcome").value,
    feedback: $("conv-feedback").value,
    q: $("conv-q").value.trim(),
  };
}

export async function loadConversations(page = state.page) {
  state.page = page;
  try {
    const data = await api("/conversations", { query: { ...filters(), page, page_size: PAGE_SIZE } });
    render(data);
  } catch (error) {
    report(error);
  }
}

function outcomeBadges(outcomes = {}) {
  return Object.entries(outcomes)
    .filter(([, n]) => n > 0)
    .map(([kind, n]) => badge(kind, `${OUTCOMES[kind] ?? kind} ${n}`));
}

function render(data) {
  $("conv-total").textContent = String(data.total);
  const rows = data.items.map((c) =>
    el("tr", { class: "clickable", tabIndex: 0, dataset: { sessionId: c.session_id },
      onclick: () => openConversation(c.session_id),
      onkeydown: (e) => e.key === "Enter" && openConversation(c.session_id) },
      el("td", {}, el("div", { class: "q", textContent: c.title || "（无标题）" }),
        el("div", { class: "muted small", textContent: c.session_id })),
      el("td", { textContent: c.user_id }),
      el("td", { class: "num", textContent: String(c.message_count) }),
      el("td", { class: "badges" }, ...outcomeBadges(c.outcomes),
        c.likes ? el("span", { class: "small", textContent: `👍${c.likes}` }) : null,
        c.dislikes ? el("span", { class: "small", textContent: `👎${c.dislikes}` }) : null),
      el("td", { class: "nowrap muted small", textContent: formatTime(c.last_activity) }),
    ));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 5, class: "empty", textContent: "没有符合条件的会话" })));
  $("conv-rows").replaceChildren(...rows);
  renderPager($("conv-pager"), data, loadConversations);
}

function textOf(message) {
  if (message.content) return message.content;
  return (message.parts || []).filter((p) => p.type === "text").map((p) => p.text).join("\n");
}

function sourcesOf(message) {
  const sources = message.sources || [];
  if (!sources.length) return null;
  return el("details", { class: "sources", open: true },
    el("summary", { textContent: `参考来源（${sources.length}）` }),
    el("ul", {}, ...sources.map((s) => {
      const score = typeof s.relevance_score === "number" ? ` · ${s.relevance_score.toFixed(2)}` : "";
      return el("li", {}, `${s.title || s.question || s.content || "条目"}${s.id != null ? ` #${s.id}` : ""}${s.type ? ` · ${s.type}` : ""}${score}`);
    })));
}

export async function openConversation(sessionId) {
  try {
    const { session, messages } = await api(`/conversations/${encodeURIComponent(sessionId)}`);
    $("conv-title").textContent = session.title || "（无标题）";
    $("conv-meta").textContent =
      `客户 ${session.user_id} · 会话 ${session.session_id} · ${session.message_count} 条消息 · 创建于 ${formatTime(session.created_at)} · 最后活动 ${formatTime(session.last_activity)}`;
    $("conv-messages").replaceChildren(...messages.map((m) => {
      const isUser = m.role === "user";
      const images = (m.parts || []).filter((p) => p.type === "image_url").length;
      const meta = el("div", { class: "msg-meta muted small" },
        el("span", { textContent: `${isUser ? "客户" : "客服"} · ${formatTime(m.created_at)}` }),
        m.outcome ? badge(m.outcome) : null,
        !isUser && m.engine ? el("span", { textContent: m.engine }) : null,
        !isUser && m.status && m.status !== "complete" ? el("span", { textContent: m.status }) : null,
        m.feedback?.rating ? el("span", { textContent: m.feedback.rating === "like" ? "👍" : "👎" }) : null);
      const body = isUser
        ? el("div", { class: "text", textContent: textOf(m) })
        : el("div", { class: "md" }, renderMarkdown(textOf(m)));
      return el("div", { class: `msg ${isUser ? "user" : "assistant"}`, dataset: { outcome: m.outcome ?? "" } },
        el("div", { class: "bubble" }, meta, body,
          images ? el("div", { class: "muted small", textContent: `（${images} 张图片）` }) : null,
          isUser ? null : sourcesOf(m),
          m.feedback?.comment ? el("div", { class: "muted small", textContent: `评价：${m.feedback.comment}` }) : null));
    }));
    $("conv-browser").hidden = true;
    $("conv-detail").hidden = false;
    window.scrollTo(0, 0);
  } catch (error) {
    report(error);
  }
}

export function setupConversations() {
  $("conv-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    loadConversations(1);
  });
  $("conv-back").addEventListener("click", () => {
    $("conv-detail").hidden = true;
    $("conv-browser").hidden = false;
  });
}
