// The REST API as the page uses it: the tokens, refreshes coordinated across tabs, and
// errors turned into values the page can show.
//
// The access token lives in this module's memory only. The refresh token and the device
// token live in localStorage (`narutalk.refresh`, `narutalk.device`) so that every tab of
// the browser shares one login. A refresh token works once (the server treats a second use
// as theft and ends the whole login), so refreshes run under the Web Lock
// `narutalk-refresh`: inside it, a tab reads the stored token afresh, and when another tab
// has rotated it meanwhile, this tab adopts the new one instead of spending the old one.
//
// Inside the lock the refresh token is read from IndexedDB, not localStorage: a tab's
// localStorage is a cache that another tab's write reaches some time later, so the tab
// that takes the lock right after another tab rotated the token could still read the old
// one and spend it twice. An IndexedDB transaction completed before the lock is released
// is seen by the next holder. localStorage keeps a copy: it is what other tabs' `storage`
// events (login and logout elsewhere) come from, and what a tab checks at start.
//
// Why localStorage and not an HttpOnly cookie: a cookie would keep the refresh token out
// of reach of a script injected into the page, but the API is a bearer-token API (the
// refresh token travels in the JSON body), so the server would need a cookie mode and CSRF
// protection that the API does not have. What keeps localStorage defensible: the page's
// CSP allows scripts from the server only (no inline script, no eval, no other host,
// `frame-ancestors 'none'`) and the page writes user data only as text, so an injection
// has no way in; a stolen refresh token works once, and its use by a thief after the
// owner (or by the owner after the thief) is reuse, which ends the whole login, its access
// tokens and its sockets; logout revokes the login on the server, not only here. The
// device token only relaxes the login failure budget for this browser; it logs nobody in.

const REFRESH_KEY = "narutalk.refresh";
const DEVICE_KEY = "narutalk.device";
const LOCK_NAME = "narutalk-refresh";
/** An access token with less than this left is refreshed before a socket uses it. */
const EXPIRY_MARGIN_MS = 30_000;

/** An answer of the API other than success. */
export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super(`HTTP ${status}`);
    this.status = status;
    this.body = body;
    /** Whole seconds to wait, for a 429 (or a 503 that says so). */
    this.retryAfter = retryAfter;
  }
}

/** The login is over: the refresh token was revoked, reused or is missing. */
export class LoggedOut extends Error {}

/** The server could not be reached at all. */
export class NetworkError extends Error {}

export { REFRESH_KEY };

let access = null;
let lastRefresh = null;
let refreshing = null;
let loggedOutHandler = () => {};

/** Called once, with nothing, whenever this tab finds its login over. */
export function onLoggedOut(handler) {
  loggedOutHandler = handler;
}

/** True when a login is stored (this tab's or another tab's). */
export function hasStoredLogin() {
  return localStorage.getItem(REFRESH_KEY) !== null;
}

/** Forgets this tab's access token (another tab logged out). */
export function forgetAccess() {
  access = null;
  lastRefresh = null;
}

const DB_NAME = "narutalk";
const DB_STORE = "tokens";
let databaseOpening = null;

/** The page's IndexedDB database, or null where there is none (then localStorage alone). */
function database() {
  if (databaseOpening === null) {
    databaseOpening = new Promise((resolve) => {
      if (!window.indexedDB) {
        resolve(null);
        return;
      }
      const request = indexedDB.open(DB_NAME, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(DB_STORE);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => resolve(null);
      request.onblocked = () => resolve(null);
    });
  }
  return databaseOpening;
}

/** The stored refresh token (null: logged out), IndexedDB first. */
async function storedRefresh() {
  const db = await database();
  const kept = db === null
    ? undefined
    : await new Promise((resolve) => {
      const request = db.transaction(DB_STORE, "readonly").objectStore(DB_STORE).get(REFRESH_KEY);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => resolve(undefined);
    });
  // `undefined`: never written to IndexedDB (no database): localStorage says.
  return kept === undefined ? localStorage.getItem(REFRESH_KEY) : kept;
}

/** Stores the refresh token (null: forgets it); resolves once other tabs will see it. */
async function storeRefresh(token) {
  const db = await database();
  if (db !== null) {
    await new Promise((resolve) => {
      const transaction = db.transaction(DB_STORE, "readwrite");
      transaction.objectStore(DB_STORE).put(token, REFRESH_KEY);
      transaction.oncomplete = resolve;
      transaction.onerror = resolve;
      transaction.onabort = resolve;
    });
  }
  if (token === null) {
    localStorage.removeItem(REFRESH_KEY);
  } else {
    localStorage.setItem(REFRESH_KEY, token);
  }
}

/** Ends this browser's login: the stored token is forgotten and the page told. */
async function endLogin() {
  await storeRefresh(null);
  forgetAccess();
  loggedOutHandler();
  return new LoggedOut("logged out");
}

/** Runs `work` under the refresh lock (where the browser has the Web Locks API). */
function underLock(work) {
  if (navigator.locks && navigator.locks.request) {
    return navigator.locks.request(LOCK_NAME, work);
  }
  // Web Locks exist only in secure contexts (https, localhost, 127.0.0.1): elsewhere
  // tabs refresh without coordination.
  return work();
}

/** The seconds of a `Retry-After` header, or of the DRF throttle text. */
function retryAfterOf(response, body) {
  const header = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
  if (Number.isFinite(header) && header >= 0) return header;
  const detail = body && typeof body.detail === "string" ? body.detail : "";
  const match = /available in (\d+) second/.exec(detail);
  return match ? Number(match[1]) : undefined;
}

/** One HTTP exchange: `{status, body, retryAfter}`, or a NetworkError. */
async function exchange(method, path, { body, token, headers = {} } = {}) {
  const init = {
    method,
    headers: { Accept: "application/json", ...headers },
    cache: "no-store",
    credentials: "same-origin",
    redirect: "error",
  };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new NetworkError(String(error));
  }
  const text = await response.text().catch(() => "");
  let parsed = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = { detail: text.slice(0, 200) };
    }
  }
  return { status: response.status, body: parsed, retryAfter: retryAfterOf(response, parsed) };
}

