// The gateway's admin page: accounts and keys over the admin API (see README, Admin HTTP API).
import { all, api, ApiError, clearToken, setToken, token } from "./api.js";
import { renderUsage } from "./chart.js";
import {
  $, clear, el, exactTime, fromLocalInput, relative, shellQuote, shortTime, toLocalInput,
} from "./format.js";

const PAGE = 50;
const TYPE_NAMES = { api_key: "API key", hmac: "HMAC" };
const STATUS_NAMES = {
  active: "Active", expired: "Expired", account_disabled: "Account disabled",
  no_api_access: "No API access",
};

const state = {
  view: "keys",
  accounts: [],
  accountsById: new Map(),
  routes: [],
  proxyPort: null,
  keys: [],
  nextCursor: null,
  selected: new Set(),
  sort: { column: null, dir: 1 },
  editing: null,
  limitsOf: null, // the account whose limits dialog is open
};

// -- notices -------------------------------------------------------------------------------------

let toastTimer = null;
function toast(message, kind = "ok") {
  const node = $("toast");
  node.textContent = message;
  node.className = `toast ${kind}`;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.hidden = true; }, kind === "error" ? 8000 : 4000);
}

function showError(node, message) {
  node.textContent = message;
  node.hidden = !message;
}

// The input a 422 names (data-limit="rate" and so on) in the error's dialog: marked and focused.
function markField(errorNode, field) {
  const dialog = errorNode.closest("dialog");
  if (!dialog || !field) return;
  const input = dialog.querySelector(`[data-limit="${CSS.escape(field)}"]`);
  if (!input) return;
  input.setAttribute("aria-invalid", "true");
  input.setAttribute("aria-describedby", errorNode.id);
  input.focus();
}

function clearMarks(dialog) {
  for (const input of dialog.querySelectorAll("[aria-invalid]")) {
    input.removeAttribute("aria-invalid");
    input.removeAttribute("aria-describedby");
  }
}

// -- limits ----------------------------------------------------------------------------------------

// "100/s · burst 200 · 10000/month" for a key or an account; "" when it has none.
function limitsText(record) {
  const parts = [];
  if (record.rate) parts.push(record.rate);
  if (record.burst !== null && record.burst !== undefined) parts.push(`burst ${record.burst}`);
  if (record.quota) parts.push(/^\d+$/.test(record.quota) ? `${record.quota} total` : record.quota);
  return parts.join(" · ");
}

function fillLimits(prefix, record) {
  $(`${prefix}-rate`).value = record ? record.rate || "" : "";
  $(`${prefix}-burst`).value = record && record.burst !== null && record.burst !== undefined
    ? String(record.burst) : "";
  $(`${prefix}-quota`).value = record ? record.quota || "" : "";
}

// The three fields as a request body: filled ones only (a new key), or every one with null for
// an empty field (a change: null removes the limit).
function limitFields(prefix, { nulls }) {
  const body = {};
  for (const name of ["rate", "burst", "quota"]) {
    const input = $(`${prefix}-${name}`);
    const text = input.value.trim();
    if (!text) {
      // A number input reads "" when what is typed is not a number: say so, not "removed".
      if (name === "burst" && input.validity.badInput) throw new Error("burst: must be a whole number");
      if (nulls) body[name] = null;
      continue;
    }
    if (name === "burst") {
      const n = Number(text);
      body.burst = /^\d+$/.test(text) && Number.isSafeInteger(n) ? n : text;
    } else body[name] = text;
  }
  return body;
}

// Only the limits that differ from `record`'s (no spurious change in the audit log).
function changedLimits(body, record) {
  const out = {};
  for (const [name, value] of Object.entries(body)) {
    if (value !== (record[name] ?? null)) out[name] = value;
  }
  return out;
}

