// The client: one WebSocket at a time, and the delivery contract of the
// Rust SDK (crates/sdk/src/task.rs) around it. It logs in, pings, numbers
// requests and matches answers by header seq, turns pushes, sync pages and
// its own acks into in-order `message` events through the Timeline,
// acknowledges what was delivered, persists the cursor, and reconnects with
// jittered backoff, syncing from the last delivered sequence and resending
// unanswered sends with their original client_msg_id.
//
// JavaScript runs one callback at a time, so the state below needs no
// locks: every WebSocket event and timer is handled to completion in turn.

import { Backoff } from "./backoff.js";
import { Emitter } from "./emitter.js";
import {
  BusyError,
  ClosedError,
  Code,
  ConnectionError,
  KickedError,
  ProtocolError,
  ServerError,
  SwitchboardError,
  TimeoutError,
  TokenError,
  TooLargeError,
  closeError,
  codeName,
  isAuthFailure,
  isRetryableCode,
  isTerminalKick,
} from "./errors.js";
import { type Packet, FrameError, decodeBinary, decodeJson, encodeBinary, encodeJson, packet } from "./frame.js";
import type * as pb from "./gen/switchboard_pb.js";
import { type CursorStorage, MemoryStorage } from "./storage.js";
import { type Entry, Offer, Timeline } from "./timeline.js";

/** The SDK's name and version, sent in `Login.client_version`. */
export const CLIENT_VERSION = "switchboard-ts/0.1.0";

/** How long an own message's sequence may sit past a hole before a sync fills it. */
const GAP_GRACE_MS = 500;
/** Longest wait before resending a request answered with a retryable error. */
const RETRY_MAX_MS = 10_000;
/** Keepalive intervals of silence before the connection is taken for dead, as the server does. */
const MISSED_PINGS = 3;
/** The protocol's default frame limit, until the LoginAck says otherwise. */
const DEFAULT_MAX_FRAME = 65_536;

/** The parts of the WebSocket API the client uses: the browser's, or the `ws` package's. */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor: `globalThis.WebSocket` in browsers, `WebSocket` from `ws` in Node.js 20. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

const OPEN = 1;

export interface ClientOptions {
  /** `ws://host:port/ws` or `wss://…`. */
  url: string;
  /** A login token (JWT from your business server). */
  token?: string;
  /**
   * Fetches a fresh token; called before every reconnect (and before the
   * first connect when `token` is not given). Tokens are checked at login
   * only, so an expired one fails the next reconnect without this.
   */
  getToken?: () => string | Promise<string>;
  /** Stable per installation; the server keeps this device's cursor under it. */
  deviceId: string;
  /** `web`, `mobile`, `desktop`, … (default `web`). */
  platform?: string;
  /** `binary` frames (default) or `json` text frames. */
  format?: "binary" | "json";
  /** The WebSocket constructor; default `globalThis.WebSocket`. Node.js 20 has none: pass `ws`'s. */
  WebSocket?: WebSocketConstructor;
  /** Where the cursor is persisted (default: in memory). */
  storage?: CursorStorage;
  /** The storage key (default `cursor:<deviceId>`). */
  cursorKey?: string;
  /** Reconnect backoff: floor and ceiling in ms (default 250 and 30,000), with full jitter. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  /** Time for the socket to open and the login to be answered (default 10,000 ms). */
  connectTimeoutMs?: number;
  /** Time a `send` or `report` waits for its ack across reconnects (default 60,000 ms; 0 = forever). */
  requestTimeoutMs?: number;
  /** Sends and reports waiting for their ack at once (default 1,024); past it `BusyError`. */
  maxPendingRequests?: number;
  /** Entries per sync page (default 0: the server's cap). */
  syncPage?: number;
  /** Called when an event listener throws (default `console.error`). */
  onListenerError?: (err: unknown) => void;
}

/** Who logged in and where the timeline stands (from the LoginAck). */
export interface LoginInfo {
  user: pb.User;
  timelineHead: bigint;
  /** The device's cursor on the server before this login. */
  cursor: bigint;
  keepaliveSecs: number;
  node: string;
}

/** The answer to a `send`: the message is stored. */
export interface SendReceipt {
  clientMsgId: string;
  msgId: bigint;
  /** The entry's sequence on the sender's own timeline. */
  seq: bigint;
  serverTimeMs: bigint;
  /** The server had it already (a resend). */
  duplicate: boolean;
}

