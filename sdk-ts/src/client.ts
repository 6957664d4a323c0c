// The client: one WebSocket at a time, and the delivery contract of the
// Rust SDK (crates/sdk/src/task.rs) around it. It logs in, pings, numbers
// requests and matches answers by header seq, turns pushes, sync pages and
// its own acks into in-order `message` / `receipt` / `groupMessage` events
// through one Timeline per timeline (a Line: the user's own, and one per group),
// acknowledges what was delivered, persists the cursors, and reconnects with
// jittered backoff, syncing from the last delivered sequence and resending
// unanswered sends with their original client_msg_id.
//
// Every timeline goes through the same code: a push, a sync page or an own
// entry's answer (a c2c_ack; a mark_read_ack: the read receipt's entry on
// the user's own timeline; an amend_ack: the recall or edit notice's entry)
// names its timeline by key (the wire's `group`, empty for the user's own),
// and the key picks the Line. Only login differs: the user's timeline is
// always synced, a group only when the LoginAck lists it as having entries
// past this device's cursor.
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
  GroupError,
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
  isGroupCode,
  isGroupGone,
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
/**
 * Most sync requests in flight at once. A login may list many groups; with
 * all their syncs written at once the server would stop reading at its
 * in-flight limit while its pages pile up unread. The rest wait in
 * `Session.syncQueue`.
 */
const MAX_SYNCS = 8;
/** Early entries buffered per timeline past a hole. */
const MAX_PENDING = 1024;
/** The key of the user's own timeline (the wire's empty `group`); anything else is a group id. */
const USER = "";

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
  /** The storage key (default `cursor:<deviceId>`); the user's cursor and each group's are kept under it. */
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
  /** The user's groups with entries past this device's cursor on them (the client syncs these). */
  groups: pb.GroupState[];
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

/** The answer to a `sendGroup`: the message is stored on the group's timeline. */
export interface GroupSendReceipt extends SendReceipt {
  group: string;
}

/** The answer to a `sendTransient` / `sendGroupTransient`: the message was pushed, and stored nowhere. */
export interface TransientReceipt {
  /** The server's id of the message. */
  msgId: bigint;
  /** How many devices it was handed to (online at that moment; this connection not counted). */
  devicesReached: number;
}

/** The answer to a `markRead` / `markGroupRead`: the read receipt is stored. */
export interface MarkReadReceipt {
  /** The receipt's entry on this user's own timeline (held as delivered: not shown back to this client). */
  seq: bigint;
  /** The receipt's message id. */
  msgId: bigint;
}

/** The answer to a `recall` / `edit`: the change is stored, and its notice entry with it. */
export interface AmendReceipt {
  clientMsgId: string;
  /** The notice entry's message id (not the amended message's). */
  msgId: bigint;
  /**
   * The notice entry's sequence: on this user's own timeline for a 1:1
   * message, on the group's timeline for a group message (held as
   * delivered: not shown back to this client).
   */
  seq: bigint;
  /** The group of a group message (empty for a 1:1 message). */
  group: string;
  /** The server had it already (a resend with the same client_msg_id): the first result. */
  duplicate: boolean;
}

export interface AmendOptions {
  /** Idempotency id (1–128 bytes); default a random UUID, kept when the client resends it. */
  clientMsgId?: string;
}

/**
 * A recall or edit notice: an entry of the user's timeline (or a group's)
 * whose `message.amended` is set. Replace the message held with the same
 * `amended.msgId` by `amended` (when none is held, there is nothing to do).
 */
export interface AmendedEvent {
  /** The notice's entry: on this user's timeline, or the group's when `group` is set. */
  seq: bigint;
  /** The group whose timeline the notice is on (empty: this user's timeline). */
  group: string;
  /** The notice entry itself: `from` is who amended the message; no `type` or `body` of its own. */
  message: pb.Message;
  /**
   * The message as it is now, whole, with its original `msgId`: `recalled`
   * (the body is gone, the type stays), or edited (`editedAtMs` set, `body`
   * the edited body).
   */
  amended: pb.Message;
  /** This user amended it (on another device, or on this one when the answer never came). */
  mine: boolean;
}

/** A page of the user's conversations (`conversations()`). */
export interface ConversationPage {
  /** Most recent activity first. */
  conversations: pb.Conversation[];
  /** Pass as `after` for the next page; empty on the last page. */
  next: string;
  /** Unread messages over all the user's conversations (the app badge). */
  totalUnread: bigint;
}

/**
 * A read receipt: an entry of the user's timeline whose `message.read` is
 * set. `message.from` is the reader.
 */
