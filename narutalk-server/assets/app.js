// The chat page: the views, the session list, the conversation and the composer.
//
// Everything the user or the server wrote goes into the page as text (`textContent`),
// never as HTML.
//
// The DOM's ids and `data-*` attributes are this module's interface: the browser tests
// drive the page by them and nothing else (tests/api/page.rs checks the page carries
// them). A conversation merges three sources by message id: the REST pages (the last one,
// then older ones), the socket's replay (`after=` the last stored message shown) and its
// live frames. A streaming reply is an element keyed by its future message id, replaced
// in place by the stored message. A socket opened without `after` (nothing shown yet)
// fetches the last REST page once open, and puts what it has that the socket did not bring
// before what the socket brought: those messages were stored before the socket joined.

import * as api from "./api.js";
import { ChatSocket } from "./socket.js";
import { currentLanguage, setLanguage, t, translatePage } from "./text.js";

const $ = (selector, root = document) => root.querySelector(selector);

const views = { auth: $("#auth-view"), chat: $("#chat-view") };
const loginForm = $("#login-form");
const registerForm = $("#register-form");
const newSessionForm = $("#new-session-form");
const renameForm = $("#rename-form");
const sessionList = $("#session-list");
const filterCategory = $("#filter-category");
const filterArchived = $("#filter-archived");
const messages = $("#messages");
const scroller = $("#scroller");
const composer = $("#composer");
const input = $("#composer-input");
const notice = $("#notice");
const connectionState = $("#connection-state");
const confirmDialog = $("#confirm-dialog");

/** What the page knows. */
const state = {
  user: null,
  /** The loaded session list items, by id (with `is_active` when the filter tells it). */
  sessions: new Map(),
  sessionsNext: null,
  sessionsGeneration: 0,
  /** The open session: `{id, title, category, is_active}`. */
  current: null,
  /** The lowest page of the open session's messages shown (1: nothing older). */
  oldestPage: 1,
  socket: null,
  /** Message ids received on the socket since it opened without `after`. */
  liveIds: null,
  /** The text sent on the socket and not yet seen stored (put back if refused). */
  pendingText: null,
  /**
   * A pending text given back to the composer because the connection dropped before it
   * was seen stored: if the resume replay brings it after all, it leaves the composer.
   */
  givenBack: null,
  /** The last message posted through REST: a retry of the same text reuses its key. */
  lastPost: null,
  noticeTimer: null,
};

// ---------------------------------------------------------------------------------------
// Notices and errors

/** An error already shown to the user (such as a session found deleted). */
class Handled extends Error {}

function showNotice(kind, text, retryAfter) {
  clearTimeout(state.noticeTimer);
  notice.dataset.kind = kind;
  $("#notice-text").textContent = text;
  if (retryAfter === undefined) {
    delete notice.dataset.retryAfter;
  } else {
    notice.dataset.retryAfter = String(retryAfter);
    state.noticeTimer = setTimeout(clearNotice, retryAfter * 1000);
  }
  notice.hidden = false;
}

function clearNotice() {
  clearTimeout(state.noticeTimer);
  notice.dataset.kind = "";
  delete notice.dataset.retryAfter;
  $("#notice-text").textContent = "";
  notice.hidden = true;
}

function showThrottled(seconds) {
  const wait = Math.max(1, Math.ceil(Number(seconds) || 1));
  showNotice("throttled", t("throttled", wait), wait);
}

/** The `detail` of an error body, or its messages joined. */
function describe(body) {
  if (!body || typeof body !== "object") return "";
  if (typeof body.detail === "string") return body.detail;
  return Object.values(body)
    .flat()
    .filter((value) => typeof value === "string")
    .join(" ");
}

/**
 * Shows what went wrong. Field errors go into `form` when there is one; everything else
 * goes to the notice. Returns nothing; a logout was already handled by `api`.
 */