/** The answer to a `report` (c2s): it is durable on the bus. */
export interface ReportReceipt {
  clientMsgId: string;
  msgId: bigint;
  duplicate: boolean;
}

export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface ClientEvents {
  /** One timeline entry: each once, in sequence order, no gaps (this device's own sends are skipped). */
  message: { seq: bigint; message: pb.Message };
  /** An online-only message (not stored, no sequence). */
  online: { message: pb.Message };
  /** The server kicked this connection; `terminal` ones end the client (no reconnect). */
  kick: { code: number; name: string; reason: string; terminal: boolean };
  /** Logged in (first connect and every reconnect). */
  connected: LoginInfo;
  /** Connection state changes; `error` says why it left `connected` or closed. */
  state: { state: ConnectionState; error?: SwitchboardError };
}

export interface SendOptions {
  /** Idempotency id (1–128 bytes); default a random UUID. Reuse it to retry the same message. */
  clientMsgId?: string;
  /** The app's label (default `text`). */
  type?: string;
}

type Wire = { kind: "request"; id: number } | { kind: "sync" } | { kind: "logout" };

/** A send or report waiting for its ack, kept across reconnects. */
interface Request {
  id: number;
  packet: Packet;
  clientMsgId: string;
  isC2c: boolean;
  resolve: (ack: pb.C2cAck | pb.C2sAck) => void;
  reject: (err: SwitchboardError) => void;
  /** Header seq on the current connection, once sent. */
  wire?: number;
  retryTimer?: ReturnType<typeof setTimeout>;
  timeout?: ReturnType<typeof setTimeout>;
  retries: Backoff;
}

/** Per-connection state. */
interface Session {
  ws: WebSocketLike;
  nextSeq: number;
  wire: Map<number, Wire>;
  maxFrame: number;
  keepaliveMs: number;
  lastRecv: number;
  pingTimer?: ReturnType<typeof setInterval>;
  gapTimer?: ReturnType<typeof setTimeout>;
  /** `since` of the outstanding sync page. */
  syncing: bigint | null;
  syncAgain: boolean;
  /** Highest push_ack sent on this connection. */
  acked: bigint;
  /** A duplicate arrived: acknowledge again so the server stops resending. */
  reack: boolean;
  /** Why the server is closing: a kick or fatal error frame read before the close. */
  ending?: SwitchboardError;
  logout?: { resolve: () => void; reject: (e: SwitchboardError) => void };
  closed: boolean;
}

/** A logged-in socket, with what it received before the session took it over. */
interface Established {
  ws: WebSocketLike;
  ack: pb.LoginAck;
  early: unknown[];
  closed?: { code: number; reason: string };
}

interface StoredCursor {
  user: string;
  seq: string;
}

export class Client {
  private readonly opts: Required<
    Pick<
      ClientOptions,
      | "platform"
      | "format"
      | "reconnectMinMs"
      | "reconnectMaxMs"
      | "connectTimeoutMs"
      | "requestTimeoutMs"
      | "maxPendingRequests"
      | "syncPage"
    >
  > &
    ClientOptions;
  private readonly WS: WebSocketConstructor;
  private readonly storage: CursorStorage;
  private readonly emitter = new Emitter<ClientEvents>();
  private readonly backoff: Backoff;
  private stateValue: ConnectionState = "idle";
  private session: Session | null = null;
  private timeline = new Timeline(0n, 1024);
  /** Highest sequence delivered to the application (or reached as our own). */
  private delivered = 0n;
  /** The user the delivered sequence belongs to (`app/uid`), once known. */
  private cursorUser: string | null = null;
  private persisted = 0n;
  private userValue: pb.User | null = null;
  private readonly requests = new Map<number, Request>();
  private nextRequest = 1;
  private syncWaiters: { resolve: () => void; reject: (e: SwitchboardError) => void }[] = [];
  private flushQueued = false;
  private reconnectTimer?: ReturnType<typeof setTimeout>;

