// Type declarations of rowcast.js, the browser client. `rowcast types` prints the
// events of the watched tables on top of these (`RowcastEvent<table, names, row>`).

/** An event of the wire protocol (`{"type": "event", ...}`). */
export interface RowcastEvent<
  Table extends string | null = string | null,
  Name extends string = string,
  Row = Record<string, unknown>,
> {
  type: "event";
  /** Gap-free position in the log; resume after it with `since`. */
  pos: number;
  /** The name the table's rules gave the change (`booking.accepted`), or `row.*`. */
  event: Name;
  /** The app's table (`schema.table` outside public); null for an app's own event. */
  table: Table;
  op: "INSERT" | "UPDATE" | "DELETE" | "TRUNCATE" | "PUBLISH";
  /** Every topic the event is published on; for `row.left`, the topics the row left. */
  topics: string[];
  /** Time of the change, RFC 3339 in UTC with milliseconds. */
  ts: string;
  /** The new row (the deleted one for DELETE), minus excluded columns; absent for TRUNCATE;
   *  for `row.left` (an UPDATE moved the row off the topics followed) its primary key only. */
  data?: Row;
  /** UPDATE only: the previous values of the changed columns. */
  old?: Partial<Row>;
}

/** Connection states reported by the `status` handler. */
export type RowcastStatus = "offline" | "connecting" | "live" | "reconnecting" | "polling";

/** The transports the client tries, in order. */
export type RowcastTransport = "ws" | "sse" | "poll";

export interface RowcastOptions {
  /** Base URL of the rowcast server (default: this page's origin). */
  url?: string;
  /** Topics to follow (`bookings`, `booking:42`, `user:7`). */
  topics: string[];
  /** A JWT, or a function returning one (called before every connect). */
  token?: string | (() => string | Promise<string>);
  /** Resume after this position (default: live only). */
  since?: number;
  /** Order of transports to try (default: ws, sse, poll). */
  transports?: RowcastTransport[];
  /** Milliseconds between HTTP polls (default 2000). */
  pollInterval?: number;
  /** Keep the current rows in `rows`, from the server's `/snapshot` or from a first screen
   *  read with `rowcast.head()`. */
  state?: {
    /** Read the first screen from `/snapshot` (again after a `reset`) and go on from its head. */
    snapshot?: boolean;
    /** The first screen (pass the head it was read with as `since`). */
    initial?: { table: string; data: Record<string, unknown> }[];
    /** A row's key (default: its `id`). */
    key?: (table: string, row: Record<string, unknown>) => unknown;
  };
}

/** What the `change` handler receives when `state` keeps the rows. */
export interface RowcastChange {
  /** Null for SNAPSHOT: every table's rows were read again. */
  table: string | null;
  /** LEFT: the row moved off the topics followed (`row.left`), and is gone from `rows`. */
  op: "INSERT" | "UPDATE" | "DELETE" | "TRUNCATE" | "LEFT" | "SNAPSHOT";
  /** The row's key (null for TRUNCATE and SNAPSHOT). */
  key: unknown;
  /** The row now, or null when it is gone. */
  row: Record<string, unknown> | null;
  /** All rows of the table now, by key (null for SNAPSHOT). */
  rows: Map<unknown, Record<string, unknown>> | null;
}

export class Rowcast<E extends RowcastEvent = RowcastEvent> {
  constructor(options: RowcastOptions);
  /** The last position delivered, or null before the first. */
  readonly lastPos: number | null;
  /** When the last event or status arrived, or null. */
  readonly lastUpdated: Date | null;
  readonly status: RowcastStatus;
  readonly transport: RowcastTransport | null;
  /** With `state`: table -> (key -> row), kept current by the events; else null. */
  readonly rows: Map<string, Map<unknown, Record<string, unknown>>> | null;
  /** One event name; returns a function that removes the handler. */
  on<N extends E["event"]>(name: N, handler: (event: Extract<E, { event: N }>) => void): () => void;
  /** Every event. */
  on(name: "*", handler: (event: E) => void): () => void;
  /** Connection status changes. */
  on(
    name: "status",
    handler: (status: { status: RowcastStatus; transport: RowcastTransport | null; lastPos: number | null }) => void,
  ): () => void;
  /** With `state`: a row changed (or a table was truncated). */
  on(name: "change", handler: (change: RowcastChange) => void): () => void;
  /** History was pruned past the position asked for: refetch state, then go on live. */
  on(name: "reset", handler: (reset: { type: "reset"; reason: string; head: number }) => void): () => void;
  /** Connects, and keeps reconnecting until stop(). */
  start(): this;
  /** Disconnects for good. */
  stop(): void;
}