export interface ReceiptEvent {
  /** The receipt's entry on this user's timeline. */
  seq: bigint;
  message: pb.Message;
  read: pb.ReadReceipt;
  /**
   * True: this user read the conversation on another device (`read.seq` is
   * the read position, on this user's timeline or the group's). False: the
   * peer read this user's messages, every one of the conversation at or
   * before `read.msgId` in timeline order.
   */
  mine: boolean;
  /** The 1:1 conversation's other user, seen from this user (undefined for a group). */
  peer: pb.User | undefined;
  /** The group's id (empty for a 1:1 conversation). */
  group: string;
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
  /**
   * One entry of a group's timeline: every entry of each group once, in
   * the group's order, no gaps (this device's own posts are skipped; your
   * other devices' are not). `seq` is on the group's timeline. A group first
   * seen while online (joined now) starts where this member's view begins.
   */
  groupMessage: { group: string; seq: bigint; message: pb.Message };
  /**
   * The server refused this user the group's timeline (a sync or a post was
   * answered `NOT_GROUP_MEMBER`: removed, or `GROUP_NOT_FOUND`: deleted).
   * The client stops following it and forgets its position; entries
   * delivered before came first. A later push of the group (added again)
   * starts it over.
   */
  groupLeft: { group: string; code: number; name: string };
  /**
   * A read receipt on the user's timeline, instead of a `message` event
   * (same order, same once-only delivery; it moves `lastSeq` like any
   * entry). From another of this user's devices (`mine`) or from the peer.
   */
  receipt: ReceiptEvent;
  /**
   * A message of the user's timeline or of a group was recalled or edited:
   * a notice entry, instead of a `message` / `groupMessage` event (same
   * order, same once-only delivery; it moves the position like any entry,
   * never counts as unread). This client's own `recall` / `edit` is not
   * shown back; the other devices of every party get it.
   */
  amended: AmendedEvent;
  /**
   * An online-only message (not stored, no sequence): a transient message
   * (`sendTransient`; typing indicators: `message.type`, `message.from`,
   * and `message.group` for a group) or an online-only s2c of the HTTP API.
   */
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

type Wire = { kind: "request"; id: number } | { kind: "sync"; key: string } | { kind: "logout" };

/** What a queued request is: decides its answer and how its ack and errors are handled. */
type RequestKind = "c2c" | "transient" | "c2s" | "mark_read" | "list" | "amend";
type Answer = pb.C2cAck | pb.C2sAck | pb.MarkReadAck | pb.ConversationList | pb.AmendAck;
/** The answer each kind of request expects. */
const ANSWERS: Record<RequestKind, Answer["$typeName"]> = {
  c2c: "switchboard.v1.C2cAck",
  transient: "switchboard.v1.C2cAck",
  c2s: "switchboard.v1.C2sAck",
  mark_read: "switchboard.v1.MarkReadAck",
  list: "switchboard.v1.ConversationList",
  amend: "switchboard.v1.AmendAck",
};

/** One timeline as the client follows it: the user's own or one group's. */
interface Line {
  timeline: Timeline;
  /** Highest sequence delivered to the application (or reached as our own). */
  delivered: bigint;
  // What this connection knows of the line; reset at every login.
  /** Highest sequence the server has as this device's cursor: the last push_ack sent, or the login's cursor. */
  acked: bigint;
  /** A duplicate arrived: acknowledge again so the server stops resending. */
  reack: boolean;
  /** `since` of the outstanding sync page. */
  syncing: bigint | null;
  /** Another sync round is wanted after the current one. */
  syncAgain: boolean;
  /** Waiting in `Session.syncQueue` for a free sync slot. */
  queued: boolean;
  /** An own message's sequence sits past a hole: look again when the gap timer fires. */
  gapCheck: boolean;
}

function newLine(last: bigint): Line {
  return {
    timeline: new Timeline(last, MAX_PENDING),
    delivered: last,
    acked: 0n,
    reack: false,
    syncing: null,
    syncAgain: false,
    queued: false,
    gapCheck: false,
  };
}

/**
 * A request waiting for its answer, kept across reconnects (resent with the
 * same client_msg_id), except a transient one: it fails with the connection.
 */
interface Request {
  id: number;
  packet: Packet;
  kind: RequestKind;
  /** The c2c, c2s or amend's idempotency id (empty for the other requests). */
  clientMsgId: string;
  /** The group a c2c (or mark_read) names (`USER` for a user's conversation, and for a c2s, a list or an amend). */
  group: string;
  resolve: (answer: Answer) => void;
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
  /** Sync timers after a retryable refusal. */
  syncRetry: Set<ReturnType<typeof setTimeout>>;
  /** Sync pages outstanding. */
  syncs: number;
  /** Lines waiting for a sync slot. */
  syncQueue: string[];
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
  /** Group id -> delivered sequence on the group's timeline. */
  groups?: Record<string, string>;
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
  /** Every timeline followed, by key: `USER` (always there) and each group. */
  private lines = new Map<string, Line>([[USER, newLine(0n)]]);
  /** The user the delivered sequences belong to (`app/uid`), once known. */
  private cursorUser: string | null = null;
  /** A position changed since the cursor record was last written. */
  private dirty = false;
  private syncRetries = new Backoff(250, RETRY_MAX_MS);
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
    return this.userLine().delivered;
  }

