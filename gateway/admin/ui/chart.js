// A key's requests per hour over the last 7 days, as stacked bars in an inline SVG built with
// DOM calls (no markup strings, no style attributes: colours come from classes in style.css).
// Bars are drawn in a stretched viewBox; the labels around them are HTML, so they stay legible
// at any width.
import { el } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const HOUR = 3600000;
const DAYS = 7;

// Stacked bottom to top; reasons the gateway may add later are drawn as "other".
export const KINDS = [
  ["ok", "Admitted"],
  ["rate_limited", "Rate limited"],
  ["quota_exhausted", "Quota exhausted"],
  ["key_store_unavailable", "Key store unavailable"],
  ["other", "Other refusals"],
];
const LABELS = Object.fromEntries(KINDS);

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const num = (n) => n.toLocaleString();
const pad = (n) => String(n).padStart(2, "0");
const hourLabel = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
  `${pad(d.getHours())}:00`;

// {ok, refused: {reason: n}} -> [[kind, n], ...] in stacking order, zero counts left out.
function counts(entry) {
  const out = { ok: entry.ok || 0 };
  for (const [reason, n] of Object.entries(entry.refused || {})) {
    const kind = LABELS[reason] && reason !== "ok" ? reason : "other";
    out[kind] = (out[kind] || 0) + n;
  }
  return KINDS.map(([kind]) => [kind, out[kind] || 0]).filter(([, n]) => n > 0);
}

// The hours shown: from local midnight six days ago to the end of today.
function hoursShown(now) {
  const start = new Date(now);
  start.setHours(0, 0, 0, 0);
  start.setDate(start.getDate() - (DAYS - 1));
  const end = new Date(start);
  end.setDate(end.getDate() + DAYS);
  const days = [];
  for (let i = 0; i < DAYS; i += 1) {
    const day = new Date(start);
    day.setDate(day.getDate() + i);
    days.push(day);
  }
  return { start: start.getTime(), end: end.getTime(), days };
}

// What the chart says, in words: for its aria label and the paragraph under it.
export function summarize(usage, now = Date.now()) {
  const { start, end } = hoursShown(now);
  const totals = Object.fromEntries(KINDS.map(([kind]) => [kind, 0]));
  let peak = null;
  for (const entry of usage) {
    const at = new Date(entry.hour).getTime();
    if (!(at >= start && at < end)) continue;
    let sum = 0;
    for (const [kind, n] of counts(entry)) {
      totals[kind] += n;
      sum += n;
    }
    if (!peak || sum > peak.sum) peak = { at, sum };
  }
  const refused = KINDS.slice(1).reduce((s, [kind]) => s + totals[kind], 0);
  const all = totals.ok + refused;
  if (!all) return { all, totals, text: "No requests in the last 7 days." };
  const reasons = KINDS.slice(1).filter(([kind]) => totals[kind])
    .map(([kind, label]) => `${num(totals[kind])} ${label.toLowerCase()}`);
  let text = `${num(all)} request${all === 1 ? "" : "s"} in the last 7 days: ` +
    `${num(totals.ok)} admitted, ${num(refused)} refused`;
  if (reasons.length) text += ` (${reasons.join(", ")})`;
  text += `. Busiest hour: ${hourLabel(new Date(peak.at))}, ${num(peak.sum)} request${peak.sum === 1 ? "" : "s"}.`;
  return { all, totals, text };
}

// The chart for `usage` (the API's hourly items, sparse) into `box`.
export function renderUsage(box, usage, now = Date.now()) {
  box.replaceChildren();
  const { start, end, days } = hoursShown(now);
  const slots = Math.round((end - start) / HOUR);
  const summary = summarize(usage, now);
  if (!summary.all) {
    box.append(el("p", { className: "chart-empty", id: "usage-summary" },
      "No requests in the last 7 days"));
    return;
  }
  const bars = [];
  let max = 0;
  for (const entry of usage) {
    const at = new Date(entry.hour).getTime();
    if (!(at >= start && at < end)) continue;
    const stack = counts(entry);
    const sum = stack.reduce((s, [, n]) => s + n, 0);
    max = Math.max(max, sum);
    bars.push({ at, slot: Math.floor((at - start) / HOUR), stack, sum });
  }
  const height = 100;
  const chart = svg("svg", {
    class: "chart", viewBox: `0 0 ${slots} ${height}`, preserveAspectRatio: "none",
    role: "img", "aria-labelledby": "usage-summary", focusable: "false",
  });
  // Day boundaries and the top line.
  for (let i = 1; i < DAYS; i += 1) {
    const x = Math.round((days[i].getTime() - start) / HOUR);
    chart.append(svg("line", { class: "chart-day", x1: x, x2: x, y1: 0, y2: height,
      "vector-effect": "non-scaling-stroke" }));
  }
  chart.append(svg("line", { class: "chart-grid", x1: 0, x2: slots, y1: 0.5, y2: 0.5,
    "vector-effect": "non-scaling-stroke" }));
  for (const bar of bars) {
    const group = svg("g", { class: "chart-bar", "data-hour": new Date(bar.at).toISOString() });
    const words = bar.stack.map(([kind, n]) => `${num(n)} ${LABELS[kind].toLowerCase()}`);
    group.append(svg("title", {}, `${hourLabel(new Date(bar.at))}: ${words.join(", ")}`));
    let y = height;
    for (const [kind, n] of bar.stack) {
      // Every count stays visible, however tall the busiest hour.
      const h = Math.max((n / max) * (height - 4), 1.5);
      y -= h;
      group.append(svg("rect", { class: `bar bar-${kind}`, x: bar.slot + 0.1, y, width: 0.8,
        height: h, "data-kind": kind, "data-count": n }));
    }
    chart.append(group);
  }
  chart.append(svg("line", { class: "chart-axis", x1: 0, x2: slots, y1: height - 0.5,
    y2: height - 0.5, "vector-effect": "non-scaling-stroke" }));

  const legend = el("ul", { className: "chart-legend", "aria-label": "Legend" });
  for (const [kind, label] of KINDS) {
    if (kind !== "ok" && !summary.totals[kind]) continue;
    legend.append(el("li", { dataset: { kind } },
      el("span", { className: `swatch bar-${kind}`, "aria-hidden": "true" }),
      `${label} `, el("strong", {}, num(summary.totals[kind]))));
  }
  const labels = el("div", { className: "chart-days", "aria-hidden": "true" },
    ...days.map((d) => el("span", { title: d.toDateString() },
      d.toLocaleDateString(undefined, { weekday: "short", day: "numeric" }))));
  box.append(
    el("div", { className: "chart-head" },
      el("span", {}, "Requests per hour, last 7 days"),
      el("span", { className: "muted" }, `peak ${num(max)}/h`)),
    el("div", { className: "chart-frame" }, chart),
    labels,
    legend,
    el("p", { className: "chart-summary", id: "usage-summary" }, summary.text));
}
