// Small DOM and formatting helpers. Every value reaches the page as text, never as HTML.

export const $ = (id) => document.getElementById(id);

// el("td", {className: "x", title: "y"}, "text", otherNode) — strings become text nodes.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("aria-") || name === "role" || name === "data-label") {
      node.setAttribute(name, String(value));
    } else node[name] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
}

const pad = (n) => String(n).padStart(2, "0");

// 2026-05-01 14:03 in the browser's time zone.
export function shortTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function exactTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return `${d.toLocaleString()} (${iso})`;
}

// "3 min ago", "in 5 days", "just now".
export function relative(iso, now = Date.now()) {
  if (!iso) return "";
  const seconds = Math.round((new Date(iso).getTime() - now) / 1000);
  const abs = Math.abs(seconds);
  if (abs < 45) return "just now";
  const units = [["year", 31536000], ["month", 2592000], ["day", 86400], ["h", 3600],
    ["min", 60]];
  for (const [unit, size] of units) {
    if (abs >= size) {
      const n = Math.round(abs / size);
      const label = unit === "h" || unit === "min" ? `${n} ${unit}` : `${n} ${unit}${n === 1 ? "" : "s"}`;
      return seconds < 0 ? `${label} ago` : `in ${label}`;
    }
  }
  return "just now";
}

// <input type="datetime-local"> value <-> RFC 3339 UTC.
export function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function fromLocalInput(value) {
  if (!value) return null;
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return null;
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

// Quote for a POSIX shell.
export function shellQuote(text) {
  if (/^[A-Za-z0-9_\-.,:/@=+]+$/.test(text)) return text;
  return `'${text.replace(/'/g, "'\\''")}'`;
}