  /**
   * The highest sequence of `group` delivered to the application (or
   * reached as this device's own post), in order with no gaps; `undefined`
   * for a group the client does not follow (never seen, or left).
   */
  groupPosition(group: string): bigint | undefined {
    return group === USER ? undefined : this.lines.get(group)?.delivered;
  }

  /** `groupPosition` of every group followed (they are persisted through `storage`). */
  groupPositions(): Map<string, bigint> {
    const out = new Map<string, bigint>();
    for (const [key, line] of this.lines) if (key !== USER) out.set(key, line.delivered);
    return out;
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
    return this.request(p, "c2c", clientMsgId, USER).then((a) => receipt(a as pb.C2cAck));
  }

  /**
   * Posts a message to `group` (of this user's app). Resolves once it is
   * stored on the group's timeline (`seq` is the group's); like `send`, a
   * post interrupted by a disconnect is resent with the same client_msg_id,
   * so it is stored once. Every member device gets it as `groupMessage`,
   * this user's other devices too, but not this client. Rejects with
   * `GroupError` for `GROUP_NOT_FOUND`, `NOT_GROUP_MEMBER` (then
   * `groupLeft` follows) or `GROUP_ADMINS_ONLY`, not retried.
   */
  sendGroup(
    group: string,
    type: string,
    body: string | Uint8Array,
    options: { clientMsgId?: string } = {},
  ): Promise<GroupSendReceipt> {
    if (group === "") return Promise.reject(new ServerError(Code.INVALID_ARGUMENT, "empty group id"));
    const clientMsgId = options.clientMsgId ?? randomId();
    const p = packet("c2c", 0, { clientMsgId, group, type, body: toBytes(body) });
    return this.request(p, "c2c", clientMsgId, group).then((a) => ({ ...receipt(a as pb.C2cAck), group }));
  }

  /**
   * Sends a transient message to `to`: pushed to that user's devices online
   * now, which get it as an `online` event, and nothing else. Not stored,
   * no sequence, absent from sync: for typing indicators and live
   * positions. Resolves with how many devices it reached (0: nobody online).
   * Never resent: a transient message still unanswered when the connection
   * drops rejects with `ConnectionError` (it may or may not have arrived),
   * one sent while disconnected rejects at once, and a `RATE_LIMITED`
   * refusal (transient messages have their own budget on the server)
   * rejects with that `ServerError` instead of being retried.
   */
  sendTransient(to: { app?: string; uid: string }, type: string, body: string | Uint8Array): Promise<TransientReceipt> {
    const p = packet("c2c", 0, {
      clientMsgId: randomId(),
      // An empty app is the sender's.
      to: { app: to.app ?? "", uid: to.uid },
      type,
      body: toBytes(body),
      transient: true,
    });
    return this.request(p, "transient", "", USER).then((a) => transientReceipt(a as pb.C2cAck));
  }

  /**
   * `sendTransient` to every member device of `group` online now (this
   * user's other devices too, not this client). A refusal is a
   * `GroupError` (`GROUP_NOT_FOUND`, `NOT_GROUP_MEMBER`, `GROUP_ADMINS_ONLY`).
   */
  sendGroupTransient(group: string, type: string, body: string | Uint8Array): Promise<TransientReceipt> {
    if (group === "") return Promise.reject(new ServerError(Code.INVALID_ARGUMENT, "empty group id"));
    const p = packet("c2c", 0, { clientMsgId: randomId(), group, type, body: toBytes(body), transient: true });
    return this.request(p, "transient", "", group).then((a) => transientReceipt(a as pb.C2cAck));
  }