function failure(answer) {
  return new ApiError(answer.status, answer.body, answer.retryAfter);
}

/** Gets a new access token with the stored refresh token, under the lock. */
async function refreshUnderLock() {
  const stored = await storedRefresh();
  if (stored === null) throw await endLogin();
  if (stored !== lastRefresh) {
    // Another tab refreshed (or logged in) since this tab last did: its token is the
    // live one; this tab still needs an access token of its own, so it refreshes with it.
    lastRefresh = stored;
  }
  const answer = await exchange("POST", "/api/auth/token/refresh/", { body: { refresh: stored } });
  if (answer.status === 200 && answer.body && answer.body.access && answer.body.refresh) {
    // Stored before the lock is released, so the next holder reads this token.
    await storeRefresh(answer.body.refresh);
    lastRefresh = answer.body.refresh;
    access = answer.body.access;
    return;
  }
  if (answer.status === 401) throw await endLogin();
  throw failure(answer);
}

/**
 * Refreshes the access token once for this tab, however many calls ask at the same
 * time. `failed` is the access token that was refused: when this tab has a newer one
 * already, nothing is done.
 */
export function refresh(failed) {
  if (failed !== undefined && access !== null && access !== failed) return Promise.resolve();
  if (refreshing === null) {
    refreshing = Promise.resolve(underLock(refreshUnderLock)).finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

function expiresSoon(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload));
    return typeof claims.exp !== "number" || claims.exp * 1000 - Date.now() < EXPIRY_MARGIN_MS;
  } catch {
    return true;
  }
}

/** An access token good for at least a little while (for the socket's handshake). */
export async function freshAccess() {
  if (access === null || expiresSoon(access)) await refresh(access ?? undefined);
  if (access === null) throw await underLock(endLogin);
  return access;
}

/**
 * An authenticated call: on a 401 the access token is refreshed once and the call
 * repeated; a second 401, or a refresh refused, ends the login. Resolves to the body.
 */
export async function call(method, path, body, headers) {
  if (access === null) await refresh();
  let used = access;
  let answer = await exchange(method, path, { body, token: used, headers });
  if (answer.status === 401) {
    await refresh(used);
    used = access;
    answer = await exchange(method, path, { body, token: used, headers });
    if (answer.status === 401) throw await underLock(endLogin);
  }
  if (answer.status >= 200 && answer.status < 300) return answer.body;
  throw failure(answer);
}

/** Logs in; stores the refresh and device tokens; resolves to the user object. */
export async function login(email, password) {
  const body = { email, password };
  const device = localStorage.getItem(DEVICE_KEY);
  if (device) body.device = device;
  const answer = await exchange("POST", "/api/auth/login/", { body });
  if (answer.status !== 200 || !answer.body || !answer.body.refresh) throw failure(answer);
  await underLock(async () => {
    await storeRefresh(answer.body.refresh);
    if (answer.body.device) localStorage.setItem(DEVICE_KEY, answer.body.device);
  });
  lastRefresh = answer.body.refresh;
  access = answer.body.access;
  return answer.body.user;
}

/** Registers an account (the caller logs in afterwards). */
export async function register(fields) {
  const answer = await exchange("POST", "/api/auth/register/", { body: fields });
  if (answer.status !== 201) throw failure(answer);
  return answer.body;
}

/**
 * Logs out: revokes the stored refresh token (and with it the whole login, in every tab)
 * and forgets it. The device token is kept: it is what lets this browser log in again
 * while someone else is guessing at the account's password.
 */
export async function logout() {
  let problem = null;
  await underLock(async () => {
    const stored = await storedRefresh();
    if (stored !== null) {
      try {
        const answer = await exchange("POST", "/api/auth/logout/", { body: { refresh: stored } });
        // 401: the token was already revoked or reused, so the login is over anyway.
        if (answer.status !== 205 && answer.status !== 401) problem = failure(answer);
      } catch (error) {
        problem = error;
      }
    }
    await storeRefresh(null);
    forgetAccess();
  });
  if (problem) throw problem;
}