// Any call: a refused token signs out; other errors are reported.
async function call(fn, errorNode) {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut("The admin token was refused. Sign in again.");
      return undefined;
    }
    const message = err instanceof Error ? err.message : String(err);
    if (errorNode) {
      showError(errorNode, message);
      markField(errorNode, err instanceof ApiError ? err.field : null);
    } else toast(message, "error");
    return undefined;
  }
}

// -- sign-in -------------------------------------------------------------------------------------

function showView(view) {
  state.view = view;
  const signedIn = view !== "signin";
  $("view-signin").hidden = signedIn;
  $("nav").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
  $("view-keys").hidden = view !== "keys";
  $("view-accounts").hidden = view !== "accounts";
  for (const tab of document.querySelectorAll(".tab")) {
    if (tab.dataset.view === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
}

function signOut(message = "") {
  clearToken();
  state.keys = [];
  state.accounts = [];
  state.selected.clear();
  $("token").value = "";
  showError($("signin-error"), message);
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  showView("signin");
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const value = $("token").value.trim();
  if (!value) {
    showError($("signin-error"), "Enter the admin token.");
    return;
  }
  $("signin-submit").disabled = true;
  try {
    await api("GET", "/admin/accounts?limit=1", undefined, value);
    setToken(value);
    $("token").value = "";
    showError($("signin-error"), "");
    await start();
  } catch (err) {
    let message = err.message;
    if (err instanceof ApiError && err.status === 401) message = "Wrong token: the gateway refused it.";
    else if (err instanceof ApiError && err.code === "admin_api_disabled") {
      message = "The admin API is off: no admin token is configured on this gateway.";
    }
    showError($("signin-error"), message);
    $("token").select();
  } finally {
    $("signin-submit").disabled = false;
  }
}

async function start() {
  showView(state.view === "signin" ? "keys" : state.view);
  await call(async () => {
    const routes = await api("GET", "/admin/routes");
    state.routes = routes.items;
    state.proxyPort = routes.proxy_port;
  });
  await loadAccounts();
  await loadKeys();
}

// -- accounts ------------------------------------------------------------------------------------

async function loadAccounts() {
  const accounts = await call(() => all(`/admin/accounts?limit=${PAGE * 4}`));
  if (accounts === undefined) return;
  state.accounts = accounts;
  state.accountsById = new Map(accounts.map((a) => [a.id, a]));
  renderAccountFilter();
  renderAccounts();
}

function accountName(id) {
  const account = state.accountsById.get(id);
  return account ? account.name : id;
}

function renderAccountFilter() {
  const select = $("filter-account");
  const current = select.value;
  clear(select);
  select.append(el("option", { value: "" }, "All accounts"));
  for (const account of state.accounts) {
    select.append(el("option", { value: account.id }, account.name));
  }
  select.value = state.accountsById.has(current) ? current : "";
}

function renderAccounts() {
  const body = $("accounts-body");
  clear(body);
  $("accounts-empty").hidden = state.accounts.length > 0;
  for (const account of state.accounts) {
    const toggle = el("button", {
      type: "button", className: "btn small",
      "aria-label": `${account.enabled ? "Disable" : "Enable"} ${account.name}`,
      onclick: () => updateAccount(account, { enabled: !account.enabled }),
    }, account.enabled ? "Disable" : "Enable");
    const access = el("button", {
      type: "button", className: "btn small",
      "aria-label": `${account.api_access ? "Revoke API access of" : "Grant API access to"} ${account.name}`,
      onclick: () => updateAccount(account, { api_access: !account.api_access }),
    }, account.api_access ? "Revoke API access" : "Grant API access");
    body.append(el("tr", { dataset: { id: account.id } },
      el("td", { className: "name", "data-label": "Name" }, account.name),
      el("td", { className: "mono", "data-label": "ID" }, account.id),
      el("td", { "data-label": "Status" }, badge(account.enabled ? "active" : "account_disabled",
        account.enabled ? "Enabled" : "Disabled")),
      el("td", { "data-label": "API access" }, badge(account.api_access ? "active" : "no_api_access",
        account.api_access ? "Granted" : "None")),
      el("td", { className: "limits", "data-label": "Limits" },
        limitsText(account) || el("span", { className: "muted" }, "none")),
      el("td", { className: "num", "data-label": "Keys" }, String(account.key_count)),
      el("td", { "data-label": "Created", title: exactTime(account.created_at) },
        shortTime(account.created_at)),
      el("td", { className: "right actions-cell", "data-label": "Actions" }, toggle, access,
        el("button", {
          type: "button", className: "btn small edit-limits",
          "aria-label": `Edit limits of ${account.name}`,
          onclick: () => openLimits(account),
        }, "Limits"))));
  }
}

async function updateAccount(account, change) {
  const updated = await call(() => api("PATCH", `/admin/accounts/${encodeURIComponent(account.id)}`, change));
  if (!updated) return;
  toast(`${updated.name}: ${updated.enabled ? "enabled" : "disabled"}, API access ${updated.api_access ? "granted" : "revoked"}.`);
  await loadAccounts();
  renderKeys();
}

function openLimits(account) {
  state.limitsOf = account;
  $("limits-dialog-title").textContent = `Limits of ${account.name}`;
  fillLimits("account", account);
  showError($("limits-error"), "");
  clearMarks($("limits-dialog"));
  $("limits-dialog").showModal();
  $("account-rate").focus();
}

async function saveLimits(event) {
  event.preventDefault();
  const account = state.limitsOf;
  if (!account) return;
  const errorNode = $("limits-error");
  showError(errorNode, "");
  clearMarks($("limits-dialog"));
  let body;
  try {
    body = changedLimits(limitFields("account", { nulls: true }), account);
  } catch (err) {
    showError(errorNode, err.message);
    markField(errorNode, "burst");
    return;
  }
  if (!Object.keys(body).length) {
    $("limits-dialog").close();
    toast(`${account.name}: limits unchanged.`);
    return;
  }
  $("limits-save").disabled = true;
  try {
    const updated = await call(() => api("PATCH",
      `/admin/accounts/${encodeURIComponent(account.id)}`, body), errorNode);
    if (!updated) return;
    $("limits-dialog").close();
    const text = limitsText(updated);
    toast(`${updated.name}: ${text ? `limits ${text}` : "no limits"}.`);
    await loadAccounts();
  } finally {
    $("limits-save").disabled = false;
  }
}

async function createAccount(event) {
  event.preventDefault();
  const name = $("account-name").value.trim();
  if (!name) {
    toast("Give the account a name.", "error");
    $("account-name").focus();
    return;
  }
  const created = await call(() => api("POST", "/admin/accounts",
    { name, api_access: $("account-api-access").checked }));
  if (!created) return;
  $("account-name").value = "";
  toast(`Account ${created.name} created.`);
  await loadAccounts();
}

// -- keys: list ----------------------------------------------------------------------------------

function keyStatus(key, now = Date.now()) {
  if (key.expires_at && new Date(key.expires_at).getTime() <= now) return "expired";
  const account = state.accountsById.get(key.account_id);
  if (account && !account.enabled) return "account_disabled";
  if (account && !account.api_access) return "no_api_access";
  return "active";
}

function badge(kind, text) {
  return el("span", { className: `badge ${kind}` }, text);
}

async function loadKeys(more = false) {
  const account = $("filter-account").value;
  const params = new URLSearchParams({ limit: String(PAGE) });
  if (account) params.set("account_id", account);
  if (more && state.nextCursor) params.set("cursor", state.nextCursor);
  const page = await call(() => api("GET", `/admin/keys?${params}`));
  if (!page) return;
  state.keys = more ? [...state.keys, ...page.items] : page.items;
  state.nextCursor = page.next_cursor;
  if (!more) state.selected.clear();
  renderKeys();
}

function sortValue(key, column) {
  switch (column) {
    case "account": return accountName(key.account_id).toLowerCase();
    case "scopes": return key.scopes.join(" ");
    case "status": return keyStatus(key);
    case "created_at": case "expires_at": case "last_used_at":
      return key[column] ? new Date(key[column]).getTime() : (column === "expires_at" ? Infinity : 0);
    default: return String(key[column] ?? "");
  }
}

function visibleKeys() {
  const type = $("filter-type").value;
  const rows = state.keys.filter((k) => !type || k.type === type);
  const { column, dir } = state.sort;
  if (column) {
    rows.sort((a, b) => {
      const x = sortValue(a, column);
      const y = sortValue(b, column);
      return (x < y ? -1 : x > y ? 1 : 0) * dir;
    });
  }
  return rows;
}

function renderKeys() {
  const body = $("keys-body");
  clear(body);
  const rows = visibleKeys();
  const now = Date.now();
  for (const key of rows) {
    const status = keyStatus(key, now);
    const check = el("input", {
      type: "checkbox", className: "row-check", checked: state.selected.has(key.id),
      "aria-label": `Select key ${key.id}`,
    });
    check.addEventListener("change", () => {
      if (check.checked) state.selected.add(key.id);
      else state.selected.delete(key.id);
      updateSelection();
    });
    check.addEventListener("dblclick", (e) => e.stopPropagation());
    const edit = el("button", {
      type: "button", className: "btn small edit-key", "aria-label": `Edit key ${key.id}`,
      onclick: () => openEdit(key),
    }, "Edit");
    edit.addEventListener("dblclick", (e) => e.stopPropagation());
    const row = el("tr", { tabIndex: 0, className: "key-row", dataset: { id: key.id },
      "aria-label": `Key ${key.id}; press Enter to edit` },
      el("td", { className: "check" }, check),
      el("td", { className: "mono id", "data-label": "ID" }, key.id),
      el("td", { className: "type", "data-label": "Type" }, TYPE_NAMES[key.type] || key.type),
      el("td", { className: "account", "data-label": "Account",
        title: `${accountName(key.account_id)} (${key.account_id})` }, accountName(key.account_id)),
      el("td", { className: "scopes", "data-label": "Scopes" },
        ...(key.scopes.length ? key.scopes.map((s) => el("span", { className: "chip" }, s))
          : [el("span", { className: "muted" }, "none")]),
        limitsText(key) ? el("div", { className: "key-limits", title: "Rate limit and quota" },
          el("span", { className: "key-limits-label" }, "Limits: "), limitsText(key)) : null),
      el("td", { className: "when", "data-label": "Created", title: exactTime(key.created_at) },
        shortTime(key.created_at)),
      el("td", { className: "when", "data-label": "Expires", title: exactTime(key.expires_at) },
        key.expires_at ? shortTime(key.expires_at) : el("span", { className: "muted" }, "never")),
      el("td", { className: "when", "data-label": "Last used", title: key.last_used_at ? exactTime(key.last_used_at) : "" },
        key.last_used_at ? relative(key.last_used_at, now) : el("span", { className: "muted" }, "never")),
      el("td", { className: "mono secret", "data-label": "Secret" }, key.masked_secret),
      el("td", { "data-label": "Status" }, badge(status, STATUS_NAMES[status])),
      el("td", { className: "right actions-cell edit-cell" }, edit));
    row.addEventListener("dblclick", () => openEdit(key));
    row.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && e.target === row) {
        e.preventDefault();
        openEdit(key);
      }
    });
    body.append(row);
  }
  $("keys-empty").hidden = rows.length > 0;
  $("load-more").hidden = !state.nextCursor;
  const shown = rows.length === state.keys.length ? `${rows.length}` : `${rows.length} of ${state.keys.length}`;
  $("keys-summary").textContent = `${shown} key${state.keys.length === 1 ? "" : "s"} loaded` +
    (state.nextCursor ? "; more available" : "");
  for (const button of document.querySelectorAll("button.sort")) {
    const th = button.parentElement;
    if (button.dataset.sort === state.sort.column) {
      th.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
    } else th.removeAttribute("aria-sort");
  }
  updateSelection();
}

