// 数据统计 tab: turns per day (line), outcome shares per day (stacked bars of percentages),
// 👍/👎 per day (bars), top questions and top entries (horizontal bars).
// Charts are drawn by uPlot (vendored, window.uPlot). Each chart's container carries
// data-points="<n>": the number of points (days) the drawn chart holds (0 when nothing is drawn).

import { $, api, el, report } from "./admin-core.js";

const charts = new Map(); // container id -> uPlot instance
const SHARES = [
  // bottom to top of the stack
  { key: "answered", label: "已回答", color: "#52c41a" },
  { key: "clarified", label: "需澄清", color: "#1677ff" },
  { key: "no_match", label: "未命中", color: "#faad14" },
  { key: "handoff", label: "转人工", color: "#f5222d" },
  { key: "other", label: "其他（闲聊/拦截）", color: "#bfbfbf" },
];

const shortDay = (day) => (typeof day === "string" ? day.slice(5) : ""); // "2026-11-01" -> "11-01"

function chartWidth(container) {
  return Math.max(240, Math.floor(container.clientWidth || container.parentElement?.clientWidth || 600));
}

function dayAxis(days) {
  return {
    space: 44,
    splits: (u, axisIdx, min, max) => {
      const n = days.length;
      const room = Math.max(2, Math.floor(u.bbox.width / devicePixelRatio / 56));
      const step = Math.max(1, Math.ceil(n / room));
      const out = [];
      for (let i = 0; i < n; i += step) out.push(i);
      return out;
    },
    values: (u, splits) => splits.map((i) => shortDay(days[i])),
    grid: { show: false },
  };
}

function baseOptions(container, days, height = 240) {
  return {
    width: chartWidth(container),
    height,
    scales: { x: { time: false, range: () => [-0.5, Math.max(0.5, days.length - 0.5)] } },
    // Counts are whole numbers: integer tick steps only.
    axes: [dayAxis(days), { size: 48, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000, 100000] }],
    cursor: { drag: { x: false, y: false } },
    legend: { live: true },
  };
}

function draw(id, days, opts, data) {
  const container = $(id);
  charts.get(id)?.destroy();
  container.replaceChildren();
  container.dataset.points = "0";
  if (!window.uPlot) {
    container.append(el("p", { class: "muted", textContent: "图表组件未加载" }));
    return;
  }
  if (!days.length) {
    container.append(el("p", { class: "muted", textContent: "暂无数据" }));
    return;
  }
  const chart = new window.uPlot(opts, data, container);
  charts.set(id, chart);
  container.dataset.points = String(chart.data[0].length); // what uPlot holds, not what was asked for
}

function turnsChart(stats) {
  const days = stats.days;
  const x = days.map((_, i) => i);
  const opts = baseOptions($("chart-turns"), days);
  opts.series = [
    { label: "日期", value: (u, i) => (i == null ? "" : days[i] ?? "") },
    { label: "对话轮数", stroke: "#1677ff", width: 2, fill: "rgba(22,119,255,.08)", points: { show: days.length <= 31 } },
  ];
  opts.scales.y = { range: (u, min, max) => [0, Math.max(4, Math.ceil(max * 1.15))] };
  draw("chart-turns", days, opts, [x, stats.counts]);
}

function outcomesChart(stats) {
  const days = stats.days;
  const s = stats.series;
  const raw = {};
  const totals = days.map((_, i) => ["answered", "clarified", "no_match", "handoff", "smalltalk", "blocked"]
    .reduce((sum, k) => sum + (s[k]?.[i] ?? 0), 0));
  for (const { key } of SHARES) {
    raw[key] = days.map((_, i) => {
      const count = key === "other" ? (s.smalltalk?.[i] ?? 0) + (s.blocked?.[i] ?? 0) : (s[key]?.[i] ?? 0);
      return totals[i] ? (count / totals[i]) * 100 : null;
    });
  }
  // Cumulative tops, bottom to top; drawn top first so each lower layer paints over the one above.
  const cumulative = [];
  let running = days.map(() => 0);
  for (const { key } of SHARES) {
    running = running.map((v, i) => (raw[key][i] == null ? null : (v ?? 0) + raw[key][i]));
    cumulative.push(running);
  }
  const order = [...SHARES.keys()].reverse();
  const bars = window.uPlot?.paths?.bars;
  const opts = baseOptions($("chart-outcomes"), days);
  opts.scales.y = { range: [0, 100] };
  opts.axes[1] = { size: 48, values: (u, splits) => splits.map((v) => `${v}%`) };
  opts.series = [
    { label: "日期", value: (u, i) => (i == null ? "" : days[i] ?? "") },
    ...order.map((k) => ({
      label: SHARES[k].label,
      stroke: SHARES[k].color,
      fill: SHARES[k].color,
      width: 1,
      points: { show: false },
      paths: bars && bars({ size: [0.7, 36] }),
      value: (u, v, si, idx) => (idx == null || raw[SHARES[k].key][idx] == null ? "-" : `${raw[SHARES[k].key][idx].toFixed(1)}%`),
    })),
  ];
  draw("chart-outcomes", days, opts, [days.map((_, i) => i), ...order.map((k) => cumulative[k])]);
}