  /**
   * Marks the 1:1 conversation with `peer` read up to entry `seq` of this
   * user's timeline: the `seq` of a `message` event of that conversation,
   * or of a `send`'s receipt. The server stores a read receipt: this user's
   * other devices get it as a `receipt` event (`mine`), and so do the
   * peer's (their "read" mark). The position never moves back; mark only
   * when it moved. Rejects with `ServerError` `INVALID_ARGUMENT` for a seq
   * of 0, past the timeline's head, or not a message between the two.
   * Resent after a reconnect like a send.
   */
  markRead(peer: { app?: string; uid: string }, seq: bigint): Promise<MarkReadReceipt> {
    const p = packet("mark_read", 0, { peer: { app: peer.app ?? "", uid: peer.uid }, seq });
    return this.request(p, "mark_read", "", USER).then((a) => markReadReceipt(a as pb.MarkReadAck));
  }

  /**
   * Marks `group` read up to `seq` of the group's timeline (clamped to its
   * head). Only this user's other devices are told (a `receipt` event). A
   * refusal of the group is a `GroupError` (`GROUP_NOT_FOUND`,
   * `NOT_GROUP_MEMBER`: then `groupLeft` follows for a group followed).
   */
  markGroupRead(group: string, seq: bigint): Promise<MarkReadReceipt> {
    if (group === "") return Promise.reject(new ServerError(Code.INVALID_ARGUMENT, "empty group id"));
    const p = packet("mark_read", 0, { group, seq });
    return this.request(p, "mark_read", "", group).then((a) => markReadReceipt(a as pb.MarkReadAck));
  }

  /**
   * Recalls message `msgId`, one this user sent (1:1 or to a group), within
   * the app's recall window (2 minutes by default) from its
   * `serverTimeMs`. Its body is deleted; it keeps its place and id, with
   * `recalled` set. Every device of every party gets a notice (the
   * `amended` event), except this client. Resolves once stored; resent
   * after a reconnect with the same client_msg_id, so it is stored once.
   * Rejects with `ServerError`: `MESSAGE_NOT_FOUND` (no such message of
   * this app, or not a message), `NOT_MESSAGE_SENDER`, `AMEND_WINDOW_CLOSED`.
   */
  recall(msgId: bigint, options: AmendOptions = {}): Promise<AmendReceipt> {
    return this.amend(msgId, true, new Uint8Array(0), options);
  }

  /**
   * Edits message `msgId`, one this user sent, to `body` (its type stays),
   * within the app's edit window (24 hours by default). It keeps its place
   * and id, with `editedAtMs` set; every party's devices get a notice (the
   * `amended` event), except this client. Resent like `recall`. Rejects
   * with `ServerError`: `MESSAGE_NOT_FOUND`, `NOT_MESSAGE_SENDER`,
   * `AMEND_WINDOW_CLOSED`, `MESSAGE_RECALLED` (a recalled message stays
   * recalled), `INVALID_ARGUMENT` (e.g. a body over the server's limit).
   */
  edit(msgId: bigint, body: string | Uint8Array, options: AmendOptions = {}): Promise<AmendReceipt> {
    return this.amend(msgId, false, toBytes(body), options);
  }

  private amend(msgId: bigint, recall: boolean, body: Uint8Array, options: AmendOptions): Promise<AmendReceipt> {
    const clientMsgId = options.clientMsgId ?? randomId();
    const p = packet("amend", 0, { clientMsgId, msgId, recall, body });
    return this.request(p, "amend", clientMsgId, USER).then((a) => amendReceipt(a as pb.AmendAck));
  }

  /**
   * A page of this user's conversations (1:1 and groups), most recent
   * first, each with its last message, unread count and read position,
   * plus the total unread count. `after` is the previous page's `next`
   * (empty or absent: the first page); `limit` 0 or absent: the server's
   * default (50, at most 200). An `after` the server did not make is
   * `INVALID_ARGUMENT`.
   */
  conversations(options: { after?: string; limit?: number } = {}): Promise<ConversationPage> {
    const p = packet("list_conversations", 0, { after: options.after ?? "", limit: options.limit ?? 0 });
    return this.request(p, "list", "", USER).then((a) => {
      const list = a as pb.ConversationList;
      return { conversations: list.conversations, next: list.next, totalUnread: list.totalUnread };
    });
  }

