// The REST client: the session's tokens (sessionStorage, so they die with the tab), JSON calls with the bearer
// header, refresh before the access token expires and once more on a 401, and errors as readable messages.

const STORAGE_KEY = "mediaserver.session";
const API = "/api/v1";
// Refresh this long before the access token expires (or at 80 % of its life when that is shorter).
const REFRESH_MARGIN_MS = 60_000;

export class ApiError extends Error {
  constructor(status, code, message, details = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

let tokens = load();
let refreshing = null; // one refresh at a time: a refresh token works once, a second use revokes the session
let refreshTimer = null;
const endListeners = new Set();
const tokenListeners = new Set();

function load() {
  try {
    const raw = sessionStorage.getItem(STORAGE_KEY);
    const parsed = raw ? JSON.parse(raw) : null;
    return parsed && parsed.access_token && parsed.refresh_token ? parsed : null;
  } catch {
    return null;
  }
}

function store(pair) {
  tokens = {
    access_token: pair.access_token,
    refresh_token: pair.refresh_token,
    expires_at: Date.now() + pair.expires_in * 1000,
    lifetime_ms: pair.expires_in * 1000,
  };
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify(tokens));
  schedule();
  for (const listener of tokenListeners) listener(tokens.access_token);
}

function forget() {
  tokens = null;
  sessionStorage.removeItem(STORAGE_KEY);
  clearTimeout(refreshTimer);
  refreshTimer = null;
}

function schedule() {
  clearTimeout(refreshTimer);
  if (!tokens) return;
  const margin = Math.min(REFRESH_MARGIN_MS, (tokens.lifetime_ms || 0) * 0.2);
  const due = Math.max(0, tokens.expires_at - margin - Date.now());
  refreshTimer = setTimeout(() => {
    refresh().catch(() => {
      // refresh() ends the session itself when the server refuses; a network failure retries soon
    });
  }, due);
}

/** The access token now, or null when logged out. */
export function accessToken() {
  return tokens ? tokens.access_token : null;
}

export function loggedIn() {
  return tokens !== null;
}

/** `callback(reason)` when the session ends (logout, refused refresh). */
export function onSessionEnd(callback) {
  endListeners.add(callback);
  return () => endListeners.delete(callback);
}

/** `callback(accessToken)` after every login and refresh. */
export function onTokens(callback) {
  tokenListeners.add(callback);
  return () => tokenListeners.delete(callback);
}

function endSession(reason) {
  const had = tokens !== null;
  forget();
  if (had) for (const listener of endListeners) listener(reason);
}

/** Readable text for any error thrown by this module (or anything else). */
export function describe(error) {
  if (error instanceof ApiError) {
    let text = error.message;
    if (Array.isArray(error.details) && error.details.length) {
      const parts = error.details
        .slice(0, 5)
        .map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".") || "request"}: ${d.msg}`);
      text += ` (${parts.join("; ")})`;
    }
    return text;
  }
  if (error && error.message) return error.message;
  return String(error);
}

async function errorFrom(response) {
  let code = `http_${response.status}`;
  let message = `${response.status} ${response.statusText || "error"}`.trim();
  let details = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      details = body.error.details || null;
    }
  } catch {
    // not JSON (a proxy's error page): keep the status line
  }
  if (response.status === 429 && response.headers.get("Retry-After")) {
    message += ` (try again in ${response.headers.get("Retry-After")} s)`;
  }
  return new ApiError(response.status, code, message, details);
}

async function send(url, options) {
  try {
    return await fetch(url, options);
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new ApiError(0, "network", "Cannot reach the server: check the connection and try again.");
  }
}

function buildUrl(path, query) {
  const url = new URL(API + path, location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, String(value));
  }
  return url.pathname + url.search;
}

/** Exchange the refresh token for a new pair; ends the session when the server refuses it. */
export function refresh() {
  if (refreshing) return refreshing;
  if (!tokens) return Promise.reject(new ApiError(401, "logged_out", "You are not logged in."));
  const current = tokens.refresh_token;
  refreshing = (async () => {
    try {
      const response = await send(API + "/auth/refresh", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: current }),
      });
      if (!response.ok) {
        const error = await errorFrom(response);
        if (response.status === 400 || response.status === 401 || response.status === 422) {
          endSession("Your session has ended: please log in again.");
        }
        throw error;
      }
      store(await response.json());
      return tokens.access_token;
    } catch (error) {
      if (error instanceof ApiError && error.code === "network" && tokens) {
        // Try again shortly; the access token may still be good for a while.
        clearTimeout(refreshTimer);
        refreshTimer = setTimeout(() => refresh().catch(() => {}), 5000);
      }
      throw error;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** A request with the bearer token; on a 401 the token is refreshed and the request sent once more. */
export async function request(path, { method = "GET", body, query, signal, headers = {} } = {}) {
  if (!tokens) throw new ApiError(401, "logged_out", "You are not logged in.");
  if (tokens.expires_at <= Date.now() + 1000) await refresh();
  const url = buildUrl(path, query);
  const attempt = () => {
    const options = { method, signal, headers: { ...headers, Authorization: `Bearer ${accessToken()}` } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return send(url, options);
  };
  let response = await attempt();
  if (response.status === 401 && tokens) {
    await refresh();
    response = await attempt();
    if (response.status === 401) endSession("Your session has ended: please log in again.");
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

/** JSON answer (null for 204). */
export async function api(path, options = {}) {
  const response = await request(path, options);
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** A binary answer (pictures, exports) as a Blob. */
export async function apiBlob(path, options = {}) {
  const response = await request(path, options);
  return response.blob();
}

/** Every item of a paged list route (limit/offset/total). */
export async function apiAll(path, query = {}, pageSize = 500) {
  const items = [];
  for (let offset = 0; ; offset += pageSize) {
    const page = await api(path, { query: { ...query, limit: pageSize, offset } });
    items.push(...page.items);
    if (page.items.length < pageSize || items.length >= page.total) return items;
  }
}

export async function login(username, password) {
  const response = await send(API + "/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password }),
  });
  if (!response.ok) throw await errorFrom(response);
  store(await response.json());
}

export async function logout() {
  const current = tokens;
  if (current) {
    try {
      await send(API + "/auth/logout", {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${current.access_token}` },
        body: JSON.stringify({ refresh_token: current.refresh_token }),
      });
    } catch {
      // logged out locally all the same
    }
  }
  endSession("You are logged out.");
}

// A session restored from sessionStorage (a reload) gets its refresh timer back.
schedule();
