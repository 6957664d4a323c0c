// Switchboard's TypeScript SDK: a client for browsers and Node.js >= 20
// over WebSocket, with the same delivery contract as the Rust SDK.

export {
  Client,
  CLIENT_VERSION,
  bodyText,
  type AmendedEvent,
  type AmendOptions,
  type AmendReceipt,
  type ClientEvents,
  type ClientOptions,
  type ConnectionState,
  type ConversationPage,
  type GroupSendReceipt,
  type LoginInfo,
  type MarkReadReceipt,
  type ReceiptEvent,
  type ReportReceipt,
  type SendOptions,
  type SendReceipt,
  type TransientReceipt,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export {
  BusyError,
  ClosedError,
  Code,
  type CodeName,
  ConnectionError,
  type ErrorKind,
  GroupError,
  KickedError,
  ProtocolError,
  ServerError,
  SwitchboardError,
  TimeoutError,
  TokenError,
  TooLargeError,
  codeName,
  isAuthFailure,
  isGroupCode,
  isGroupGone,
  isRetryableCode,
  isTerminalKick,
} from "./errors.js";
export { type CursorStorage, LocalStorageCursor, MemoryStorage, type WebStorageLike } from "./storage.js";
export type { Conversation, GroupState, Message, Push, ReadReceipt, User } from "./gen/switchboard_pb.js";
export { decodeBinary, decodeJson, encodeBinary, encodeJson, packet, type Packet, type CommandName } from "./frame.js";