  /** Sends a c2s report to the business servers (a topic `type` and a body). */
  report(type: string, body: string | Uint8Array, options: { clientMsgId?: string } = {}): Promise<ReportReceipt> {
    const clientMsgId = options.clientMsgId ?? randomId();
    const p = packet("c2s", 0, { clientMsgId, type, body: toBytes(body) });
    return this.request(p, "c2s", clientMsgId, USER).then((a) => {
      const ack = a as pb.C2sAck;
      return { clientMsgId: ack.clientMsgId, msgId: ack.msgId, duplicate: ack.duplicate };
    });
  }

  /**
   * Syncs now (the user's timeline and every group followed); resolves when
   * everything up to each timeline's head was delivered.
   */
  sync(): Promise<void> {
    if (this.stateValue === "closed") return Promise.reject(new ClosedError());
    return new Promise((resolve, reject) => {
      this.syncWaiters.push({ resolve, reject });
      const s = this.session;
      if (s !== null) for (const key of [...this.lines.keys()]) this.wantSync(s, key);
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
        const lines = new Map<string, Line>([[USER, newLine(seq)]]);
        for (const [group, value] of Object.entries(stored.groups ?? {})) {
          const at = BigInt(value);
          if (group !== USER && at >= 0n) lines.set(group, newLine(at));
        }
        this.cursorUser = stored.user;
        this.lines = lines;
      }
    } catch {
      // A corrupt record: start from the server's cursor instead.
    }
  }

  private persistCursor(): void {
    if (!this.dirty || this.cursorUser === null) return;
    this.dirty = false;
    const groups: Record<string, string> = {};
    for (const [key, line] of this.lines) if (key !== USER) groups[key] = line.delivered.toString();
    const record: StoredCursor = { user: this.cursorUser, seq: this.userLine().delivered.toString(), groups };
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
      syncRetry: new Set(),
      syncs: 0,
      syncQueue: [],
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
      // The stored cursors belong to someone else: this user's timelines start over.
      this.lines = new Map([[USER, newLine(0n)]]);
      this.dirty = true;
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
      groups: ack.groups,
    };
    this.setState("connected");
    this.emit("connected", info);
    // A listener closed the client.
    if (s.closed) return info;

    // A group the login does not list has nothing past the server's cursor,
    // so the server is at least where this device is.
    for (const line of this.lines.values()) {
      Object.assign(line, { acked: line.delivered, reack: false, syncing: null, syncAgain: false, queued: false, gapCheck: false });
    }
    const catchUp: [string, bigint][] = [[USER, ack.cursor]];
    const toSync = [USER];
    for (const g of ack.groups) {
      if (g.group === USER) continue;
      let line = this.lines.get(g.group);
      if (line === undefined) {
        // Unknown here (never stored): start at the server's cursor on it.
        line = newLine(g.cursor);
        this.lines.set(g.group, line);
        this.dirty = true;
      }
      if (g.head > line.timeline.last) toSync.push(g.group);
      catchUp.push([g.group, g.cursor]);
    }
    // Catch the server's cursors up with what was delivered, then sync and resend.
    for (const [key, cursor] of catchUp) {
      const line = this.line(key);
      line.acked = cursor;
      if (line.delivered > cursor) {
        line.acked = line.delivered;
        this.sendPacket(s, packet("push_ack", 0, { seq: line.delivered, group: key }));
      }
    }
    for (const key of toSync) this.wantSync(s, key);
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