function updateSelection() {
  const ids = new Set(state.keys.map((k) => k.id));
  for (const id of [...state.selected]) if (!ids.has(id)) state.selected.delete(id);
  const count = state.selected.size;
  const button = $("delete-selected");
  button.disabled = count === 0;
  button.textContent = count ? `Delete (${count})` : "Delete";
  const visible = visibleKeys();
  const all = $("select-all");
  const chosen = visible.filter((k) => state.selected.has(k.id)).length;
  all.checked = visible.length > 0 && chosen === visible.length;
  all.indeterminate = chosen > 0 && chosen < visible.length;
}

// -- keys: create and edit ------------------------------------------------------------------------

function keyType() {
  return document.querySelector("input[name=key-type]:checked").value;
}

function renderScopeOptions() {
  const box = $("scope-options");
  clear(box);
  const scopes = [...new Set(state.routes.filter((r) => !r.public).flatMap((r) => r.scopes))].sort();
  if (!scopes.length) {
    box.append(el("p", { className: "hint" }, "No route asks for a scope."));
    return;
  }
  for (const scope of scopes) {
    const routes = state.routes.filter((r) => r.scopes.includes(scope)).map((r) => r.prefix);
    box.append(el("label", { className: "chip-check", title: `Used by ${routes.join(", ")}` },
      el("input", { type: "checkbox", value: scope, name: "scope" }), scope));
  }
}