function report(error, form) {
  if (error instanceof api.LoggedOut || error instanceof Handled) return;
  if (error instanceof api.NetworkError) {
    showNotice("error", t("networkError"));
    return;
  }
  if (!(error instanceof api.ApiError)) {
    console.error(error);
    showNotice("error", t("serverError"));
    return;
  }
  if (error.status === 429) {
    showThrottled(error.retryAfter);
  } else if (error.status === 400 && form) {
    showFieldErrors(form, error.body);
  } else if (error.status === 503) {
    showNotice("error", t("unavailable"));
  } else if (error.status >= 500) {
    showNotice("error", t("serverError"));
  } else if (form) {
    formError(form, describe(error.body));
  } else {
    showNotice("error", describe(error.body) || t("serverError"));
  }
}

function clearErrors(form) {
  for (const element of form.querySelectorAll("[data-error-for], [data-role=form-error]")) {
    element.textContent = "";
  }
  for (const field of form.querySelectorAll("[aria-invalid]")) {
    field.removeAttribute("aria-invalid");
  }
}

function formError(form, text) {
  $("[data-role=form-error]", form).textContent = text;
}

function showFieldErrors(form, body) {
  clearErrors(form);
  if (!body || typeof body !== "object") {
    formError(form, t("serverError"));
    return;
  }
  const general = [];
  for (const [field, value] of Object.entries(body)) {
    const text = Array.isArray(value) ? value.join(" ") : String(value);
    const slot = field === "detail" || field === "non_field_errors"
      ? null
      : form.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
    if (slot) {
      slot.textContent = text;
      const control = form.elements.namedItem(field);
      if (control && control.setAttribute) control.setAttribute("aria-invalid", "true");
    } else {
      general.push(text);
    }
  }
  formError(form, general.join(" "));
  const invalid = form.querySelector("[aria-invalid=true]");
  if (invalid) invalid.focus();
}