  private request(p: Packet, kind: RequestKind, clientMsgId: string, group: string): Promise<Answer> {
    if (this.stateValue === "closed" || this.stateValue === "idle") {
      return Promise.reject(new ClosedError(this.stateValue === "idle" ? "not connected yet" : "client closed"));
    }
    // Online-only: nothing to resend it to later.
    if (kind === "transient" && this.session === null) {
      return Promise.reject(new ConnectionError("not connected: a transient message is not queued"));
    }
    if (this.requests.size >= this.opts.maxPendingRequests) {
      return Promise.reject(new BusyError(`${this.requests.size} requests are waiting for their ack`));
    }
    return new Promise((resolve, reject) => {
      const req: Request = {
        id: this.nextRequest++,
        packet: p,
        kind,
        clientMsgId,
        group,
        resolve,
        reject,
        retries: new Backoff(this.opts.reconnectMinMs, RETRY_MAX_MS),
      };
      if (this.opts.requestTimeoutMs > 0) {
        req.timeout = setTimeout(() => {
          this.dropRequest(req);
          const what = clientMsgId === "" ? p.cmd : clientMsgId;
          reject(new TimeoutError(`no answer for ${what} in ${this.opts.requestTimeoutMs} ms`));
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

  /**
   * Asks for a sync of line `key`: now, after its current page (which may
   * already hold what is wanted, but may not), or when a slot frees.
   */
  private wantSync(s: Session, key: string): void {
    const line = this.lines.get(key);
    if (line === undefined || s.closed) return;
    if (line.syncing !== null) {
      line.syncAgain = true;
      return;
    }
    if (line.queued) return;
    if (s.syncs >= MAX_SYNCS) {
      line.queued = true;
      s.syncQueue.push(key);
      return;
    }
    this.sendSync(s, key);
  }

  /** Sends a sync page request for line `key`, from its last contiguous entry. */
  private sendSync(s: Session, key: string): void {
    const line = this.lines.get(key);
    if (line === undefined) return;
    const since = line.timeline.last;
    line.syncAgain = false;
    line.queued = false;
    const p = packet("sync", 0, { since, limit: this.opts.syncPage, group: key });
    if (this.sendPacket(s, p, { kind: "sync", key }) !== null) {
      line.syncing = since;
      s.syncs += 1;
    }
  }

  /** A line's sync round ended: start the queued ones, and answer `sync()` once no sync is left. */
  private syncDone(s: Session): void {
    while (s.syncs < MAX_SYNCS && !s.closed) {
      const key = s.syncQueue.shift();
      if (key === undefined) break;
      // Forgotten (groupLeft) while it waited: skip it.
      if (this.lines.get(key)?.queued === true) this.sendSync(s, key);
    }
    if (s.syncs === 0 && s.syncRetry.size === 0) {
      const waiters = this.syncWaiters;
      this.syncWaiters = [];
      for (const w of waiters) w.resolve();
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
        if (wire?.kind === "sync") this.onSyncReply(s, wire.key, p.body);
        break;
      case "c2c_ack":
      case "c2s_ack":
      case "mark_read_ack":
      case "conversation_list":
      case "amend_ack":
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
    const key = push.message?.group ?? USER;
    const offer = this.accept(key, push.seq, this.entryFor(push.message));
    if (offer === Offer.Gap) {
      this.wantSync(s, key);
    } else if (offer === Offer.Duplicate) {
      const line = this.lines.get(key);
      // A resend (our ack was lost or late): acknowledge again so the server's timer stops.
      if (line !== undefined && push.seq <= line.delivered) line.reack = true;
    }
  }

  private onSyncReply(s: Session, key: string, reply: pb.SyncReply): void {
    s.syncs = Math.max(0, s.syncs - 1);
    const line = this.lines.get(key);
    // Forgotten (groupLeft) while the page was on its way.
    if (line === undefined) {
      this.syncDone(s);
      return;
    }
    const since = line.syncing ?? 0n;
    line.syncing = null;
    this.syncRetries.reset();
    // The page may start later than asked (a group member sees only what
    // came after its joining): move up first, then take the entries.
    this.advance(key, reply.since);
    for (const push of reply.entries) {
      if (push.seq === 0n) continue;
      this.accept(key, push.seq, this.entryFor(push.message));
    }
    if (this.isClosed()) return;
    const last = line.timeline.last;
    const progressed = last > since;
    if ((reply.hasMore && progressed) || line.syncAgain || (progressed && line.timeline.hasGap())) {
      this.sendSync(s, key);
      return;
    }
    this.syncDone(s);
  }

  private onAck(s: Session, wire: Wire | undefined, ack: Answer): void {
    if (wire?.kind !== "request") return;
    const req = this.requests.get(wire.id);
    if (req === undefined) return;
    this.dropRequest(req);
    if (ack.$typeName !== ANSWERS[req.kind]) {
      req.reject(new ProtocolError(`${ack.$typeName} answered a ${req.packet.cmd}`));
      return;
    }
    // The entry of our own c2c (on our timeline, or the group's), of our
    // read receipt (on our timeline) and of our recall or edit (the amended
    // message's timeline: the ack names it) is held as delivered: never shown back.
    const key =
      req.kind === "c2c"
        ? req.group
        : req.kind === "mark_read"
          ? USER
          : req.kind === "amend"
            ? (ack as pb.AmendAck).group
            : null;
    if (key !== null && "seq" in ack && ack.seq > 0n) {
      if (this.accept(key, ack.seq, { own: true }) === Offer.Gap) {
        const line = this.lines.get(key);
        if (line !== undefined) line.gapCheck = true;
        // The pushes before our own entry are usually on their way: give them a moment.
        s.gapTimer ??= setTimeout(() => this.gapCheck(s), GAP_GRACE_MS);
      }
    }
    req.resolve(ack);
  }

  /** The own entries' holes that the pushes did not fill in the grace time: sync them. */
  private gapCheck(s: Session): void {
    s.gapTimer = undefined;
    if (s.closed) return;
    for (const [key, line] of [...this.lines]) {
      if (line.gapCheck && line.timeline.hasGap()) this.wantSync(s, key);
      line.gapCheck = false;
    }
  }

  private onError(s: Session, wire: Wire | undefined, err: pb.Error): void {
    const error = new ServerError(err.code, err.message);
    if (wire?.kind === "request") {
      const req = this.requests.get(wire.id);
      if (req !== undefined) {
        // A transient message is never resent: the caller decides (usually: drop it).
        if (isRetryableCode(err.code) && !err.fatal && req.kind !== "transient") {
          req.wire = undefined;
          req.retryTimer = setTimeout(() => {
            req.retryTimer = undefined;
            if (this.session !== null) this.sendRequest(this.session, req);
          }, req.retries.next());
        } else {
          this.dropRequest(req);
          const group = req.group;
          req.reject(group !== USER && isGroupCode(err.code) ? new GroupError(err.code, err.message, group) : error);
          // Posting told us we are out of the group.
          if (group !== USER && isGroupGone(err.code)) this.forget(group, err.code);
        }
      }
    } else if (wire?.kind === "sync") {
      const key = wire.key;
      if (key !== USER && isGroupGone(err.code)) {
        // Not a connection problem: this user no longer reads the group.
        s.syncs = Math.max(0, s.syncs - 1);
        this.forget(key, err.code);
        this.syncDone(s);
      } else if (isRetryableCode(err.code) && !err.fatal) {
        // Not processed (e.g. RATE_LIMITED): ask again after a while.
        s.syncs = Math.max(0, s.syncs - 1);
        const line = this.lines.get(key);
        if (line !== undefined) line.syncing = null;
        const timer = setTimeout(() => {
          s.syncRetry.delete(timer);
          if (s.closed) return;
          this.wantSync(s, key);
          this.syncDone(s);
        }, this.syncRetries.next());
        s.syncRetry.add(timer);
        this.syncDone(s);
      } else {
        // Without a sync the timeline can't be trusted: start over.
        this.endSession(s, error);
        return;
      }
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
    // Transient messages are for the devices online now: not resent on the next connection.
    for (const req of [...this.requests.values()]) {
      if (req.kind !== "transient") continue;
      this.dropRequest(req);
      req.reject(new ConnectionError(`the connection ended before the transient message was answered: ${err.message}`));
    }
    if (this.stateValue === "closed") return;
    this.setState("reconnecting", err);
    this.scheduleReconnect();
  }

  private teardown(s: Session): void {
    s.closed = true;
    clearInterval(s.pingTimer);
    clearTimeout(s.gapTimer);
    for (const timer of s.syncRetry) clearTimeout(timer);
    s.syncRetry.clear();
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

  /** The user's own timeline's line (always there). */
  private userLine(): Line {
    return this.line(USER);
  }

  /**
   * The line of `key`, created at 0 when unknown: a group joined while
   * online (or never stored). Its first entry past 1 is then a gap, and the
   * sync's `since` moves the start to where this member's view begins.
   */
  private line(key: string): Line {
    let line = this.lines.get(key);
    if (line === undefined) {
      line = newLine(0n);
      this.lines.set(key, line);
      this.dirty = true;
    }
    return line;
  }

  /** Offers an entry of line `key` and delivers whatever became contiguous. */
  private accept(key: string, seq: bigint, entry: Entry): Offer {
    const offer = this.line(key).timeline.offer(seq, entry);
    this.release(key);
    return offer;
  }

  /** Moves line `key`'s start up to a sync reply's `since`. */
  private advance(key: string, since: bigint): void {
    const line = this.line(key);
    if (line.timeline.advanceTo(since)) {
      // Everything before was delivered already (entries are released as soon as they are contiguous).
      if (since > line.delivered) {
        line.delivered = since;
        this.dirty = true;
      }
    }
    this.release(key);
  }

  /** Delivers line `key`'s contiguous entries as events. */
  private release(key: string): void {
    const line = this.lines.get(key);
    if (line === undefined) return;
    for (let next = line.timeline.pop(); next !== undefined; next = line.timeline.pop()) {
      const [seq, e] = next;
      // A listener closed the client: what is left is not delivered (nor acknowledged).
      if (this.isClosed()) break;
      if (!e.own) {
        const read = e.message.read;
        const amended = e.message.amended;
        if (amended !== undefined) this.emit("amended", this.amendedEvent(key, seq, e.message, amended));
        else if (key === USER && read !== undefined) this.emit("receipt", this.receiptEvent(seq, e.message, read));
        else if (key === USER) this.emit("message", { seq, message: e.message });
        else this.emit("groupMessage", { group: key, seq, message: e.message });
      }
      // A listener may have made the client leave the group meanwhile.
      if (this.lines.get(key) !== line) break;
      line.delivered = seq;
      this.dirty = true;
    }
  }

  /**
   * Stops following group `key`: the server said this user is no longer a
   * member (or the group is gone). Entries already delivered came first.
   */
  private forget(key: string, code: number): void {
    if (key === USER || !this.lines.delete(key)) return;
    this.dirty = true;
    this.emit("groupLeft", { group: key, code, name: codeName(code) });
  }

  /**
   * Our own message, read receipt or recall / edit notice (from this client,
   * still awaiting its answer: a sync may bring the entry first) is not
   * shown back to us.
   */
  private entryFor(message: pb.Message | undefined): Entry {
    if (message === undefined) return { own: true };
    const me = this.userValue;
    if (me !== null && isUser(message.from, me)) {
      const read = message.read;
      // A notice carries its amend's client_msg_id.
      const kind = message.amended !== undefined ? "amend" : "c2c";
      for (const r of this.requests.values()) {
        if (r.kind === kind && message.clientMsgId !== "" && r.clientMsgId === message.clientMsgId) return { own: true };
        if (r.kind === "mark_read" && read !== undefined && r.packet.cmd === "mark_read") {
          const asked = r.packet.body;
          const peer = asked.peer === undefined ? undefined : { app: asked.peer.app || me.app, uid: asked.peer.uid };
          const samePeer = peer === undefined ? read.peer === undefined : isUser(read.peer, peer);
          if (samePeer && asked.group === read.group && asked.seq === read.seq) return { own: true };
        }
      }
    }
    return { own: false, message };
  }

  /** A notice entry as the `amended` event tells it. */
  private amendedEvent(key: string, seq: bigint, message: pb.Message, amended: pb.Message): AmendedEvent {
    const me = this.userValue;
    return { seq, group: key, message, amended, mine: me !== null && isUser(message.from, me) };
  }

  /** A receipt entry as the `receipt` event tells it: whose, and which conversation from this user's side. */
  private receiptEvent(seq: bigint, message: pb.Message, read: pb.ReadReceipt): ReceiptEvent {
    const me = this.userValue;
    const mine = me !== null && isUser(message.from, me);
    // Our own receipt names the peer; the peer's names us, and the peer is its sender.
    const peer = read.group !== "" ? undefined : mine ? read.peer : message.from;
    return { seq, message, read, mine, peer, group: read.group };
  }

  /** Acknowledges (per line) and persists what was delivered, once per turn of the event loop. */
  private scheduleFlush(s: Session): void {
    if (this.flushQueued) return;
    this.flushQueued = true;
    queueMicrotask(() => {
      this.flushQueued = false;
      if (!s.closed) {
        for (const [key, line] of this.lines) {
          if (line.delivered > 0n && (line.delivered > line.acked || line.reack)) {
            line.reack = false;
            line.acked = line.delivered;
            this.sendPacket(s, packet("push_ack", 0, { seq: line.delivered, group: key }));
          }
        }
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

/** Whether `u` is the user `who`. */
function isUser(u: { app: string; uid: string } | undefined, who: { app: string; uid: string }): boolean {
  return u !== undefined && u.app === who.app && u.uid === who.uid;
}

function transientReceipt(ack: pb.C2cAck): TransientReceipt {
  return { msgId: ack.msgId, devicesReached: ack.devicesReached };
}

function markReadReceipt(ack: pb.MarkReadAck): MarkReadReceipt {
  return { seq: ack.seq, msgId: ack.msgId };
}

function amendReceipt(ack: pb.AmendAck): AmendReceipt {
  return { clientMsgId: ack.clientMsgId, msgId: ack.msgId, seq: ack.seq, group: ack.group, duplicate: ack.duplicate };
}

function receipt(ack: pb.C2cAck): SendReceipt {
  return {
    clientMsgId: ack.clientMsgId,
    msgId: ack.msgId,
    seq: ack.seq,
    serverTimeMs: ack.serverTimeMs,
    duplicate: ack.duplicate,
  };
}

/** Decodes a message body as UTF-8 text. */
export function bodyText(message: pb.Message): string {
  return new TextDecoder().decode(message.body);
}