function renderAccountOptions() {
  const select = $("key-account");
  clear(select);
  select.append(el("option", { value: "" }, "Choose an account…"));
  let usable = 0;
  for (const account of state.accounts) {
    const reason = !account.api_access ? "no API access" : "";
    const note = account.enabled ? "" : " (disabled)";
    select.append(el("option", { value: account.id, disabled: Boolean(reason) },
      reason ? `${account.name} — ${reason}` : `${account.name}${note}`));
    if (!reason) usable += 1;
  }
  const filter = $("filter-account").value;
  const preferred = state.accountsById.get(filter);
  select.value = preferred && preferred.api_access ? filter : "";
  $("key-account-hint").textContent = usable
    ? "Accounts without API access cannot hold keys; grant it in Accounts."
    : "No account holds API access yet: create one in Accounts first.";
}

function syncExpiry() {
  const preset = $("key-expiry-preset");
  const custom = preset.value === "custom";
  $("key-expiry").hidden = !custom;
  const hmac = !state.editing && keyType() === "hmac";
  preset.options[0].disabled = hmac || Boolean(state.editing && state.editing.type === "hmac");
  if (preset.value === "" && preset.options[0].disabled) preset.value = "90d";
  $("key-expiry-hint").textContent = hmac || (state.editing && state.editing.type === "hmac")
    ? "HMAC keys need an expiry." : "";
}

