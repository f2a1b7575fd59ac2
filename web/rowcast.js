// rowcast.js: the browser client for rowcast. Zero dependencies, an ES module.
//
//   import { Rowcast } from "/rowcast.js";
//   const rc = new Rowcast({ topics: ["bookings", "user:7"], token: () => fetchToken() });
//   rc.on("booking.accepted", (event) => ...);   // one event name
//   rc.on("*", (event) => ...);                  // every event
//   rc.on("status", ({ status, transport }) => ...);
//   rc.on("reset", ({ head }) => ...);           // history was pruned: refetch state
//   rc.start();
//
// With `state` the client keeps `rc.rows` (table -> key -> row) current and reports every
// change to `rc.on("change", ...)`: `state: { snapshot: true }` reads the first screen from
// the server's /snapshot and continues from its head; `state: { initial }` starts from a
// first screen your backend read with `rowcast.head()` (pass that head as `since`).
//
// It connects over WebSocket, resumes after every disconnect with the last position it
// saw (so nothing is missed or doubled), reconnects with jittered exponential backoff,
// and falls back to Server-Sent Events and then to HTTP polling when WebSocket cannot
// be opened. The token goes in the query string (browsers cannot set headers on
// WebSocket or EventSource), so it may reach proxy logs: keep tokens short-lived.

const TRANSPORTS = ["ws", "sse", "poll"];

export class Rowcast {
  /**
   * @param {object} options
   * @param {string} [options.url] base URL of the rowcast server (default: this page's origin)
   * @param {string[]} options.topics topics to follow
   * @param {string|function(): (string|Promise<string>)} [options.token] a JWT, or a function returning one
   * @param {number} [options.since] resume after this position (default: live only)
   * @param {string[]} [options.transports] order of transports to try
   * @param {number} [options.pollInterval] milliseconds between HTTP polls
   * @param {object} [options.state] keep the current rows: `rows` maps each table to its rows by key
   * @param {boolean} [options.state.snapshot] start from the server's `/snapshot` of the topics (and
   *   read it again after a `reset`)
   * @param {{table: string, data: object}[]} [options.state.initial] the first screen the rows start from
   *   (read with `rowcast.head()` in one transaction; pass that head as `since`)
   * @param {function(string, object): *} [options.state.key] a row's key (default: its `id`)
   */
  constructor(options = {}) {
    this.url = (options.url || globalThis.location?.origin || "").replace(/\/$/, "");
    this.topics = [...(options.topics || [])];
    this.token = options.token;
    this.transports = options.transports || TRANSPORTS;
    this.pollInterval = options.pollInterval ?? 2000;
    this.lastPos = options.since ?? null;
    this.lastUpdated = null;
    this.status = "offline";
    this.transport = null;
    this._handlers = new Map();
    this._failures = 0;
    this._transportIndex = 0;
    this._stopped = true;
    this._conn = null;
    this._timer = null;
    /** With `state`: table -> (key -> row), kept current by the events. */
    this.rows = null;
    if (options.state) {
      this._key = options.state.key || ((table, row) => row.id);
      this._fromSnapshot = Boolean(options.state.snapshot);
      this._snapshotRead = false;
      this.rows = new Map();
      for (const { table, data } of options.state.initial || []) this._table(table).set(this._key(table, data), data);
    }
  }

