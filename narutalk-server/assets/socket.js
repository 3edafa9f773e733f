// The live view of one chat session: a WebSocket that reconnects with `after`, so that
// nothing stored while it was away is missed, and that tells the page its state.

/** Why a socket gave up for good. */
export const FATAL_REASONS = {
  "tokens revoked": "logged-out",
  "session deleted": "session-deleted",
};

const FIRST_DELAY_MS = 1000;
const LONGEST_DELAY_MS = 30_000;

/**
 * One session's socket.
 *
 * `options`:
 * - `sessionId`;
 * - `token()`: resolves to a fresh access token (or rejects when the login is over);
 * - `lastId()`: the id of the last stored message the page shows, or null;
 * - `check()`: after a handshake that failed, resolves when the session is still there
 *   and the login still good, and rejects otherwise (the browser does not say why a
 *   handshake failed);
 * - `onFrame(frame, resumed)`, `onOpen(resumed)`, `onState(state)` (`connecting`,
 *   `connected`, `offline`), `onFatal(kind, error)` (`logged-out`, `session-deleted`, or
 *   `error` with what `check` or `token` rejected with).
 */
export class ChatSocket {
  constructor(options) {
    this.options = options;
    this.ws = null;
    this.stopped = false;
    this.attempt = 0;
    this.failedOpens = 0;
    this.timer = null;
    this.onOnline = () => {
      if (this.timer !== null) {
        clearTimeout(this.timer);
        this.timer = null;
        this.connect();
      }
    };
    window.addEventListener("online", this.onOnline);
  }

  /** True while the socket is open. */
  get connected() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  start() {
    this.connect();
  }

  /** Sends a frame; false when the socket is not open. */
  send(frame) {
    if (!this.connected) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Closes the socket for good. */
  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.ws !== null) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000, "closed by the page");
    }
  }

  giveUp(kind, error) {
    this.stop();
    this.options.onFatal(kind, error);
  }

  async connect() {
    if (this.stopped) return;
    this.options.onState("connecting");
    let token;
    try {
      if (this.failedOpens > 0) await this.options.check();
      token = await this.options.token();
    } catch (error) {
      if (this.stopped) return;
      if (error && error.fatal) {
        this.giveUp(error.fatal, error);
      } else {
        this.retryLater();
      }
      return;
    }
    if (this.stopped) return;
    const after = this.options.lastId();
    const url = new URL(`/ws/chat/${encodeURIComponent(this.options.sessionId)}/`, location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", token);
    if (after) url.searchParams.set("after", after);
    const resumed = Boolean(after);
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      this.failedOpens += 1;
      this.retryLater();
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.addEventListener("open", () => {
      if (this.ws !== ws) return;
      opened = true;
      this.attempt = 0;
      this.failedOpens = 0;
      this.options.onState("connected");
      this.options.onOpen(resumed);
    });
    ws.addEventListener("message", (event) => {
      if (this.ws !== ws || typeof event.data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame && typeof frame === "object") this.options.onFrame(frame, resumed);
    });
    ws.addEventListener("close", (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      const fatal = event.code === 1008 ? FATAL_REASONS[event.reason] : undefined;
      if (fatal) {
        this.giveUp(fatal);
        return;
      }
      if (!opened) this.failedOpens += 1;
      this.retryLater();
    });
  }

  retryLater() {
    if (this.stopped) return;
    this.options.onState("offline");
    const base = Math.min(LONGEST_DELAY_MS, FIRST_DELAY_MS * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 10);
    // Between half and all of the delay, so that many pages do not come back at once.
    const delay = base / 2 + Math.random() * (base / 2);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, delay);
  }
}