function openCreate() {
  state.editing = null;
  const form = $("key-form");
  form.reset();
  form.classList.add("creating");
  form.classList.remove("editing");
  $("key-dialog-title").textContent = "Create key";
  $("key-save").textContent = "Save";
  renderAccountOptions();
  renderScopeOptions();
  $("key-expiry-preset").value = "90d";
  syncExpiry();
  fillLimits("key", null);
  clearMarks($("key-dialog"));
  showError($("key-error"), "");
  $("key-dialog").showModal();
  $("key-account").focus();
}

function openEdit(key) {
  state.editing = key;
  const form = $("key-form");
  form.reset();
  form.classList.add("editing");
  form.classList.remove("creating");
  $("key-dialog-title").textContent = `Edit key`;
  $("key-save").textContent = "Save changes";
  const facts = [
    ["ID", key.id], ["Type", TYPE_NAMES[key.type] || key.type],
    ["Account", `${accountName(key.account_id)} (${key.account_id})`],
    ["Scopes", key.scopes.join(", ") || "none"], ["Created", exactTime(key.created_at)],
    ["Last used", key.last_used_at ? exactTime(key.last_used_at) : "never"],
    ["Secret", key.masked_secret],
  ];
  if (key.previous_secret_valid_until) {
    facts.push(["Old secret valid until", exactTime(key.previous_secret_valid_until)]);
  }
  const list = $("key-readonly");
  clear(list);
  for (const [name, value] of facts) list.append(el("dt", {}, name), el("dd", {}, value));
  $("key-expiry-preset").value = key.expires_at ? "custom" : "";
  $("key-expiry").value = toLocalInput(key.expires_at);
  $("key-description").value = key.description;
  fillLimits("key", key);
  syncExpiry();
  clearMarks($("key-dialog"));
  showError($("key-error"), "");
  $("key-dialog").showModal();
  $("key-expiry-preset").focus();
  loadKeyUsage(key);
}