  /** Registers a handler; returns a function that removes it. */
  on(name, handler) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(handler);
    return () => this._handlers.get(name)?.delete(handler);
  }

  /** Connects (and keeps reconnecting until stop()). */
  start() {
    if (!this._stopped) return this;
    this._stopped = false;
    this._connect();
    return this;
  }

  /** Disconnects for good. */
  stop() {
    this._stopped = true;
    clearTimeout(this._timer);
    this._close();
    this._setStatus("offline");
  }

  _emit(name, value) {
    for (const handler of this._handlers.get(name) || []) {
      try { handler(value); } catch (err) { console.error("rowcast handler failed", err); }
    }
  }

  _setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this._emit("status", { status, transport: this.transport, lastPos: this.lastPos });
  }

  async _token() {
    const t = typeof this.token === "function" ? await this.token() : this.token;
    return t || null;
  }

  _table(table) {
    if (!this.rows.has(table)) this.rows.set(table, new Map());
    return this.rows.get(table);
  }

  /** Applies a row event to `rows` and reports it to the `change` handlers. A `row.left`
   * (the row moved off every topic followed here; it carries only the key) drops it, and
   * reports op `LEFT`. */
  _keep(event) {
    if (!this.rows || event.table === null) return;
    const rows = this._table(event.table);
    if (event.op === "TRUNCATE") {
      rows.clear();
      this._emit("change", { table: event.table, op: event.op, key: null, row: null, rows });
      return;
    }
    if (!event.data) return;
    const key = this._key(event.table, event.data);
    const left = event.event === "row.left";
    const row = event.op === "DELETE" || left ? null : event.data;
    if (row === null) rows.delete(key); else rows.set(key, row);
    this._emit("change", { table: event.table, op: left ? "LEFT" : event.op, key, row, rows });
  }

  /** Reads the first screen from `/snapshot`, page by page, and continues from its head. */
  async _readSnapshot(token) {
    const rows = new Map();
    let head = null;
    let cursor = null;
    do {
      const query = this._query({ topics: this.topics.join(","), cursor, limit: 1000 });
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      const response = await fetch(`${this.url}/snapshot?${query}`, { headers });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw Object.assign(new Error(body.message || `snapshot: HTTP ${response.status}`), { body });
      }
      const page = await response.json();
      if (head === null) head = page.head;
      // Tables the server could not read for these topics: their rows are missing.
      if (page.skipped?.length) this._emit("error", { type: "error", code: "snapshot_skipped", skipped: page.skipped,
                                                     message: "some tables were not read for the snapshot" });
      for (const { table, data } of page.rows) {
        if (!rows.has(table)) rows.set(table, new Map());
        rows.get(table).set(this._key(table, data), data);
      }
      cursor = page.next;
    } while (cursor);
    this.rows = rows;
    this.lastPos = head;
    this._snapshotRead = true;
    this._emit("change", { table: null, op: "SNAPSHOT", key: null, row: null, rows: null });
  }

  _deliver(message) {
    if (message.type === "event") {
      if (this.lastPos !== null && message.pos <= this.lastPos) return;
      this.lastPos = message.pos;
      this.lastUpdated = new Date();
      this._keep(message);
      this._emit(message.event, message);
      this._emit("*", message);
    } else if (message.type === "reset") {
      this.lastPos = message.head;
      this._emit("reset", message);
      if (this._fromSnapshot) {
        // Events were pruned before they could be applied: read the screen again.
        this._snapshotRead = false;
        this._close();
        this._retry(true);
      }
    } else if (message.type === "error") {
      this._emit("error", message);
    } else if (message.type === "subscribed" && this.lastPos === null) {
      this.lastPos = message.head;
    }
  }

  async _connect() {
    if (this._stopped) return;
    this.transport = this.transports[this._transportIndex % this.transports.length];
    this._setStatus(this._failures === 0 && this.status === "offline" ? "connecting" : "reconnecting");
    let token;
    try {
      token = await this._token();
    } catch (err) {
      this._emit("error", { type: "error", code: "token", message: String(err) });
      return this._retry(false);
    }
    if (this._stopped) return;
    if (this._fromSnapshot && !this._snapshotRead) {
      try {
        await this._readSnapshot(token);
      } catch (err) {
        this._emit("error", { type: "error", code: err.body?.code || "snapshot", message: String(err.message || err) });
        return this._retry(false);
      }
      if (this._stopped) return;
    }
    const opened = () => {
      this._failures = 0;
      this._setStatus(this.transport === "poll" ? "polling" : "live");
    };
    if (this.transport === "ws") this._openWebSocket(token, opened);
    else if (this.transport === "sse") this._openEventSource(token, opened);
    else this._poll(token, opened);
  }

  _query(extra = {}) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(extra)) {
      if (value !== null && value !== undefined) params.set(key, String(value));
    }
    return params.toString();
  }

  _openWebSocket(token, opened) {
    const base = this.url.replace(/^http/, "ws");
    let ws;
    try {
      ws = new WebSocket(`${base}/ws?${this._query({ token })}`);
    } catch (err) {
      return this._retry(false);
    }
    let wasOpen = false;
    this._conn = { close: () => ws.close(1000) };
    ws.onopen = () => {
      wasOpen = true;
      const subscribe = { type: "subscribe", topics: this.topics };
      if (this.lastPos !== null) subscribe.since = this.lastPos;
      ws.send(JSON.stringify(subscribe));
      opened();
    };
    ws.onmessage = (msg) => this._deliver(JSON.parse(msg.data));
    ws.onclose = (msg) => {
      this._conn = null;
      if (msg.code === 4001 || msg.code === 4002) this._emit("expired", { code: msg.code, reason: msg.reason });
      this._retry(wasOpen);
    };
  }

  _openEventSource(token, opened) {
    // unnamed=1: every event arrives at onmessage, whatever name a table's rules gave it.
    const query = this._query({ topics: this.topics.join(","), since: this.lastPos, token, unnamed: 1 });
    let source;
    try {
      source = new EventSource(`${this.url}/sse?${query}`);
    } catch (err) {
      return this._retry(false);
    }
    let wasOpen = false;
    this._conn = { close: () => source.close() };
    const onEvent = (msg) => this._deliver(JSON.parse(msg.data));
    source.addEventListener("subscribed", onEvent);
    source.addEventListener("reset", onEvent);
    source.onmessage = onEvent;
    source.onopen = () => { wasOpen = true; opened(); };
    source.onerror = () => {
      // EventSource reconnects by itself with Last-Event-ID; take over only when it gave up.
      if (source.readyState === EventSource.CLOSED || !wasOpen) {
        source.close();
        this._conn = null;
        this._retry(wasOpen);
      } else {
        this._setStatus("reconnecting");
      }
    };
  }

  async _poll(token, opened) {
    let active = true;
    this._conn = { close: () => { active = false; } };
    while (active && !this._stopped) {
      try {
        // Without a position yet, the first poll starts live (the server answers its head).
        const query = this._query({ topics: this.topics.join(","), since: this.lastPos, limit: 500 });
        const headers = token ? { Authorization: `Bearer ${token}` } : {};
        const response = await fetch(`${this.url}/events?${query}`, { headers });
        if (response.status === 410) {
          this._deliver(await response.json());
          continue;
        }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const page = await response.json();
        opened();
        for (const event of page.events) this._deliver(event);
        if (this.lastPos === null || page.head > this.lastPos) this.lastPos = page.head;
        if (page.more) continue;
      } catch (err) {
        if (!active) return;
        this._conn = null;
        return this._retry(this.status === "polling");
      }
      await new Promise((resolve) => { this._timer = setTimeout(resolve, this.pollInterval); });
    }
  }

  _close() {
    if (this._conn) {
      const conn = this._conn;
      this._conn = null;
      conn.close();
    }
  }

  /** Schedules a reconnect; after repeated failures to open, tries the next transport. */
  _retry(wasOpen) {
    if (this._stopped) return;
    this._failures = wasOpen ? 1 : this._failures + 1;
    if (!wasOpen && this._failures >= 3 && this._transportIndex < this.transports.length - 1) {
      this._transportIndex += 1;
      this._failures = 1;
      // Go back to the preferred transport now and then.
      setTimeout(() => { this._transportIndex = 0; }, 60_000);
    }
    this._setStatus("reconnecting");
    const ceiling = Math.min(15_000, 500 * 2 ** Math.min(this._failures, 8));
    const delay = Math.random() * ceiling;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(), delay);
  }
}
