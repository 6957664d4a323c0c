// Typed errors. Callers match on the class (or `kind`) and on `code` for
// what the server said, never on the text. The codes are protocol.md §10.

/** The protocol's stable error and kick codes (protocol.md §10). */
export const Code = {
  BAD_FRAME: 1000,
  FRAME_TOO_LARGE: 1001,
  UNKNOWN_COMMAND: 1002,
  BAD_BODY: 1003,
  UNSUPPORTED_VERSION: 1004,
  BAD_COMPRESSION: 1005,
  NOT_LOGGED_IN: 2000,
  TOKEN_INVALID: 2001,
  TOKEN_EXPIRED: 2002,
  UNKNOWN_APP: 2003,
  ALREADY_LOGGED_IN: 2004,
  LOGIN_TIMEOUT: 2005,
  CROSS_APP_FORBIDDEN: 3000,
  INVALID_ARGUMENT: 3001,
  RATE_LIMITED: 3002,
  FORBIDDEN: 3003,
  REJECTED: 3004,
  GROUP_NOT_FOUND: 3005,
  NOT_GROUP_MEMBER: 3006,
  GROUP_ADMINS_ONLY: 3007,
  GROUP_FULL: 3008,
  MESSAGE_NOT_FOUND: 3009,
  NOT_MESSAGE_SENDER: 3010,
  AMEND_WINDOW_CLOSED: 3011,
  MESSAGE_RECALLED: 3012,
  CLIENT_MSG_ID_REUSED: 3013,
  KICK_REPLACED: 4000,
  KICK_TOO_MANY_DEVICES: 4001,
  KICK_SLOW_CONSUMER: 4002,
  KICK_ACK_TIMEOUT: 4003,
  KICK_IDLE_TIMEOUT: 4004,
  KICK_SHUTDOWN: 4005,
  KICK_ADMIN: 4006,
  KICK_TOKEN_REVOKED: 4007,
  INTERNAL: 5000,
  UNAVAILABLE: 5001,
  SERVER_FULL: 5002,
  HOOK_UNAVAILABLE: 5003,
} as const;

export type CodeName = keyof typeof Code;

const NAMES = new Map<number, CodeName>(
  (Object.keys(Code) as CodeName[]).map((name) => [Code[name], name]),
);

/** The name of a code (`"KICK_ADMIN"`), or `"UNKNOWN"`. */
export function codeName(code: number): CodeName | "UNKNOWN" {
  return NAMES.get(code) ?? "UNKNOWN";
}

/** Server codes that mean "nothing happened, try again later". */
export function isRetryableCode(code: number): boolean {
  return (
    code === Code.UNAVAILABLE || code === Code.INTERNAL || code === Code.RATE_LIMITED || code === Code.SERVER_FULL
  );
}

/** Kicks after which reconnecting would only repeat the problem (or fight another device for its id). */
export function isTerminalKick(code: number): boolean {
  return code === Code.KICK_REPLACED || code === Code.KICK_TOO_MANY_DEVICES || code === Code.KICK_ADMIN;
}

/** Login failures that a reconnect with the same credentials cannot fix. */
export function isAuthFailure(code: number): boolean {
  return code === Code.TOKEN_INVALID || code === Code.TOKEN_EXPIRED || code === Code.UNKNOWN_APP || code === Code.FORBIDDEN;
}

export type ErrorKind = "server" | "kicked" | "timeout" | "closed" | "connection" | "protocol" | "too_large" | "token" | "busy";

/** Every error the SDK returns or reports is one of these. */
export abstract class SwitchboardError extends Error {
  abstract readonly kind: ErrorKind;
  /** The protocol's code for `server` and `kicked` errors. */
  readonly code: number | undefined = undefined;
  /** Whether trying again later may succeed. */
  get retryable(): boolean {
    return false;
  }
}

/** The server answered the request (or the login) with an `error` frame. */
export class ServerError extends SwitchboardError {
  readonly kind = "server";
  override readonly name: string = "ServerError";
  override readonly code: number;
  constructor(code: number, message: string) {
    super(`server error ${code} (${codeName(code)}): ${message}`);
    this.code = code;
  }
  override get retryable(): boolean {
    return isRetryableCode(this.code);
  }
}