  constructor(options: ClientOptions) {
    this.opts = {
      platform: "web",
      format: "binary",
      reconnectMinMs: 250,
      reconnectMaxMs: 30_000,
      connectTimeoutMs: 10_000,
      requestTimeoutMs: 60_000,
      maxPendingRequests: 1024,
      syncPage: 0,
      ...options,
    };
    const ws = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (ws === undefined) {
      throw new TypeError("no WebSocket in this environment: pass one (e.g. `import WebSocket from \"ws\"`)");
    }
    if (!options.deviceId) throw new TypeError("deviceId is required");
    this.WS = ws;
    this.storage = options.storage ?? new MemoryStorage();
    this.backoff = new Backoff(this.opts.reconnectMinMs, this.opts.reconnectMaxMs);
  }

  // ---- public API ----

  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends keyof ClientEvents>(event: K, listener: (e: ClientEvents[K]) => void): () => void {
    return this.emitter.on(event, listener);
  }

  off<K extends keyof ClientEvents>(event: K, listener: (e: ClientEvents[K]) => void): void {
    this.emitter.off(event, listener);
  }

  get state(): ConnectionState {
    return this.stateValue;
  }

  /** The logged-in user (after the first login). */
  get user(): pb.User | null {
    return this.userValue;
  }

  /** The highest sequence delivered to the application: the cursor. */
  get lastSeq(): bigint {
    return this.delivered;
  }

  /**
   * Loads the cursor, connects and logs in. Rejects (and the client is
   * closed) when the first login fails: a bad token is `ServerError` with
   * `Code.TOKEN_INVALID`; a network failure is `ConnectionError`. Once
   * connected, the client reconnects by itself until closed.
   */
  async connect(): Promise<LoginInfo> {
    if (this.stateValue !== "idle") throw new ClosedError(`connect() called in state ${this.stateValue}`);
    this.setState("connecting");
    try {
      await this.loadCursor();
      const token = await this.fetchToken(true);
      const established = await this.establish(token);
      if (this.isClosed()) {
        // close() was called while the login was on its way.
        safeClose(established.ws);
        throw new ClosedError();
      }
      return this.startSession(established);
    } catch (e) {
      const err = asSdkError(e);
      this.finish(err);
      throw err;
    }
  }

  /**
   * Sends a c2c message to `to`. Resolves once it is stored; a send that
   * was interrupted by a disconnect is resent with the same client_msg_id
   * after the reconnect, so it is stored once. Rejects with `ServerError`
   * for a refusal (e.g. `CROSS_APP_FORBIDDEN`, `INVALID_ARGUMENT`), `TimeoutError`
   * after `requestTimeoutMs`, `ClosedError` when the client closes first.
   */
  send(to: { app: string; uid: string }, body: string | Uint8Array, options: SendOptions = {}): Promise<SendReceipt> {
    const clientMsgId = options.clientMsgId ?? randomId();
    const p = packet("c2c", 0, {
      clientMsgId,
      to: { app: to.app, uid: to.uid },
      type: options.type ?? "text",
      body: toBytes(body),
    });
    return this.request(p, clientMsgId, true).then((a) => {
      const ack = a as pb.C2cAck;
      return {
        clientMsgId: ack.clientMsgId,
        msgId: ack.msgId,
        seq: ack.seq,
        serverTimeMs: ack.serverTimeMs,
        duplicate: ack.duplicate,
      };
    });
  }

  /** Sends a c2s report to the business servers (a topic `type` and a body). */
  report(type: string, body: string | Uint8Array, options: { clientMsgId?: string } = {}): Promise<ReportReceipt> {
    const clientMsgId = options.clientMsgId ?? randomId();
    const p = packet("c2s", 0, { clientMsgId, type, body: toBytes(body) });
    return this.request(p, clientMsgId, false).then((a) => {
      const ack = a as pb.C2sAck;
      return { clientMsgId: ack.clientMsgId, msgId: ack.msgId, duplicate: ack.duplicate };
    });
  }

  /** Syncs now; resolves when everything up to the timeline's head was delivered. */
  sync(): Promise<void> {
    if (this.stateValue === "closed") return Promise.reject(new ClosedError());
    return new Promise((resolve, reject) => {
      this.syncWaiters.push({ resolve, reject });
      if (this.session !== null) this.startSync(this.session);
    });
  }