/** Runs a form's action with its submit button disabled; errors are shown in it. */
async function submitting(form, action) {
  const button = form.querySelector("[type=submit]");
  button.disabled = true;
  clearErrors(form);
  try {
    await action();
  } catch (error) {
    report(error, form);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------
// Views and logging in

function showView(name) {
  views.auth.hidden = name !== "auth";
  views.chat.hidden = name !== "chat";
  connectionState.hidden = name !== "chat";
}

function showAuth(kind) {
  closeSession();
  state.user = null;
  state.sessions.clear();
  sessionList.replaceChildren();
  showView("auth");
  showLoginForm();
  if (kind === "logged-out") showNotice("logged-out", t("loggedOut"));
}

function showLoginForm() {
  registerForm.hidden = true;
  loginForm.hidden = false;
}

function enterChat(user) {
  state.user = user;
  $("#current-user").textContent = user.username;
  loginForm.reset();
  registerForm.reset();
  if (notice.dataset.kind === "logged-out") clearNotice();
  showView("chat");
  setConnection("idle");
  loadSessions();
}

api.onLoggedOut(() => {
  if (state.user !== null) showAuth("logged-out");
});

loginForm.addEventListener("submit", (event) => {
  event.preventDefault();
  submitting(loginForm, async () => {
    const data = new FormData(loginForm);
    enterChat(await api.login(String(data.get("email")), String(data.get("password"))));
  });
});

registerForm.addEventListener("submit", (event) => {
  event.preventDefault();
  submitting(registerForm, async () => {
    const data = new FormData(registerForm);
    const fields = {};
    for (const name of ["username", "email", "password", "password_confirm", "role", "department"]) {
      fields[name] = String(data.get(name) ?? "");
    }
    await api.register(fields);
    enterChat(await api.login(fields.email, fields.password));
  });
});

$("#show-register").addEventListener("click", () => {
  loginForm.hidden = true;
  registerForm.hidden = false;
  registerForm.elements.namedItem("username").focus();
});

$("#show-login").addEventListener("click", () => {
  showLoginForm();
  loginForm.elements.namedItem("email").focus();
});

$("#logout").addEventListener("click", async () => {
  closeSession();
  try {
    await api.logout();
  } catch (error) {
    report(error);
  }
  state.user = null;
  showAuth();
});

// Another tab logged out (the stored refresh token is gone), or logged in.
window.addEventListener("storage", (event) => {
  if (event.key !== api.REFRESH_KEY && event.key !== null) return;
  if (!api.hasStoredLogin()) {
    api.forgetAccess();
    if (state.user !== null) showAuth("logged-out");
  } else if (state.user === null && !views.auth.hidden) {
    resume();
  }
});

/** Picks up a stored login (this tab's after a reload, or another tab's). */
async function resume() {
  try {
    enterChat(await api.call("GET", "/api/auth/profile/"));
  } catch (error) {
    if (error instanceof api.LoggedOut) {
      showAuth("logged-out");
    } else {
      showAuth();
      report(error);
    }
  }
}

// ---------------------------------------------------------------------------------------
// The session list

function sessionsQuery() {
  const query = new URLSearchParams();
  if (filterCategory.value) query.set("category", filterCategory.value);
  if (filterArchived.value === "active") query.set("is_active", "true");
  if (filterArchived.value === "archived") query.set("is_active", "false");
  const text = query.toString();
  return `/api/chat/sessions/${text ? `?${text}` : ""}`;
}

/** The path and query of a link the API gave (its host is this server's). */
function localPath(link) {
  const url = new URL(link, location.href);
  return url.pathname + url.search;
}

async function loadSessions(more = false) {
  const generation = more ? state.sessionsGeneration : ++state.sessionsGeneration;
  const path = more ? localPath(state.sessionsNext) : sessionsQuery();
  const archived = { active: true, archived: false }[filterArchived.value];
  try {
    const page = await api.call("GET", path);
    if (generation !== state.sessionsGeneration) return;
    if (!more) {
      state.sessions.clear();
      sessionList.replaceChildren();
    }
    for (const item of page.results) {
      item.is_active = archived;
      if (state.sessions.has(item.id)) continue;
      state.sessions.set(item.id, item);
      sessionList.append(sessionItem(item));
    }
    state.sessionsNext = page.next;
    $("#more-sessions").hidden = !page.next;
    $("#no-sessions").hidden = state.sessions.size > 0;
  } catch (error) {
    report(error);
  }
}

function sessionItem(item) {
  const li = document.createElement("li");
  li.dataset.sessionId = item.id;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "session-open";
  const title = document.createElement("span");
  title.className = "session-title";
  title.textContent = item.title;
  const category = document.createElement("span");
  category.className = `badge badge-${item.category}`;
  category.dataset.t = item.category;
  category.textContent = t(item.category);
  button.append(title, category);
  if (item.is_active === false) {
    const archived = document.createElement("span");
    archived.className = "badge badge-archived";
    archived.dataset.t = "archivedMark";
    archived.textContent = t("archivedMark");
    button.append(archived);
  }
  li.append(button);
  if (state.current && state.current.id === item.id) li.setAttribute("aria-current", "true");
  return li;
}

function listItem(id) {
  return sessionList.querySelector(`li[data-session-id="${CSS.escape(id)}"]`);
}

sessionList.addEventListener("click", (event) => {
  const li = event.target.closest("li[data-session-id]");
  if (li && (!state.current || state.current.id !== li.dataset.sessionId)) {
    openSession(li.dataset.sessionId);
  }
});

filterCategory.addEventListener("change", () => loadSessions());
filterArchived.addEventListener("change", () => loadSessions());
$("#more-sessions").addEventListener("click", () => loadSessions(true));

/** Moves the open session to the top of the list (its `updated_at` just moved). */
function bumpCurrent() {
  const li = state.current && listItem(state.current.id);
  if (li && sessionList.firstElementChild !== li) sessionList.prepend(li);
}

/** A session that is gone (deleted here or elsewhere) leaves the list and the view. */
function sessionGone(id, kind) {
  const li = listItem(id);
  if (li) li.remove();
  state.sessions.delete(id);
  $("#no-sessions").hidden = state.sessions.size > 0;
  if (state.current && state.current.id === id) closeSession();
  if (kind === "session-deleted") showNotice("session-deleted", t("sessionDeleted"));
}

$("#new-session").addEventListener("click", () => {
  const opening = newSessionForm.hidden;
  newSessionForm.hidden = !opening;
  $("#new-session").setAttribute("aria-expanded", String(opening));
  if (opening) newSessionForm.elements.namedItem("title").focus();
});

function closeNewSessionForm() {
  newSessionForm.reset();
  clearErrors(newSessionForm);
  newSessionForm.hidden = true;
  $("#new-session").setAttribute("aria-expanded", "false");
}

$("#new-session-cancel").addEventListener("click", closeNewSessionForm);

newSessionForm.addEventListener("submit", (event) => {
  event.preventDefault();
  submitting(newSessionForm, async () => {
    const data = new FormData(newSessionForm);
    const created = await api.call("POST", "/api/chat/sessions/", {
      title: String(data.get("title") ?? ""),
      category: String(data.get("category") ?? "general"),
    });
    closeNewSessionForm();
    // A new session is active: make sure the list shows it.
    if (filterArchived.value === "archived") filterArchived.value = "active";
    if (filterCategory.value && filterCategory.value !== created.category) filterCategory.value = "";
    await loadSessions();
    openSession(created.id, created);
  });
});

// ---------------------------------------------------------------------------------------
// The open session

function setConnection(name) {
  connectionState.dataset.state = name;
  const key = {
    connected: "stateConnected",
    connecting: "stateConnecting",
    offline: "stateOffline",
    idle: "stateIdle",
  }[name];
  const text = $(".state-text", connectionState);
  text.dataset.t = key;
  text.textContent = t(key);
}

function closeSession() {
  if (state.socket) state.socket.stop();
  state.socket = null;
  state.current = null;
  state.pendingText = null;
  state.givenBack = null;
  state.liveIds = null;
  for (const li of sessionList.querySelectorAll("[aria-current]")) li.removeAttribute("aria-current");
  messages.replaceChildren();
  renameForm.hidden = true;
  $("#session-view").hidden = true;
  $("#no-session").hidden = false;
  setConnection("idle");
}

function showSessionHeader() {
  const current = state.current;
  $("#session-title").textContent = current.title;
  const category = $("#session-category");
  category.dataset.t = current.category;
  category.textContent = t(current.category);
  category.className = `badge badge-${current.category}`;
  const archive = $("#archive-session");
  archive.dataset.t = current.is_active ? "archive" : "unarchive";
  archive.textContent = t(archive.dataset.t);
}

async function openSession(id, detail) {
  closeSession();
  const item = state.sessions.get(id);
  state.current = { id, title: item ? item.title : "", category: item ? item.category : "general", is_active: item ? item.is_active : undefined };
  const li = listItem(id);
  if (li) li.setAttribute("aria-current", "true");
  $("#no-session").hidden = true;
  $("#session-view").hidden = false;
  setConnection("connecting");
  const still = () => state.current && state.current.id === id;
  try {
    // The list does not say whether a session is archived: the detail does.
    const known = detail ?? (state.current.is_active === undefined
      ? await api.call("GET", `/api/chat/sessions/${id}/`)
      : null);
    if (!still()) return;
    if (known) Object.assign(state.current, {
      title: known.title,
      category: known.category,
      is_active: known.is_active,
    });
    showSessionHeader();
    const page = await api.call("GET", `/api/chat/sessions/${id}/messages/?page=last`);
    if (!still()) return;
    state.oldestPage = pageNumber(page.previous) + 1;
    for (const message of page.results) upsert(message);
    updateLoadOlder();
    scrollToEnd();
    startSocket(id);
    if (page.results.length < 10 && state.oldestPage > 1) await loadOlder();
  } catch (error) {
    if (!still()) return;
    if (error instanceof api.ApiError && error.status === 404) {
      sessionGone(id, "session-deleted");
    } else {
      report(error);
    }
  }
  if (still()) input.focus();
}

/** The page number of a `previous` link (0 when there is none). */
function pageNumber(link) {
  if (!link) return 0;
  const page = new URL(link, location.href).searchParams.get("page");
  return page ? Number(page) : 1;
}

function updateLoadOlder() {
  const button = $("#load-older");
  button.hidden = state.oldestPage <= 1;
  button.disabled = false;
}

async function loadOlder() {
  const id = state.current && state.current.id;
  if (!id || state.oldestPage <= 1) return;
  const button = $("#load-older");
  button.disabled = true;
  try {
    const page = await api.call("GET", `/api/chat/sessions/${id}/messages/?page=${state.oldestPage - 1}`);
    if (!state.current || state.current.id !== id) return;
    const height = scroller.scrollHeight;
    const first = messages.firstElementChild;
    for (const message of page.results) {
      if (!messageItem(message.id)) messages.insertBefore(renderMessage(message), first);
    }
    state.oldestPage -= 1;
    // Keep what the reader was looking at in place.
    scroller.scrollTop += scroller.scrollHeight - height;
  } catch (error) {
    report(error);
  } finally {
    updateLoadOlder();
  }
}

$("#load-older").addEventListener("click", loadOlder);

$("#rename-session").addEventListener("click", () => {
  renameForm.hidden = !renameForm.hidden;
  if (!renameForm.hidden) {
    const title = renameForm.elements.namedItem("title");
    title.value = state.current.title;
    title.select();
    title.focus();
  }
});

$("#rename-cancel").addEventListener("click", () => {
  clearErrors(renameForm);
  renameForm.hidden = true;
});

renameForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const id = state.current.id;
  submitting(renameForm, async () => {
    const title = String(new FormData(renameForm).get("title") ?? "");
    const updated = await sessionCall("PATCH", id, { title });
    applyDetail(updated);
    renameForm.hidden = true;
    $("#rename-session").focus();
  });
});

