// 知识库 tab: list (search, category, paging), editor with a live Markdown preview, delete,
// import with an upload progress bar, export, hit-testing.

import { renderMarkdown } from "./markdown.js";
import {
  $, API, api, authHeaders, confirmDialog, el, errorFrom, formatTime, renderPager, report, toast,
} from "./admin-core.js";

const PAGE_SIZE = 20;
const state = { page: 1, q: "", category: "", editing: null, onSaved: null, categories: new Set() };

// ---- list --------------------------------------------------------------------------------------

export async function loadEntries(page = state.page) {
  state.page = page;
  try {
    const data = await api("/knowledge", {
      query: { page, page_size: PAGE_SIZE, q: state.q, category: state.category },
    });
    if (data.items.length === 0 && data.total > 0 && page > 1) return loadEntries(page - 1);
    renderEntries(data);
  } catch (error) {
    report(error);
  }
}

function renderEntries(data) {
  const total = $("kb-total");
  total.textContent = String(data.total);
  total.dataset.total = String(data.total);
  for (const item of data.items) if (item.category) state.categories.add(item.category);
  $("kb-categories").replaceChildren(...[...state.categories].sort().map((c) => el("option", { value: c })));
  const rows = data.items.map((item) =>
    el("tr", { dataset: { id: String(item.id) } },
      el("td", { class: "num muted", textContent: String(item.id) }),
      el("td", {},
        el("div", { class: "q", textContent: item.question || item.title }),
        item.title && item.question ? el("div", { class: "muted small", textContent: item.title }) : null,
        item.similar_questions.length
          ? el("div", { class: "muted small", textContent: `相似问题 ${item.similar_questions.length} 个` }) : null),
      el("td", {}, item.category ? el("span", { class: "tag", textContent: item.category }) : ""),
      el("td", { class: "nowrap muted small", textContent: formatTime(item.updated_at) }),
      el("td", { class: "actions" },
        el("button", { type: "button", textContent: "编辑", onclick: () => editEntry(item.id) }),
        el("button", { type: "button", class: "danger-text", textContent: "删除", onclick: () => deleteEntry(item) })),
    ));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 5, class: "empty", textContent: "没有符合条件的条目" })));
  $("kb-rows").replaceChildren(...rows);
  renderPager($("kb-pager"), data, loadEntries);
}

async function deleteEntry(item) {
  const name = item.question || item.title;
  if (!(await confirmDialog(`确定删除条目 #${item.id}「${name}」吗？删除后客户将无法再得到这条答案。`))) return;
  try {
    await api(`/knowledge/${item.id}`, { method: "DELETE" });
    toast("已删除");
    await loadEntries();
  } catch (error) {
    report(error);
  }
}

// ---- editor ------------------------------------------------------------------------------------

const fields = () => ({
  question: $("ed-question"), similar: $("ed-similar"), answer: $("ed-answer"),
  category: $("ed-category"), title: $("ed-title"),
});

function renderPreview() {
  const text = $("ed-answer").value;
  const preview = $("ed-preview");
  preview.replaceChildren(text.trim() ? renderMarkdown(text) : el("p", { class: "muted", textContent: "（答案为空）" }));
}

/** Open the editor: `entry` null for a new one (optionally prefilled), else an entry from the API. */
export function openEditor(entry = null, { prefill = {}, onSaved = null } = {}) {
  const f = fields();
  const source = entry ?? prefill;
  state.editing = entry?.id ?? null;
  state.onSaved = onSaved;
  f.question.value = source.question ?? "";
  f.similar.value = (source.similar_questions ?? []).join("\n");
  f.answer.value = entry?.answer ?? source.answer ?? "";
  f.category.value = source.category ?? "";
  f.title.value = source.title ?? "";
  $("editor-title").textContent = entry ? `编辑条目 #${entry.id}` : "新建条目";
  $("editor-error").hidden = true;
  renderPreview();
  $("editor").showModal();
  (entry ? f.answer : f.question).focus();
}

async function editEntry(id) {
  try {
    openEditor(await api(`/knowledge/${id}`));
  } catch (error) {
    report(error);
  }
}

async function saveEntry(event) {
  event.preventDefault();
  const f = fields();
  const body = {
    question: f.question.value.trim(),
    similar_questions: f.similar.value.split("\n").map((s) => s.trim()).filter(Boolean),
    answer: f.answer.value,
    category: f.category.value.trim(),
    title: f.title.value.trim(),
  };
  const error = $("editor-error");
  if (!body.answer.trim()) return showError(error, "答案不能为空");
  if (!body.question && !body.title) return showError(error, "问题和标题不能都为空");
  const save = $("editor-save");
  save.disabled = true;
  try {
    const saved = state.editing
      ? await api(`/knowledge/${state.editing}`, { method: "PUT", body })
      : await api("/knowledge", { method: "POST", body });
    $("editor").close();
    toast(state.editing ? "已保存" : `已创建条目 #${saved.id}`);
    await loadEntries(state.editing ? state.page : 1);
    state.onSaved?.(saved);
  } catch (err) {
    if (err.status !== 401) showError(error, err.message);
    else $("editor").close();
  } finally {
    save.disabled = false;
  }
}

function showError(node, text) {
  node.textContent = text;
  node.hidden = false;
}

// ---- import ------------------------------------------------------------------------------------