function feedbackChart(stats) {
  const days = stats.days;
  const bars = window.uPlot?.paths?.bars;
  const opts = baseOptions($("chart-feedback"), days);
  opts.scales.y = { range: (u, min, max) => [0, Math.max(4, Math.ceil(max * 1.15))] };
  opts.series = [
    { label: "日期", value: (u, i) => (i == null ? "" : days[i] ?? "") },
    { label: "👍 有帮助", stroke: "#52c41a", fill: "rgba(82,196,26,.75)", width: 1, points: { show: false },
      paths: bars && bars({ size: [0.36, 28], align: -1 }) },
    { label: "👎 没帮助", stroke: "#f5222d", fill: "rgba(245,34,45,.75)", width: 1, points: { show: false },
      paths: bars && bars({ size: [0.36, 28], align: 1 }) },
  ];
  draw("chart-feedback", days, opts, [days.map((_, i) => i), stats.likes, stats.dislikes]);
}

function barList(id, items, label) {
  const container = $(id);
  container.dataset.points = String(items.length);
  if (!items.length) {
    container.replaceChildren(el("p", { class: "muted", textContent: "暂无数据" }));
    return;
  }
  const max = Math.max(...items.map((i) => i.count), 1);
  container.replaceChildren(...items.map((item, n) => {
    const fill = el("span", { class: "hbar-fill" });
    fill.style.width = `${(item.count / max) * 100}%`;
    return el("div", { class: "hbar" },
      el("span", { class: "hbar-rank muted", textContent: String(n + 1) }),
      el("div", { class: "hbar-body" },
        el("div", { class: "hbar-label", title: label(item), textContent: label(item) }),
        el("div", { class: "hbar-track" }, fill)),
      el("span", { class: "hbar-count", textContent: String(item.count) }));
  }));
}

let loading = null;
export async function loadFigures() {
  const days = $("fig-days").value;
  const run = (loading = Symbol("load"));
  try {
    const [turns, outcomes, feedback, questions, entries] = await Promise.all([
      api("/stats/turns", { query: { days } }),
      api("/stats/outcomes", { query: { days } }),
      api("/stats/feedback", { query: { days } }),
      api("/stats/top-questions", { query: { days, limit: 10 } }),
      api("/stats/top-entries", { query: { days, limit: 10 } }),
    ]);
    if (run !== loading) return; // a newer request superseded this one
    turnsChart(turns);
    outcomesChart(outcomes);
    feedbackChart(feedback);
    barList("top-questions", questions.items, (i) => i.question);
    barList("top-entries", entries.items, (i) => `#${i.id} ${i.question || i.title}`);
    document.body.dataset.figures = days;
  } catch (error) {
    report(error);
  }
}

function resize() {
  for (const [id, chart] of charts) {
    const container = $(id);
    if (container.offsetParent === null) continue; // hidden tab
    const width = chartWidth(container);
    if (Math.abs(width - chart.width) > 2) chart.setSize({ width, height: chart.height });
  }
}

export function setupFigures() {
  $("fig-days").addEventListener("change", loadFigures);
  $("fig-refresh").addEventListener("click", loadFigures);
  let timer = null;
  window.addEventListener("resize", () => {
    clearTimeout(timer);
    timer = setTimeout(resize, 120);
  });
}

export { resize as resizeCharts };