$("#archive-session").addEventListener("click", async () => {
  const id = state.current.id;
  try {
    applyDetail(await sessionCall("PATCH", id, { is_active: !state.current.is_active }));
    await loadSessions();
  } catch (error) {
    report(error);
  }
});

$("#delete-session").addEventListener("click", () => confirmDialog.showModal());
$("#confirm-no").addEventListener("click", () => confirmDialog.close());
$("#confirm-yes").addEventListener("click", async () => {
  confirmDialog.close();
  const id = state.current && state.current.id;
  if (!id) return;
  // This page's own socket would be told "session deleted": close it first.
  if (state.socket) state.socket.stop();
  state.socket = null;
  try {
    await sessionCall("DELETE", id);
    sessionGone(id);
  } catch (error) {
    report(error);
    if (state.current && state.current.id === id) startSocket(id);
  }
});

/** A call on one session: a 404 means it was deleted elsewhere. */
async function sessionCall(method, id, body) {
  try {
    return await api.call(method, `/api/chat/sessions/${id}/`, body);
  } catch (error) {
    if (error instanceof api.ApiError && error.status === 404) {
      sessionGone(id, "session-deleted");
      throw new Handled("the session is gone");
    }
    throw error;
  }
}

function applyDetail(detail) {
  if (!state.current || state.current.id !== detail.id) return;
  Object.assign(state.current, {
    title: detail.title,
    category: detail.category,
    is_active: detail.is_active,
  });
  showSessionHeader();
  const item = state.sessions.get(detail.id);
  if (item) {
    Object.assign(item, { title: detail.title, category: detail.category, is_active: detail.is_active });
    const li = listItem(detail.id);
    if (li) li.replaceWith(sessionItem(item));
  }
}