// -- keys: quotas and usage, in the edit dialog ------------------------------------------------------

const PERIODS = { day: "today", month: "this month" };

function quotaLine(q) {
  const [limit, period] = q.quota.split("/");
  const total = Number(limit);
  const when = period ? PERIODS[period] || `this ${period}` : "in all (never refills)";
  const whose = q.policy === "account-quota" ? "Account quota" : "Key quota";
  const text = `${q.remaining.toLocaleString()} of ${total.toLocaleString()} left ${when}`;
  const reset = q.resets_at ? `, resets ${shortTime(q.resets_at)} (${relative(q.resets_at)})` : "";
  return el("li", { dataset: { policy: q.policy, remaining: String(q.remaining) },
    className: q.remaining === 0 ? "exhausted" : "" },
    el("span", { className: "quota-who" }, `${whose} ${q.quota}: `), text + reset,
    el("span", { className: "meter", "aria-hidden": "true" },
      el("span", { className: `meter-fill p${Math.round((10 * q.remaining) / Math.max(total, 1))}` })));
}

async function loadKeyUsage(key) {
  const quotas = $("key-quotas");
  const box = $("key-usage");
  clear(quotas);
  clear(box);
  box.setAttribute("aria-busy", "true");
  box.append(el("p", { className: "muted" }, "Loading usage…"));
  const base = `/admin/keys/${encodeURIComponent(key.id)}`;
  const [detail, usage] = await Promise.all([
    call(() => api("GET", base)),
    call(() => api("GET", `${base}/usage?days=7&step=hour`)),
  ]);
  if (state.editing !== key) return; // the dialog moved on
  box.setAttribute("aria-busy", "false");
  clear(box);
  if (detail) {
    for (const q of detail.quotas || []) quotas.append(quotaLine(q));
    if (!(detail.quotas || []).length) quotas.append(el("li", { className: "muted" }, "No quota applies to this key."));
  }
  if (usage) renderUsage(box, usage.usage);
  else box.append(el("p", { className: "muted" }, "Usage could not be read."));
}

function expiryFields() {
  const preset = $("key-expiry-preset").value;
  if (preset === "") return { expires_at: null };
  if (preset === "custom") {
    const at = fromLocalInput($("key-expiry").value);
    if (!at) throw new Error("Choose the expiry date and time.");
    return { expires_at: at };
  }
  return { expires_in: preset };
}

