// The admin API, called with the admin token from sessionStorage as a Bearer header.
// The token never goes into a URL or a cookie.

const TOKEN_KEY = "gateway-admin-token";

export class ApiError extends Error {
  constructor(status, code, message, field = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field; // the field a 422 names ("rate: must be ..."), else null
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

export async function api(method, path, body, bearer = token()) {
  const headers = { Accept: "application/json" };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", "The gateway did not answer; is it running?");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const message = error.message || `${response.status} ${response.statusText}`;
    let field = typeof error.field === "string" ? error.field : null;
    if (!field && response.status === 422) {
      const named = /^([a-z_]+): /.exec(message);
      if (named) field = named[1];
    }
    throw new ApiError(response.status, error.code || "error", message, field);
  }
  return data;
}

// Every page of a cursor-paged listing (accounts are few; keys are paged in the view).
export async function all(path, maxPages = 50) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < maxPages; page += 1) {
    const sep = path.includes("?") ? "&" : "?";
    const url = cursor ? `${path}${sep}cursor=${encodeURIComponent(cursor)}` : path;
    const data = await api("GET", url);
    items.push(...data.items);
    cursor = data.next_cursor;
    if (!cursor) break;
  }
  return items;
}