  /** Logs out (the server ends the session) and closes the client. */
  async logout(): Promise<void> {
    const s = this.session;
    if (s === null) {
      this.finish();
      return;
    }
    await new Promise<void>((resolve, reject) => {
      s.logout = { resolve, reject };
      this.sendPacket(s, packet("logout", 0, {}), { kind: "logout" });
    });
  }

  /** Closes the connection and stops reconnecting; pending sends reject with `ClosedError`. */
  close(): void {
    this.finish();
  }

  // ---- connecting ----

  private cursorKey(): string {
    return this.opts.cursorKey ?? `cursor:${this.opts.deviceId}`;
  }

  private async loadCursor(): Promise<void> {
    let raw: string | null | undefined;
    try {
      raw = await this.storage.get(this.cursorKey());
    } catch (e) {
      this.listenerError(e);
      return;
    }
    if (!raw) return;
    try {
      const stored = JSON.parse(raw) as StoredCursor;
      const seq = BigInt(stored.seq);
      if (typeof stored.user === "string" && seq >= 0n) {
        this.cursorUser = stored.user;
        this.delivered = seq;
        this.persisted = seq;
        this.timeline = new Timeline(seq, 1024);
      }
    } catch {
      // A corrupt record: start from the server's cursor instead.
    }
  }

  private persistCursor(): void {
    if (this.delivered === this.persisted || this.cursorUser === null) return;
    this.persisted = this.delivered;
    const record: StoredCursor = { user: this.cursorUser, seq: this.delivered.toString() };
    try {
      const done = this.storage.set(this.cursorKey(), JSON.stringify(record));
      if (done instanceof Promise) done.catch((e) => this.listenerError(e));
    } catch (e) {
      this.listenerError(e);
    }
  }

  private async fetchToken(first: boolean): Promise<string> {
    if (first && this.opts.token !== undefined) return this.opts.token;
    if (this.opts.getToken !== undefined) {
      try {
        return await this.opts.getToken();
      } catch (e) {
        throw new TokenError(`getToken failed: ${String(e)}`);
      }
    }
    if (this.opts.token !== undefined) return this.opts.token;
    throw new TokenError("neither token nor getToken given");
  }