function importFile(event) {
  event.preventDefault();
  const file = $("import-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  form.append("strict", $("import-strict").checked ? "true" : "false");
  const progress = $("import-progress");
  const status = $("import-status");
  const errors = $("import-errors");
  const submit = $("import-submit");
  progress.hidden = false;
  progress.value = 0;
  errors.replaceChildren();
  status.textContent = "正在上传…";
  submit.disabled = true;

  // XMLHttpRequest, not fetch: only it reports upload progress.
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `${API}/knowledge/import`);
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.responseType = "json";
  xhr.upload.addEventListener("progress", (e) => {
    if (e.lengthComputable) progress.value = Math.round((e.loaded / e.total) * 100);
  });
  xhr.upload.addEventListener("load", () => {
    progress.value = 100;
    status.textContent = "上传完成，正在导入…";
  });
  xhr.addEventListener("load", () => {
    submit.disabled = false;
    const data = xhr.response;
    if (xhr.status >= 200 && xhr.status < 300) {
      const r = data.data;
      status.textContent = `导入完成：新增 ${r.created} 条，更新 ${r.updated} 条，失败 ${r.failed} 条`;
      status.dataset.created = String(r.created);
      showLineErrors(r.errors);
      $("import-form").reset();
      loadEntries(1);
    } else {
      const error = errorFrom(xhr.status, data);
      if (xhr.status === 401) return;
      status.textContent = `导入失败：${error.message}`;
      if (Array.isArray(error.details)) showLineErrors(error.details);
    }
  });
  xhr.addEventListener("error", () => {
    submit.disabled = false;
    status.textContent = "导入失败：网络错误";
  });
  xhr.send(form);
}

function showLineErrors(list) {
  $("import-errors").replaceChildren(
    ...(list || []).map((e) =>
      el("li", {}, el("strong", { textContent: e.line != null ? `第 ${e.line} 行` : "文件" }), `：${e.error ?? e.message ?? ""}`),
    ),
  );
}

// ---- export ------------------------------------------------------------------------------------

async function exportAs(format) {
  try {
    // fetch + blob: a plain link could not carry the bearer header.
    const response = await api("/knowledge/export", { query: { format }, raw: true });
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: `knowledge.${format}` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
    toast(`已导出 knowledge.${format}`);
  } catch (error) {
    report(error);
  }
}

// ---- hit test ----------------------------------------------------------------------------------

async function hitTest(event) {
  event.preventDefault();
  const query = $("hit-query").value.trim();
  if (!query) return;
  const box = $("hit-result");
  box.replaceChildren(el("p", { class: "muted small", textContent: "正在测试…" }));
  try {
    const r = await api("/knowledge/hit-test", { method: "POST", body: { query, limit: 10 } });
    const verdict = r.answered
      ? el("p", { class: "verdict ok", dataset: { answered: "true" } }, `会直接回答（条目 #${r.answer_id}）`)
      : el("p", { class: "verdict no", dataset: { answered: "false" } }, "不会直接回答（将列出相近问题或转人工）");
    const terms = (r.terms || []).map((t) => el("span", { class: "tag", title: `权重 ${t.weight}`, textContent: t.term }));
    const hits = (r.hits || []).map((h, i) =>
      el("tr", { class: h.id === r.answer_id ? "chosen" : "", dataset: { id: String(h.id) } },
        el("td", { class: "num muted", textContent: String(i + 1) }),
        el("td", {},
          el("div", { textContent: h.question || h.title }),
          el("div", { class: "muted small", textContent: `#${h.id}${h.category ? ` · ${h.category}` : ""}` })),
        el("td", { class: "score" }, scoreBar(h.score, r.threshold),
          el("span", { class: h.above_threshold ? "above" : "muted", textContent: h.score.toFixed(3) })),
      ));
    box.replaceChildren(
      verdict,
      el("p", { class: "muted small" }, `归一化：${r.normalized}　阈值：${r.threshold.toFixed(3)}`),
      el("div", { class: "terms" }, ...terms),
      hits.length
        ? el("table", { class: "grid hits" },
          el("thead", {}, el("tr", {}, el("th", { textContent: "#" }), el("th", { textContent: "条目" }), el("th", { textContent: "得分" }))),
          el("tbody", {}, ...hits))
        : el("p", { class: "muted", textContent: "没有命中任何条目" }),
    );
  } catch (error) {
    box.replaceChildren();
    report(error);
  }
}

function scoreBar(score, threshold) {
  const bar = el("span", { class: "meter" }, el("span", { class: "fill" }), el("span", { class: "mark" }));
  bar.firstChild.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
  bar.lastChild.style.left = `${Math.max(0, Math.min(1, threshold)) * 100}%`;
  return bar;
}

// ---- wiring ------------------------------------------------------------------------------------

export function setupKnowledge() {
  $("kb-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    state.q = $("kb-q").value.trim();
    state.category = $("kb-category").value.trim();
    loadEntries(1);
  });
  $("kb-new").addEventListener("click", () => openEditor());
  $("kb-export-jsonl").addEventListener("click", () => exportAs("jsonl"));
  $("kb-export-csv").addEventListener("click", () => exportAs("csv"));
  $("ed-answer").addEventListener("input", renderPreview);
  $("editor-form").addEventListener("submit", saveEntry);
  $("editor-cancel").addEventListener("click", () => $("editor").close());
  $("import-form").addEventListener("submit", importFile);
  $("hit-form").addEventListener("submit", hitTest);
}