// ---------------------------------------------------------------------------------------
// Messages

const SENDER_KEYS = { user: "you", ai: "assistant", system: "system" };

function messageItem(id) {
  return messages.querySelector(`li[data-message-id="${CSS.escape(id)}"]`);
}

function timeText(timestamp) {
  const date = new Date(timestamp);
  if (Number.isNaN(date.getTime())) return "";
  return new Intl.DateTimeFormat(currentLanguage(), { hour: "2-digit", minute: "2-digit" }).format(date);
}

/** The `li.message` of a stored message (`{id, content, sender, message_type, timestamp}`). */
function renderMessage(message, streaming = false) {
  const li = document.createElement("li");
  li.className = "message";
  li.dataset.messageId = message.id;
  li.dataset.sender = message.sender;
  li.dataset.messageType = message.message_type;
  const meta = document.createElement("div");
  meta.className = "message-meta";
  const who = document.createElement("span");
  who.className = "message-sender";
  who.dataset.t = SENDER_KEYS[message.sender] ?? "system";
  who.textContent = t(who.dataset.t);
  meta.append(who);
  if (message.message_type === "error") {
    const mark = document.createElement("span");
    mark.className = "message-mark";
    mark.dataset.t = "errorMark";
    mark.textContent = t("errorMark");
    meta.prepend(mark);
  }
  if (streaming) {
    li.dataset.streaming = "true";
    li.setAttribute("aria-busy", "true");
    const typing = document.createElement("span");
    typing.className = "message-typing";
    typing.dataset.t = "streaming";
    typing.textContent = t("streaming");
    meta.append(typing);
  } else if (message.timestamp) {
    const time = document.createElement("time");
    time.dateTime = message.timestamp;
    time.textContent = timeText(message.timestamp);
    meta.append(time);
  }
  const text = document.createElement("div");
  text.className = "message-text";
  text.textContent = message.content;
  li.append(meta, text);
  return li;
}

