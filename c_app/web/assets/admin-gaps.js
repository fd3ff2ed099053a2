// 知识缺口 tab: questions the knowledge base did not answer directly, grouped, with one-click fixes:
// add the question as a similar question of a suggested entry, or write a new entry for it.

import { $, GAP_KINDS, api, el, formatTime, renderPager, report, toast } from "./admin-core.js";
import { openEditor } from "./admin-kb.js";

const PAGE_SIZE = 20;
const state = { page: 1 };

export async function loadGaps(page = state.page) {
  state.page = page;
  try {
    const data = await api("/gaps", {
      query: { kind: $("gaps-kind").value, days: $("gaps-days").value, page, page_size: PAGE_SIZE },
    });
    if (data.items.length === 0 && data.total > 0 && page > 1) return loadGaps(page - 1);
    render(data);
  } catch (error) {
    report(error);
  }
}

function render(data) {
  $("gaps-total").textContent = String(data.total);
  const items = data.items.map((gap) => {
    const kinds = Object.entries(gap.kinds || {})
      .filter(([, n]) => n > 0)
      .map(([kind, n]) => el("span", { class: `badge badge-${kind}`, textContent: `${GAP_KINDS[kind] ?? kind} ${n}` }));
    const suggestions = (gap.suggested_entries || []).map((entry) =>
      el("li", { class: "suggestion", dataset: { entryId: String(entry.id) } },
        el("span", { class: "grow" },
          el("span", { textContent: entry.question }),
          el("span", { class: "muted small", textContent: ` #${entry.id} · 相似度 ${entry.score.toFixed(2)}` })),
        el("button", { type: "button", textContent: "添加为相似问题", onclick: (e) => resolve(gap, entry, e.currentTarget) })),
    );
    return el("li", { class: "gap", dataset: { question: gap.question } },
      el("div", { class: "gap-head" },
        el("strong", { class: "grow gap-question", textContent: gap.question }),
        el("span", { class: "count", title: "出现次数", textContent: `×${gap.count}` })),
      el("div", { class: "gap-meta" }, ...kinds, el("span", { class: "muted small", textContent: `最近 ${formatTime(gap.last_at)}` })),
      suggestions.length
        ? el("ul", { class: "suggestions" }, ...suggestions)
        : el("p", { class: "muted small", textContent: "没有相近的条目" }),
      el("div", { class: "gap-actions" },
        el("button", { type: "button", class: "primary", textContent: "新建条目",
          onclick: () => openEditor(null, { prefill: { question: gap.question }, onSaved: () => loadGaps() }) })),
    );
  });
  if (!items.length) items.push(el("li", { class: "empty", textContent: "这段时间没有知识缺口 🎉" }));
  $("gaps-list").replaceChildren(...items);
  renderPager($("gaps-pager"), data, loadGaps);
}

async function resolve(gap, entry, button) {
  button.disabled = true;
  try {
    await api("/gaps/resolve", { method: "POST", body: { question: gap.question, entry_id: entry.id } });
    toast(`已将「${gap.question}」添加为条目 #${entry.id} 的相似问题`);
    await loadGaps();
  } catch (error) {
    button.disabled = false;
    report(error);
  }
}

export function setupGaps() {
  $("gaps-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    loadGaps(1);
  });
  $("gaps-kind").addEventListener("change", () => loadGaps(1));
  $("gaps-days").addEventListener("change", () => loadGaps(1));
}
