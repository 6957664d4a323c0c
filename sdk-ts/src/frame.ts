// The frame codec: the 16-byte big-endian header plus a protobuf body
// (binary WebSocket messages), or the JSON frame of protocol.md §9 (text
// messages). It never touches a socket: bytes or text in, packets out.
// Bodies are encoded by the code generated from switchboard.proto, so no
// message layout is written by hand here.

import {
  create,
  fromBinary,
  fromJson,
  toBinary,
  toJson,
  type JsonValue,
  type MessageInitShape,
} from "@bufbuild/protobuf";
import type { GenMessage } from "@bufbuild/protobuf/codegenv2";
import * as pb from "./gen/switchboard_pb.js";

/** Header length this version writes (protocol.md §2). */
export const HEADER_LEN = 16;
/** Protocol version. */
export const VERSION = 1;
const FLAG_MASK = 0xffff0000;

/** Body type of every command, by its JSON name. */
export interface Bodies {
  login: pb.Login;
  login_ack: pb.LoginAck;
  logout: pb.Logout;
  logout_ack: pb.LogoutAck;
  ping: pb.Ping;
  pong: pb.Pong;
  c2c: pb.C2c;
  c2c_ack: pb.C2cAck;
  push: pb.Push;
  push_ack: pb.PushAck;
  sync: pb.Sync;
  sync_reply: pb.SyncReply;
  c2s: pb.C2s;
  c2s_ack: pb.C2sAck;
  error: pb.Error;
  kick: pb.Kick;
  mark_read: pb.MarkRead;
  mark_read_ack: pb.MarkReadAck;
  list_conversations: pb.ListConversations;
  conversation_list: pb.ConversationList;
  amend: pb.Amend;
  amend_ack: pb.AmendAck;
}

export type CommandName = keyof Bodies;

/** One decoded frame: the command, its header seq and its typed body. */
export type Packet = { [K in CommandName]: { cmd: K; seq: number; body: Bodies[K] } }[CommandName];

const COMMANDS: { [K in CommandName]: [number, GenMessage<Bodies[K]>] } = {
  login: [1, pb.LoginSchema],
  login_ack: [2, pb.LoginAckSchema],
  logout: [3, pb.LogoutSchema],
  logout_ack: [4, pb.LogoutAckSchema],
  ping: [5, pb.PingSchema],
  pong: [6, pb.PongSchema],
  c2c: [7, pb.C2cSchema],
  c2c_ack: [8, pb.C2cAckSchema],
  push: [9, pb.PushSchema],
  push_ack: [10, pb.PushAckSchema],
  sync: [11, pb.SyncSchema],
  sync_reply: [12, pb.SyncReplySchema],
  c2s: [13, pb.C2sSchema],
  c2s_ack: [14, pb.C2sAckSchema],
  error: [15, pb.ErrorSchema],
  kick: [16, pb.KickSchema],
  mark_read: [17, pb.MarkReadSchema],
  mark_read_ack: [18, pb.MarkReadAckSchema],
  list_conversations: [19, pb.ListConversationsSchema],
  conversation_list: [20, pb.ConversationListSchema],
  amend: [21, pb.AmendSchema],
  amend_ack: [22, pb.AmendAckSchema],
};

const BY_NUMBER = new Map<number, CommandName>(
  (Object.keys(COMMANDS) as CommandName[]).map((name) => [COMMANDS[name][0], name]),
);

/** A frame that breaks the framing: the connection can't go on (protocol.md §2). */
export class FrameError extends Error {
  override name = "FrameError";
}

/** Builds a packet from a partial body (unset fields take their defaults). */
export function packet<K extends CommandName>(
  cmd: K,
  seq: number,
  init: MessageInitShape<GenMessage<Bodies[K]>>,
): Packet {
  const schema = COMMANDS[cmd][1] as GenMessage<Bodies[K]>;
  return { cmd, seq, body: create(schema, init) } as Packet;
}

/** Encodes a packet as one binary frame. */
export function encodeBinary(p: Packet): Uint8Array {
  const [num, schema] = COMMANDS[p.cmd];
  const body = toBinary(schema as GenMessage<Bodies[CommandName]>, p.body);
  const out = new Uint8Array(HEADER_LEN + body.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, out.length);
  view.setUint16(4, HEADER_LEN);
  view.setUint16(6, VERSION);
  view.setUint32(8, num);
  view.setUint32(12, p.seq >>> 0);
  out.set(body, HEADER_LEN);
  return out;
}

/**
 * Decodes one binary frame (a WebSocket message carries exactly one).
 * Returns `null` for a command or body this SDK does not know (a newer
 * server): the framing is intact, so the frame is skipped. Throws
 * FrameError when the framing itself is broken.
 */
export function decodeBinary(bytes: Uint8Array, maxFrameBytes: number): Packet | null {
  if (bytes.length < HEADER_LEN) throw new FrameError(`frame of ${bytes.length} bytes is shorter than its header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const len = view.getUint32(0);
  const hdrlen = view.getUint16(4);
  const version = view.getUint16(6);
  const cmd = view.getUint32(8);
  const seq = view.getUint32(12);
  if (version !== VERSION) throw new FrameError(`unsupported protocol version ${version}`);
  if (hdrlen < HEADER_LEN || len < hdrlen) throw new FrameError(`bad header: len ${len}, hdrlen ${hdrlen}`);
  if (len > maxFrameBytes) throw new FrameError(`frame of ${len} bytes is over the limit of ${maxFrameBytes}`);
  if (len !== bytes.length) throw new FrameError(`frame says ${len} bytes, message has ${bytes.length}`);
  // The SDK never offers compression, so a flagged body is a server bug.
  if ((cmd & FLAG_MASK) !== 0) throw new FrameError(`unexpected frame flags ${(cmd >>> 16).toString(16)}`);
  const name = BY_NUMBER.get(cmd);
  if (name === undefined) return null;
  const schema = COMMANDS[name][1] as GenMessage<Bodies[CommandName]>;
  try {
    return { cmd: name, seq, body: fromBinary(schema, bytes.subarray(hdrlen, len)) } as Packet;
  } catch {
    return null;
  }
}

/** Encodes a packet as one JSON text frame (protobuf's canonical JSON mapping). */
export function encodeJson(p: Packet): string {
  const schema = COMMANDS[p.cmd][1] as GenMessage<Bodies[CommandName]>;
  return JSON.stringify({ cmd: p.cmd, seq: p.seq, body: toJson(schema, p.body) });
}

/** Decodes one JSON text frame; `null` for an unknown command or body (skipped). */
export function decodeJson(text: string): Packet | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new FrameError("text frame is not JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new FrameError("text frame is not a JSON object");
  }
  const obj = value as { cmd?: unknown; seq?: unknown; body?: unknown };
  const name =
    typeof obj.cmd === "number" ? BY_NUMBER.get(obj.cmd) : typeof obj.cmd === "string" ? obj.cmd : undefined;
  if (name === undefined || !(name in COMMANDS)) return null;
  const cmd = name as CommandName;
  const seq = typeof obj.seq === "number" ? obj.seq >>> 0 : 0;
  const schema = COMMANDS[cmd][1] as GenMessage<Bodies[CommandName]>;
  try {
    const body = fromJson(schema, (obj.body ?? {}) as JsonValue, { ignoreUnknownFields: true });
    return { cmd, seq, body } as Packet;
  } catch {
    return null;
  }
}