function nearEnd() {
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
}

function scrollToEnd() {
  scroller.scrollTop = scroller.scrollHeight;
}

/** Shows a stored message once: a streaming reply with its id is replaced in place. */
function upsert(message, before = null) {
  const existing = messageItem(message.id);
  if (existing && existing.dataset.streaming !== "true") return;
  const follow = nearEnd();
  const li = renderMessage(message);
  if (existing) {
    existing.replaceWith(li);
  } else {
    messages.insertBefore(li, before);
  }
  if (follow) scrollToEnd();
}

function onDelta(frame) {
  const existing = messageItem(frame.message_id);
  if (existing && existing.dataset.streaming !== "true") return;
  const follow = nearEnd();
  if (existing) {
    $(".message-text", existing).textContent += frame.delta;
  } else {
    messages.append(renderMessage({
      id: frame.message_id,
      content: frame.delta,
      sender: "ai",
      message_type: "text",
    }, true));
  }
  if (follow) scrollToEnd();
}

/** The id of the last stored message shown (not a streaming one). */
function lastStoredId() {
  const stored = messages.querySelectorAll("li.message:not([data-streaming])");
  return stored.length ? stored[stored.length - 1].dataset.messageId : null;
}

function onFrame(frame) {
  if (frame.type === "chat_message") {
    const message = {
      id: frame.message_id,
      content: frame.message,
      sender: frame.sender,
      message_type: frame.message_type,
      timestamp: frame.timestamp,
    };
    if (state.liveIds) state.liveIds.add(message.id);
    upsert(message);
    if (message.sender === "user" && message.content === state.pendingText) state.pendingText = null;
    if (message.sender === "user" && message.content === state.givenBack) {
      // Stored after all: the copy given back is not for sending again.
      if (input.value === state.givenBack) {
        input.value = "";
        clearNotice();
      }
      state.givenBack = null;
    }
    bumpCurrent();
  } else if (frame.type === "ai_delta") {
    onDelta(frame);
  } else if (frame.type === "error") {
    if (state.pendingText !== null && !input.value) input.value = state.pendingText;
    state.pendingText = null;
    if (Number.isInteger(frame.retry_after)) {
      showThrottled(frame.retry_after);
    } else {
      showNotice("error", `${t("sendFailed")} ${frame.error ?? ""}`.trim());
    }
  }
}

/**
 * Once a socket opened without `after` (nothing was shown yet), fetches what was stored
 * before it opened: those messages come before every one the socket brought.
 */
async function fillBeforeLive(id) {
  try {
    const page = await api.call("GET", `/api/chat/sessions/${id}/messages/?page=last`);
    if (!state.current || state.current.id !== id || !state.liveIds) return;
    const firstLive = [...messages.children].find((li) => state.liveIds.has(li.dataset.messageId)) ?? null;
    for (const message of page.results) upsert(message, firstLive);
    if (state.oldestPage === 1) state.oldestPage = pageNumber(page.previous) + 1;
    updateLoadOlder();
  } catch (error) {
    report(error);
  }
}

