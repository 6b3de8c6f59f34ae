// Live updates: one WebSocket to /api/v1/ws per tab. The access token goes in the first message (never in the
// URL, which proxies and logs keep); then room "all" is joined. After a drop it reconnects with back-off and
// joins again with `since` = the last event id seen, so nothing is missed; a "resync" answer (or a first join)
// tells the pages to reload their data over REST.

import { accessToken, onTokens, refresh } from "./api.js";

const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30_000;
const PING_MS = 25_000;
// Close codes: 1008 = policy violation (the server refused the token).
const POLICY_VIOLATION = 1008;

class LiveSocket {
  constructor() {
    this.socket = null;
    this.state = "closed"; // closed | connecting | open
    this.lastEventId = null;
    this.backoff = BACKOFF_MIN_MS;
    this.retryTimer = null;
    this.pingTimer = null;
    this.running = false;
    this.joinedOnce = false;
    this.handlers = new Map(); // event name (or "*", "resync", "state", "welcome") -> Set of functions
    this.policyFailures = 0;
    this.resuming = false;
  }

  /** Subscribe to an event name ("camera-status" ...), "*" for every event, "resync", "state", "welcome". */
  on(name, handler) {
    if (!this.handlers.has(name)) this.handlers.set(name, new Set());
    this.handlers.get(name).add(handler);
    return () => this.handlers.get(name).delete(handler);
  }

  emit(name, payload) {
    for (const handler of [...(this.handlers.get(name) || [])]) {
      try {
        handler(payload);
      } catch (error) {
        console.error(`live handler for ${name} failed`, error);
      }
    }
  }

  setState(state) {
    this.state = state;
    this.emit("state", state);
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.connect();
  }

  stop() {
    this.running = false;
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    this.lastEventId = null;
    this.joinedOnce = false;
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.close(1000, "logout");
    }
    this.setState("closed");
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  connect() {
    if (!this.running) return;
    const token = accessToken();
    if (!token) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let socket;
    try {
      // Batched: the events of one server tick come as one message (fewer writes for the server and the tab).
      socket = new WebSocket(`${scheme}//${location.host}/api/v1/ws?batch=1`);
    } catch (error) {
      this.retry();
      return;
    }
    this.socket = socket;
    this.setState("connecting");
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify({ type: "auth", token: accessToken() }));
    });
    socket.addEventListener("message", (event) => {
      if (socket !== this.socket) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.receive(message);
    });
    socket.addEventListener("close", (event) => {
      if (socket !== this.socket) return;
      this.socket = null;
      clearInterval(this.pingTimer);
      if (!this.running) return;
      this.setState("closed");
      if (event.code === POLICY_VIOLATION) {
        // The token was refused (expired meanwhile?): refresh it once before trying again.
        this.policyFailures += 1;
        refresh()
          .catch(() => null)
          .then(() => this.retry());
        return;
      }
      this.retry();
    });
  }

  retry() {
    if (!this.running) return;
    clearTimeout(this.retryTimer);
    // Jittered so that many tabs do not come back in step after a server restart.
    const delay = this.backoff * (0.75 + Math.random() * 0.5);
    this.backoff = Math.min(BACKOFF_MAX_MS, this.backoff * 2);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  receive(message) {
    switch (message.type) {
      case "welcome": {
        this.backoff = BACKOFF_MIN_MS;
        this.policyFailures = 0;
        const join = { type: "join-room", room: "all" };
        this.resuming = this.lastEventId !== null;
        if (this.resuming) join.since = this.lastEventId;
        this.send(join);
        // Nothing seen yet: resume a later reconnect from where the server stood at this welcome.
        if (this.lastEventId === null && typeof message.last_event_id === "number") {
          this.lastEventId = message.last_event_id;
        }
        clearInterval(this.pingTimer);
        this.pingTimer = setInterval(() => this.send({ type: "ping" }), PING_MS);
        this.emit("welcome", message);
        break;
      }
      case "joined":
        this.setState("open");
        if (!this.joinedOnce || !this.resuming) {
          // Data loaded before this join may have missed events: reload once, from here on events suffice.
          this.emit("resync", { room: message.room, first: !this.joinedOnce });
        }
        this.joinedOnce = true;
        break;
      case "resync":
        this.emit("resync", { room: message.room, first: false });
        break;
      case "batch":
        // Several events in one frame (servers may group them): the same as one at a time, in order.
        for (const event of message.events || []) this.receive(event);
        break;
      case "event":
        if (typeof message.id === "number") {
          if (this.lastEventId !== null && message.id <= this.lastEventId) return; // replayed twice
          this.lastEventId = message.id;
        }
        this.emit(message.event, message);
        this.emit("*", message);
        break;
      case "error":
        this.emit("error", message);
        break;
      default:
        this.emit(message.type, message);
    }
  }
}

export const live = new LiveSocket();
// A refreshed access token is handed to the open connection too, so the server checks the caller afresh.
onTokens((token) => {
  if (live.state === "open") live.send({ type: "auth", token });
});
// For tests and debugging in the console: state and last event id, read-only use.
window.dashboardLive = live;