async function saveKey(event) {
  event.preventDefault();
  const errorNode = $("key-error");
  showError(errorNode, "");
  let expiry;
  try {
    expiry = expiryFields();
  } catch (err) {
    showError(errorNode, err.message);
    return;
  }
  const description = $("key-description").value.trim();
  clearMarks($("key-dialog"));
  let limits;
  try {
    limits = limitFields("key", { nulls: Boolean(state.editing) });
  } catch (err) {
    showError(errorNode, err.message);
    markField(errorNode, "burst");
    return;
  }
  $("key-save").disabled = true;
  try {
    if (state.editing) {
      const body = { description, ...changedLimits(limits, state.editing) };
      if ("expires_in" in expiry) {
        const days = Number.parseInt(expiry.expires_in, 10);
        body.expires_at = new Date(Date.now() + days * 86400000).toISOString().replace(/\.\d{3}Z$/, "Z");
      } else body.expires_at = expiry.expires_at;
      const updated = await call(() => api("PATCH", `/admin/keys/${encodeURIComponent(state.editing.id)}`, body), errorNode);
      if (!updated) return;
      $("key-dialog").close();
      toast(`Key ${updated.id} saved.`);
      await loadKeys();
      return;
    }
    const account = $("key-account").value;
    if (!account) {
      showError(errorNode, "Choose an account.");
      return;
    }
    const scopes = [...document.querySelectorAll("#scope-options input:checked")].map((i) => i.value);
    for (const extra of $("key-scopes-extra").value.split(/[\s,]+/)) {
      if (extra && !scopes.includes(extra)) scopes.push(extra);
    }
    const body = { account_id: account, type: keyType(), description, ...limits };
    if (scopes.length) body.scopes = scopes;
    if (expiry.expires_in) body.expires_in = expiry.expires_in;
    else if (expiry.expires_at) body.expires_at = expiry.expires_at;
    else if (body.type === "hmac") {
      showError(errorNode, "HMAC keys need an expiry.");
      return;
    }
    const created = await call(() => api("POST", "/admin/keys", body), errorNode);
    if (!created) return;
    $("key-dialog").close();
    showSecret(created, "Key created");
    await loadAccounts();
    await loadKeys();
  } finally {
    $("key-save").disabled = false;
  }
}

async function reissue() {
  const key = state.editing;
  if (!key) return;
  const grace = $("reissue-grace").value;
  const errorNode = $("key-error");
  const body = grace ? { grace } : {};
  const reissued = await call(() => api("POST", `/admin/keys/${encodeURIComponent(key.id)}/reissue`, body), errorNode);
  if (!reissued) return;
  $("key-dialog").close();
  showSecret(reissued, "Secret reissued");
  await loadKeys();
}

// -- the secret, once ------------------------------------------------------------------------------

function proxyBase() {
  const port = state.proxyPort || 8080;
  return `${location.protocol}//${location.hostname}:${port}`;
}

function exampleRoute(key) {
  const usable = state.routes.filter((r) => !r.public && r.auth.includes(key.type === "hmac" ? "hmac" : "api_key"));
  const matching = usable.find((r) => r.scopes.every((s) => key.scopes.some((k) => scopeCovers(k, s))));
  const route = matching || usable[0];
  const prefix = route ? route.prefix : "";
  return `${proxyBase()}${prefix === "/" ? "" : prefix}/`;
}

function scopeCovers(granted, needed) {
  if (granted === "*" || granted === needed) return true;
  return granted.endsWith(".*") && needed.startsWith(granted.slice(0, -1));
}

function showSecret(key, title) {
  $("secret-dialog-title").textContent = title;
  const hmac = key.type === "hmac";
  $("secret-id-label").textContent = hmac ? "Token (key ID)" : "Key ID";
  $("secret-id").textContent = key.id;
  $("secret-value").textContent = key.secret;
  const url = exampleRoute(key);
  if (hmac) {
    $("secret-example-label").textContent = "Signed request (gateway sign prints a ready curl command)";
    $("secret-example").textContent =
      `gateway sign --key-id ${shellQuote(key.id)} --secret ${shellQuote(key.secret)} GET ${shellQuote(url)} --curl`;
  } else {
    $("secret-example-label").textContent = "Example request";
    $("secret-example").textContent = `curl -H ${shellQuote(`Authorization: Api-Key ${key.secret}`)} ${shellQuote(url)}`;
  }
  $("secret-dialog").showModal();
  $("secret-done").focus();
}

function closeSecret() {
  for (const id of ["secret-id", "secret-value", "secret-example"]) $(id).textContent = "";
  $("secret-dialog").close();
}