/** Codes that mean this user no longer reads the group (removed, or the group deleted). */
export function isGroupGone(code: number): boolean {
  return code === Code.NOT_GROUP_MEMBER || code === Code.GROUP_NOT_FOUND;
}

/**
 * The server refused a group request with a group code: `GROUP_NOT_FOUND`
 * (no such group, or deleted), `NOT_GROUP_MEMBER` (not, or no longer, a
 * member), `GROUP_ADMINS_ONLY` (only admins post), `GROUP_FULL`. A
 * `ServerError`, so matching on `ServerError` and `code` keeps working.
 */
export class GroupError extends ServerError {
  override readonly name = "GroupError";
  /** The group the request named. */
  readonly group: string;
  constructor(code: number, message: string, group: string) {
    super(code, message);
    this.group = group;
  }
}

/** Whether `code` is one of the group codes (3005–3008). */
export function isGroupCode(code: number): boolean {
  return code >= Code.GROUP_NOT_FOUND && code <= Code.GROUP_FULL;
}

/** The server closed the connection with a `kick`. */
export class KickedError extends SwitchboardError {
  readonly kind = "kicked";
  override readonly name = "KickedError";
  override readonly code: number;
  readonly reason: string;
  constructor(code: number, reason: string) {
    super(`kicked ${code} (${codeName(code)}): ${reason}`);
    this.code = code;
    this.reason = reason;
  }
  override get retryable(): boolean {
    return !isTerminalKick(this.code);
  }
}

/** No answer in time (request, connect or keepalive). */
export class TimeoutError extends SwitchboardError {
  readonly kind = "timeout";
  override readonly name = "TimeoutError";
  override get retryable(): boolean {
    return true;
  }
}

/** The client was closed (close, logout, a terminal kick or an auth failure). */
export class ClosedError extends SwitchboardError {
  readonly kind = "closed";
  override readonly name = "ClosedError";
  constructor(message = "client closed") {
    super(message);
  }
}

/** The WebSocket failed or closed (network trouble). */
export class ConnectionError extends SwitchboardError {
  readonly kind = "connection";
  override readonly name = "ConnectionError";
  /** The WebSocket close code, when it closed. */
  readonly closeCode: number | undefined;
  constructor(message: string, closeCode?: number) {
    super(message);
    this.closeCode = closeCode;
  }
  override get retryable(): boolean {
    return true;
  }
}

/** The server sent something that breaks the protocol. */
export class ProtocolError extends SwitchboardError {
  readonly kind = "protocol";
  override readonly name = "ProtocolError";
}

/** A request is larger than the server's `max_frame_bytes`. */
export class TooLargeError extends SwitchboardError {
  readonly kind = "too_large";
  override readonly name = "TooLargeError";
}

/** The `getToken` callback failed. */
export class TokenError extends SwitchboardError {
  readonly kind = "token";
  override readonly name = "TokenError";
}

/** Too many requests are waiting for their answer (`maxPendingRequests`). */
export class BusyError extends SwitchboardError {
  readonly kind = "busy";
  override readonly name = "BusyError";
  override get retryable(): boolean {
    return true;
  }
}

/**
 * The error a WebSocket close stands for when no `kick` or `error` frame
 * came first. A server may close with a code in 4000–4999 and a reason
 * naming the protocol code (e.g. `KICK_ADMIN`); the name in the reason wins,
 * then a close code that is itself a kick code.
 */
export function closeError(closeCode: number, reason: string): SwitchboardError {
  if (closeCode >= 4000 && closeCode <= 4999) {
    const named = reason.match(/[A-Z][A-Z_]+[A-Z]/g)?.find((w) => NAMES.has(Code[w as CodeName]));
    const code = named !== undefined ? Code[named as CodeName] : closeCode;
    if (code >= 4000 && code <= 4999) return new KickedError(code, reason || codeName(code));
    return new ServerError(code, reason || codeName(code));
  }
  return new ConnectionError(`connection closed (${closeCode}${reason ? `: ${reason}` : ""})`, closeCode);
}