function startSocket(id) {
  const socket = new ChatSocket({
    sessionId: id,
    token: api.freshAccess,
    lastId: lastStoredId,
    async check() {
      try {
        await api.call("GET", `/api/chat/sessions/${id}/messages/?page=1`);
      } catch (error) {
        if (error instanceof api.LoggedOut) error.fatal = "logged-out";
        if (error instanceof api.ApiError && error.status === 404) error.fatal = "session-deleted";
        throw error;
      }
    },
    onOpen(resumed) {
      if (resumed) {
        state.liveIds = null;
      } else {
        state.liveIds = new Set();
        fillBeforeLive(id);
      }
    },
    onFrame,
    onState(name) {
      if (state.socket !== socket) return;
      setConnection(name);
      if (name !== "connected") giveBackPending();
    },
    onFatal(kind) {
      if (state.socket !== socket) return;
      if (kind === "logged-out") {
        api.forgetAccess();
        showAuth("logged-out");
      } else if (kind === "session-deleted") {
        sessionGone(id, "session-deleted");
      }
    },
  });
  state.socket = socket;
  socket.start();
}

// ---------------------------------------------------------------------------------------
// The composer

function randomKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

/**
 * The connection dropped while a text sent on it was not yet seen stored: it may never
 * have reached the server. The text goes back to the composer (when that is empty) with a
 * notice, so nothing typed is lost; sending it again is the user's choice, and if the
 * resume replay shows it stored after all, `onFrame` takes it out again (never twice).
 */
function giveBackPending() {
  if (state.pendingText === null) return;
  if (!input.value) {
    input.value = state.pendingText;
    state.givenBack = state.pendingText;
    showNotice("error", t("sendInterrupted"));
  }
  state.pendingText = null;
}

async function sendMessage() {
  const text = input.value;
  if (!text.trim() || !state.current) return;
  const id = state.current.id;
  if (state.socket && state.socket.send({ message: text })) {
    state.pendingText = text;
    input.value = "";
    return;
  }
  // Not connected: the REST API takes it, with a key so that sending the same text again
  // after a lost answer does not store it twice.
  if (!state.lastPost || state.lastPost.text !== text || state.lastPost.session !== id) {
    state.lastPost = { text, session: id, key: randomKey() };
  }
  const send = $("#send");
  send.disabled = true;
  try {
    const stored = await api.call("POST", `/api/chat/sessions/${id}/messages/`, { content: text }, {
      "Idempotency-Key": state.lastPost.key,
    });
    state.lastPost = null;
    if (input.value === text) input.value = "";
    if (state.current && state.current.id === id) {
      upsert(stored);
      if (stored.reply) upsert(stored.reply);
      bumpCurrent();
    }
  } catch (error) {
    if (error instanceof api.ApiError && error.status === 404) {
      sessionGone(id, "session-deleted");
    } else {
      report(error);
    }
  } finally {
    send.disabled = false;
  }
}

composer.addEventListener("submit", (event) => {
  event.preventDefault();
  sendMessage();
});

input.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || event.shiftKey) return;
  // An Enter that ends an IME composition (Korean, Japanese, ...) only ends it.
  if (event.isComposing || event.keyCode === 229) return;
  event.preventDefault();
  sendMessage();
});

// ---------------------------------------------------------------------------------------
// The rest of the page

$("#notice-dismiss").addEventListener("click", clearNotice);

document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  if (!newSessionForm.hidden && newSessionForm.contains(document.activeElement)) {
    closeNewSessionForm();
    $("#new-session").focus();
  } else if (!renameForm.hidden && renameForm.contains(document.activeElement)) {
    renameForm.hidden = true;
    $("#rename-session").focus();
  }
});

$("#language").addEventListener("click", () => {
  setLanguage(currentLanguage() === "ko" ? "en" : "ko");
  translatePage();
  for (const time of messages.querySelectorAll("time")) time.textContent = timeText(time.dateTime);
  if (notice.dataset.kind === "throttled") showThrottled(Number(notice.dataset.retryAfter));
});

translatePage();
if (api.hasStoredLogin()) {
  resume();
} else {
  showAuth();
}