async function copy(button) {
  const text = $(button.dataset.copy).textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch (err) {
    const range = document.createRange();
    range.selectNodeContents($(button.dataset.copy));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    toast("Selected: press Ctrl+C (⌘C) to copy.");
    return;
  }
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = label; }, 1500);
}

// -- delete ------------------------------------------------------------------------------------------

function openDelete() {
  if (!state.selected.size) return;
  const list = $("delete-list");
  clear(list);
  const byId = new Map(state.keys.map((k) => [k.id, k]));
  for (const id of state.selected) {
    const key = byId.get(id);
    list.append(el("li", {}, el("code", {}, id),
      key ? ` — ${TYPE_NAMES[key.type] || key.type}, ${accountName(key.account_id)}` : ""));
  }
  const count = state.selected.size;
  $("delete-dialog-title").textContent = `Delete ${count} key${count === 1 ? "" : "s"}?`;
  $("delete-confirm").textContent = `Delete ${count} key${count === 1 ? "" : "s"}`;
  showError($("delete-error"), "");
  $("delete-dialog").showModal();
  $("delete-dialog").querySelector("[data-close]").focus();
}

async function confirmDelete() {
  const ids = [...state.selected];
  $("delete-confirm").disabled = true;
  try {
    const result = await call(() => api("POST", "/admin/keys/delete", { ids }), $("delete-error"));
    if (!result) return;
    $("delete-dialog").close();
    toast(`Deleted ${result.deleted.length} key${result.deleted.length === 1 ? "" : "s"}.`);
    state.selected.clear();
    await loadAccounts();
    await loadKeys();
  } finally {
    $("delete-confirm").disabled = false;
  }
}

// -- wiring --------------------------------------------------------------------------------------

function wire() {
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", async () => {
      showView(tab.dataset.view);
      if (tab.dataset.view === "accounts") await loadAccounts();
      else await loadKeys();
    });
  }
  $("create-key").addEventListener("click", openCreate);
  $("delete-selected").addEventListener("click", openDelete);
  $("delete-confirm").addEventListener("click", confirmDelete);
  $("refresh-keys").addEventListener("click", async () => { await loadAccounts(); await loadKeys(); });
  $("load-more").addEventListener("click", () => loadKeys(true));
  $("filter-account").addEventListener("change", () => loadKeys());
  $("filter-type").addEventListener("change", renderKeys);
  $("select-all").addEventListener("change", (e) => {
    for (const key of visibleKeys()) {
      if (e.target.checked) state.selected.add(key.id);
      else state.selected.delete(key.id);
    }
    renderKeys();
  });
  for (const button of document.querySelectorAll("button.sort")) {
    button.addEventListener("click", () => {
      const column = button.dataset.sort;
      state.sort = { column, dir: state.sort.column === column ? -state.sort.dir : 1 };
      renderKeys();
    });
  }
  $("key-form").addEventListener("submit", saveKey);
  $("key-expiry-preset").addEventListener("change", () => {
    syncExpiry();
    if ($("key-expiry-preset").value === "custom") $("key-expiry").focus();
  });
  for (const radio of document.querySelectorAll("input[name=key-type]")) {
    radio.addEventListener("change", syncExpiry);
  }
  $("reissue").addEventListener("click", reissue);
  $("secret-done").addEventListener("click", closeSecret);
  $("secret-dialog").addEventListener("cancel", (e) => { e.preventDefault(); });
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", () => copy(button));
  }
  for (const button of document.querySelectorAll("[data-close]")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
  $("account-form").addEventListener("submit", createAccount);
  $("limits-form").addEventListener("submit", saveLimits);
  $("limits-dialog").addEventListener("close", () => { state.limitsOf = null; });
  // Relative "last used" times stay current.
  setInterval(() => { if (state.view === "keys" && !document.querySelector("dialog[open]")) renderKeys(); }, 60000);
}

wire();
if (token()) start();
else signOut("");