  /** Opens a socket and logs in; resolves with the socket and the LoginAck. */
  private establish(token: string): Promise<Established> {
    return new Promise((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new this.WS(this.opts.url);
      } catch (e) {
        reject(new ConnectionError(`cannot open ${this.opts.url}: ${String(e)}`));
        return;
      }
      ws.binaryType = "arraybuffer";
      let settled = false;
      // A kick or fatal error read before the close says why better than the close does.
      let ending: SwitchboardError | undefined;
      // Frames that follow the LoginAck before the session takes the socket
      // over (the \`ws\` package emits a whole TCP read's frames at once).
      const established: Established = { ws, ack: undefined as unknown as pb.LoginAck, early: [] };
      const done = (err: SwitchboardError | null, ack?: pb.LoginAck) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err !== null) {
          ws.onopen = ws.onmessage = ws.onerror = null;
          ws.onclose = null;
          safeClose(ws);
          reject(err);
        } else if (ack !== undefined) {
          established.ack = ack;
          ws.onmessage = (ev) => established.early.push(ev.data);
          ws.onclose = (ev) => {
            established.closed = { code: ev.code, reason: ev.reason };
          };
          resolve(established);
        }
      };
      const timer = setTimeout(() => done(new TimeoutError("login not answered in time")), this.opts.connectTimeoutMs);
      ws.onopen = () => {
        const login = packet("login", 1, {
          token,
          platform: this.opts.platform,
          deviceId: this.opts.deviceId,
          clientVersion: CLIENT_VERSION,
        });
        try {
          ws.send(this.encode(login));
        } catch (e) {
          done(new ConnectionError(`cannot send login: ${String(e)}`));
        }
      };
      ws.onmessage = (ev) => {
        let p: Packet | null;
        try {
          p = this.decode(ev.data, DEFAULT_MAX_FRAME);
        } catch (e) {
          done(asSdkError(e));
          return;
        }
        if (p === null) return;
        switch (p.cmd) {
          case "login_ack":
            done(null, p.body);
            return;
          case "error":
            ending = new ServerError(p.body.code, p.body.message);
            if (p.body.fatal || p.seq === 1) done(ending);
            return;
          case "kick":
            done(new KickedError(p.body.code, p.body.reason));
            return;
          default:
            return;
        }
      };
      ws.onerror = () => {
        // The close event follows with the code; wait for it.
      };
      ws.onclose = (ev) => done(ending ?? closeError(ev.code, ev.reason));
    });
  }

  private startSession({ ws, ack, early, closed }: Established): LoginInfo {
    const keepaliveMs = (ack.keepaliveSecs || 30) * 1000;
    const s: Session = {
      ws,
      // Seq 1 was the login.
      nextSeq: 2,
      wire: new Map(),
      maxFrame: ack.maxFrameBytes || DEFAULT_MAX_FRAME,
      keepaliveMs,
      lastRecv: Date.now(),
      syncing: null,
      syncAgain: false,
      acked: 0n,
      reack: false,
      closed: false,
    };
    this.session = s;
    ws.onmessage = (ev) => this.onMessage(s, ev.data);
    ws.onclose = (ev) => this.onClose(s, ev.code, ev.reason);
    ws.onerror = () => {};
    s.pingTimer = setInterval(() => this.onPingTimer(s), keepaliveMs);

    const user = ack.user ?? ({ app: "", uid: "" } as pb.User);
    const userKey = `${user.app}/${user.uid}`;
    if (this.cursorUser !== null && this.cursorUser !== userKey) {
      // The stored cursor belongs to someone else: this user's timeline starts over.
      this.delivered = 0n;
      this.persisted = 0n;
      this.timeline = new Timeline(0n, 1024);
    }
    this.cursorUser = userKey;
    this.userValue = user;
    this.backoff.reset();
    const info: LoginInfo = {
      user,
      timelineHead: ack.timelineHead,
      cursor: ack.cursor,
      keepaliveSecs: ack.keepaliveSecs,
      node: ack.node,
    };
    this.setState("connected");
    this.emit("connected", info);

    // Catch the server's cursor up with what was delivered, then sync and resend.
    if (this.delivered > ack.cursor) {
      s.acked = this.delivered;
      this.sendPacket(s, packet("push_ack", 0, { seq: this.delivered }));
    }
    this.startSync(s);
    for (const req of [...this.requests.values()]) {
      clearTimeout(req.retryTimer);
      req.retryTimer = undefined;
      req.wire = undefined;
      this.sendRequest(s, req);
    }
    for (const data of early) this.onMessage(s, data);
    if (closed !== undefined) this.onClose(s, closed.code, closed.reason);
    return info;
  }

  private scheduleReconnect(): void {
    if (this.stateValue === "closed") return;
    this.setState("reconnecting");
    const delay = this.backoff.next();
    const attempt = async () => {
      this.reconnectTimer = undefined;
      if (this.isClosed()) return;
      let token: string;
      try {
        token = await this.fetchToken(false);
      } catch (e) {
        this.listenerError(e);
        this.scheduleReconnect();
        return;
      }
      if (this.isClosed()) return;
      try {
        const established = await this.establish(token);
        if (this.isClosed()) {
          safeClose(established.ws);
          return;
        }
        this.startSession(established);
      } catch (e) {
        const err = asSdkError(e);
        if (this.isClosed()) return;
        if ((err instanceof ServerError && isAuthFailure(err.code)) || (err instanceof KickedError && isTerminalKick(err.code))) {
          this.finish(err);
          return;
        }
        this.scheduleReconnect();
      }
    };
    this.reconnectTimer = setTimeout(() => void attempt(), delay);
  }

  /** A method, not a field read, so TypeScript doesn't narrow it across an await. */
  private isClosed(): boolean {
    return this.stateValue === "closed";
  }

  // ---- one connection ----

  private encode(p: Packet): string | Uint8Array {
    return this.opts.format === "json" ? encodeJson(p) : encodeBinary(p);
  }

  private decode(data: unknown, maxFrame: number): Packet | null {
    if (typeof data === "string") return decodeJson(data);
    if (data instanceof ArrayBuffer) return decodeBinary(new Uint8Array(data), maxFrame);
    if (ArrayBuffer.isView(data)) return decodeBinary(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), maxFrame);
    throw new ProtocolError("unexpected WebSocket message type");
  }

  /** Sends a packet under a fresh header seq; false when the socket is not open (a reconnect resends). */
  private sendPacket(s: Session, p: Packet, wire?: Wire): number | null {
    if (s.closed || s.ws.readyState !== OPEN) return null;
    const seq = s.nextSeq;
    // 0 is reserved for server-initiated frames.
    s.nextSeq = s.nextSeq >= 0xffffffff ? 1 : s.nextSeq + 1;
    p.seq = seq;
    try {
      s.ws.send(this.encode(p));
    } catch {
      return null;
    }
    if (wire !== undefined) s.wire.set(seq, wire);
    return seq;
  }

  private request(p: Packet, clientMsgId: string, isC2c: boolean): Promise<pb.C2cAck | pb.C2sAck> {
    if (this.stateValue === "closed" || this.stateValue === "idle") {
      return Promise.reject(new ClosedError(this.stateValue === "idle" ? "not connected yet" : "client closed"));
    }
    if (this.requests.size >= this.opts.maxPendingRequests) {
      return Promise.reject(new BusyError(`${this.requests.size} requests are waiting for their ack`));
    }
    return new Promise((resolve, reject) => {
      const req: Request = {
        id: this.nextRequest++,
        packet: p,
        clientMsgId,
        isC2c,
        resolve,
        reject,
        retries: new Backoff(this.opts.reconnectMinMs, RETRY_MAX_MS),
      };
      if (this.opts.requestTimeoutMs > 0) {
        req.timeout = setTimeout(() => {
          this.dropRequest(req);
          reject(new TimeoutError(`no ack for ${clientMsgId} in ${this.opts.requestTimeoutMs} ms`));
        }, this.opts.requestTimeoutMs);
      }
      this.requests.set(req.id, req);
      if (this.session !== null) this.sendRequest(this.session, req);
    });
  }

  private dropRequest(req: Request): void {
    clearTimeout(req.retryTimer);
    clearTimeout(req.timeout);
    this.requests.delete(req.id);
  }

  private sendRequest(s: Session, req: Request): void {
    if (!this.requests.has(req.id)) return;
    const bytes = this.encode(req.packet);
    const size = typeof bytes === "string" ? new TextEncoder().encode(bytes).length : bytes.length;
    if (size > s.maxFrame) {
      this.dropRequest(req);
      req.reject(new TooLargeError(`frame of ${size} bytes is over the server's limit of ${s.maxFrame}`));
      return;
    }
    const seq = this.sendPacket(s, req.packet, { kind: "request", id: req.id });
    if (seq !== null) req.wire = seq;
  }

  private startSync(s: Session): void {
    if (s.syncing !== null) {
      s.syncAgain = true;
      return;
    }
    const since = this.timeline.last;
    s.syncAgain = false;
    if (this.sendPacket(s, packet("sync", 0, { since, limit: this.opts.syncPage }), { kind: "sync" }) !== null) {
      s.syncing = since;
    }
  }

  private onPingTimer(s: Session): void {
    if (Date.now() - s.lastRecv > s.keepaliveMs * MISSED_PINGS) {
      this.endSession(s, new TimeoutError("no frame from the server for three keepalive intervals"));
      return;
    }
    this.sendPacket(s, packet("ping", 0, {}));
  }

  private onMessage(s: Session, data: unknown): void {
    if (s.closed) return;
    s.lastRecv = Date.now();
    let p: Packet | null;
    try {
      p = this.decode(data, s.maxFrame);
    } catch (e) {
      this.endSession(s, asSdkError(e));
      return;
    }
    // A newer server's command or field: skip it, the framing is intact.
    if (p === null) return;
    const wire = p.seq !== 0 ? s.wire.get(p.seq) : undefined;
    if (wire !== undefined) s.wire.delete(p.seq);
    switch (p.cmd) {
      case "push":
        this.onPush(s, p.body);
        break;
      case "sync_reply":
        this.onSyncReply(s, p.body);
        break;
      case "c2c_ack":
      case "c2s_ack":
        this.onAck(s, wire, p.body);
        break;
      case "error":
        this.onError(s, wire, p.body);
        break;
      case "kick":
        this.onKick(s, p.body);
        return;
      case "logout_ack":
        s.logout?.resolve();
        s.logout = undefined;
        this.finish();
        return;
      case "ping":
        this.sendPacketWithSeq(s, packet("pong", p.seq, {}));
        break;
      default:
        break;
    }
    this.scheduleFlush(s);
  }

  /** Answers a server ping with the same seq. */
  private sendPacketWithSeq(s: Session, p: Packet): void {
    if (s.ws.readyState !== OPEN) return;
    try {
      s.ws.send(this.encode(p));
    } catch {
      // The close event follows.
    }
  }

  private onPush(s: Session, push: pb.Push): void {
    if (push.seq === 0n) {
      if (push.message !== undefined) this.emit("online", { message: push.message });
      return;
    }
    const offer = this.accept(push.seq, this.entryFor(push.message));
    if (offer === Offer.Gap) {
      this.startSync(s);
    } else if (offer === Offer.Duplicate && push.seq <= this.delivered) {
      // A resend (our ack was lost or late): acknowledge again so the server's timer stops.
      s.reack = true;
    }
  }

  private onSyncReply(s: Session, reply: pb.SyncReply): void {
    const since = s.syncing ?? 0n;
    s.syncing = null;
    for (const push of reply.entries) {
      if (push.seq === 0n) continue;
      this.accept(push.seq, this.entryFor(push.message));
    }
    const progressed = this.timeline.last > since;
    if ((reply.hasMore && progressed) || s.syncAgain || (progressed && this.timeline.hasGap())) {
      this.startSync(s);
      return;
    }
    const waiters = this.syncWaiters;
    this.syncWaiters = [];
    for (const w of waiters) w.resolve();
  }

  private onAck(s: Session, wire: Wire | undefined, ack: pb.C2cAck | pb.C2sAck): void {
    if (wire?.kind !== "request") return;
    const req = this.requests.get(wire.id);
    if (req === undefined) return;
    this.dropRequest(req);
    if ("seq" in ack && ack.seq > 0n) {
      if (this.accept(ack.seq, { own: true }) === Offer.Gap && s.gapTimer === undefined) {
        // The pushes before our own entry are usually on their way: give them a moment.
        s.gapTimer = setTimeout(() => {
          s.gapTimer = undefined;
          if (!s.closed && this.timeline.hasGap()) this.startSync(s);
        }, GAP_GRACE_MS);
      }
    }
    req.resolve(ack);
  }

  private onError(s: Session, wire: Wire | undefined, err: pb.Error): void {
    const error = new ServerError(err.code, err.message);
    if (wire?.kind === "request") {
      const req = this.requests.get(wire.id);
      if (req !== undefined) {
        if (isRetryableCode(err.code) && !err.fatal) {
          req.wire = undefined;
          req.retryTimer = setTimeout(() => {
            req.retryTimer = undefined;
            if (this.session !== null) this.sendRequest(this.session, req);
          }, req.retries.next());
        } else {
          this.dropRequest(req);
          req.reject(error);
        }
      }
    } else if (wire?.kind === "sync") {
      // Without a sync the timeline can't be trusted: start over.
      this.endSession(s, error);
      return;
    } else if (wire?.kind === "logout") {
      s.logout?.reject(error);
      s.logout = undefined;
    }
    if (err.fatal) {
      // The server closes next; remember why, so the close is reported as this error.
      s.ending = error;
      if (isAuthFailure(err.code)) this.finish(error);
    }
  }

  private onKick(s: Session, kick: pb.Kick): void {
    const terminal = isTerminalKick(kick.code);
    const err = new KickedError(kick.code, kick.reason);
    this.emit("kick", { code: kick.code, name: codeName(kick.code), reason: kick.reason, terminal });
    if (terminal) {
      this.finish(err);
    } else {
      this.endSession(s, err);
    }
  }

  private onClose(s: Session, code: number, reason: string): void {
    if (s.closed) return;
    if (s.logout !== undefined) {
      s.logout.resolve();
      s.logout = undefined;
      this.finish();
      return;
    }
    const err = s.ending ?? closeError(code, reason);
    if (err instanceof KickedError) {
      // A close naming a kick without the frame (or the frame was lost): same rules.
      this.emit("kick", { code: err.code, name: codeName(err.code), reason: err.reason, terminal: isTerminalKick(err.code) });
      if (isTerminalKick(err.code)) {
        this.finish(err);
        return;
      }
    } else if (err instanceof ServerError && isAuthFailure(err.code)) {
      this.finish(err);
      return;
    }
    this.endSession(s, err);
  }

  /** Ends this connection and reconnects. */
  private endSession(s: Session, err: SwitchboardError): void {
    if (s.closed) return;
    this.teardown(s);
    safeClose(s.ws);
    if (this.stateValue === "closed") return;
    this.setState("reconnecting", err);
    this.scheduleReconnect();
  }

  private teardown(s: Session): void {
    s.closed = true;
    clearInterval(s.pingTimer);
    clearTimeout(s.gapTimer);
    s.ws.onmessage = null;
    s.ws.onclose = null;
    s.ws.onerror = null;
    // Requests in flight are resent on the next connection; retries wait for it.
    for (const req of this.requests.values()) {
      req.wire = undefined;
      clearTimeout(req.retryTimer);
      req.retryTimer = undefined;
    }
    if (this.session === s) this.session = null;
  }

  // ---- delivery ----

  /** Offers a timeline entry and delivers whatever became contiguous. */
  private accept(seq: bigint, entry: Entry): Offer {
    const offer = this.timeline.offer(seq, entry);
    for (let next = this.timeline.pop(); next !== undefined; next = this.timeline.pop()) {
      const [s, e] = next;
      // A listener closed the client: what is left is not delivered (nor acknowledged).
      if (this.isClosed()) break;
      if (!e.own) this.emit("message", { seq: s, message: e.message });
      this.delivered = s;
    }
    return offer;
  }

  /** Our own message (sent from this connection's client, still awaiting its ack) is not shown back to us. */
  private entryFor(message: pb.Message | undefined): Entry {
    if (message === undefined) return { own: true };
    const me = this.userValue;
    if (me !== null && message.from?.app === me.app && message.from?.uid === me.uid && message.clientMsgId !== "") {
      for (const r of this.requests.values()) {
        if (r.isC2c && r.clientMsgId === message.clientMsgId) return { own: true };
      }
    }
    return { own: false, message };
  }

  /** Acknowledges and persists what was delivered, once per turn of the event loop. */
  private scheduleFlush(s: Session): void {
    if (this.flushQueued) return;
    this.flushQueued = true;
    queueMicrotask(() => {
      this.flushQueued = false;
      if (!s.closed && this.delivered > 0n && (this.delivered > s.acked || s.reack)) {
        s.reack = false;
        s.acked = this.delivered;
        this.sendPacket(s, packet("push_ack", 0, { seq: this.delivered }));
      }
      this.persistCursor();
    });
  }

  // ---- the end ----

  private finish(err?: SwitchboardError): void {
    if (this.stateValue === "closed") return;
    clearTimeout(this.reconnectTimer);
    const s = this.session;
    if (s !== null) {
      this.teardown(s);
      safeClose(s.ws, 1000);
    }
    this.persistCursor();
    const reason = err ?? new ClosedError();
    for (const req of [...this.requests.values()]) {
      this.dropRequest(req);
      req.reject(reason);
    }
    const waiters = this.syncWaiters;
    this.syncWaiters = [];
    for (const w of waiters) w.reject(reason);
    this.setState("closed", err);
  }

  private setState(state: ConnectionState, error?: SwitchboardError): void {
    this.stateValue = state;
    this.emit("state", error === undefined ? { state } : { state, error });
  }

  private emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): void {
    this.emitter.emit(event, value, (e) => this.listenerError(e));
  }

  private listenerError(e: unknown): void {
    (this.opts.onListenerError ?? console.error)(e);
  }
}

function safeClose(ws: WebSocketLike, code?: number): void {
  try {
    ws.close(code);
  } catch {
    // Already closing.
  }
}

function asSdkError(e: unknown): SwitchboardError {
  if (e instanceof FrameError) return new ProtocolError(e.message);
  if (e instanceof SwitchboardError) return e;
  return new ConnectionError(String(e));
}

const encoder = new TextEncoder();

function toBytes(body: string | Uint8Array): Uint8Array {
  return typeof body === "string" ? encoder.encode(body) : body;
}

function randomId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID !== undefined) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
}

/** Decodes a message body as UTF-8 text. */
export function bodyText(message: pb.Message): string {
  return new TextDecoder().decode(message.body);
}

