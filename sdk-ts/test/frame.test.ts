// The codec against protocol.md §11's examples (which the Rust tests check
// byte for byte against the server's codec): same bytes, same JSON.

import { describe, expect, it } from "vitest";
import { closeError } from "../src/errors.js";
import {
  Code,
  ConnectionError,
  KickedError,
  ServerError,
  decodeBinary,
  decodeJson,
  encodeBinary,
  encodeJson,
  packet,
} from "../src/index.js";

const hex = (s: string) => Uint8Array.from(s.replace(/\s+/g, "").match(/../g) ?? [], (h) => Number.parseInt(h, 16));

describe("frames", () => {
  it("encodes c2c as protocol.md's example", () => {
    const p = packet("c2c", 2, {
      clientMsgId: "m-1",
      to: { app: "demo", uid: "bob" },
      type: "text",
      body: new TextEncoder().encode('{"text":"hi"}'),
    });
    expect(encodeBinary(p)).toEqual(
      hex(`00000037 0010 0001 00000007 00000002 0a036d2d31 120b 0a0464656d6f 1203626f62
           1a0474657874 220d7b2274657874223a226869227d`),
    );
    expect(JSON.parse(encodeJson(p))).toEqual({
      cmd: "c2c",
      seq: 2,
      body: { clientMsgId: "m-1", to: { app: "demo", uid: "bob" }, type: "text", body: "eyJ0ZXh0IjoiaGkifQ==" },
    });
  });

  it("decodes c2c_ack from bytes and from JSON to the same 64-bit values", () => {
    const bin = decodeBinary(hex("00000027 0010 0001 00000008 00000002 0a036d2d31 1081808080a8d6b907 182b 2080d0eab6b733"), 65536);
    const json = decodeJson(
      '{"cmd":"c2c_ack","seq":2,"body":{"clientMsgId":"m-1","msgId":"4194304000000001","seq":"43","serverTimeMs":"1767225600000"}}',
    );
    for (const p of [bin, json]) {
      expect(p?.cmd).toBe("c2c_ack");
      expect(p?.seq).toBe(2);
      if (p?.cmd !== "c2c_ack") throw new Error("not a c2c_ack");
      expect(p.body.msgId).toBe(4194304000000001n);
      expect(p.body.seq).toBe(43n);
      expect(p.body.serverTimeMs).toBe(1767225600000n);
    }
  });

  it("amend and a notice in proto3 JSON: 64-bit ids as strings, amended / recalled / editedAtMs", () => {
    const p = packet("amend", 3, { clientMsgId: "a-1", msgId: 4194304000000001n, body: new TextEncoder().encode("hi") });
    expect(JSON.parse(encodeJson(p))).toEqual({
      cmd: "amend",
      seq: 3,
      body: { clientMsgId: "a-1", msgId: "4194304000000001", body: "aGk=" },
    });
    expect(encodeBinary(p)).toEqual(hex("00000022 0010 0001 00000015 00000003 0a03612d31 1081808080a8d6b907 22026869"));
    const push = decodeJson(
      '{"cmd":"push","seq":0,"body":{"seq":"9","message":{"msgId":"4194304000000009","from":{"app":"demo","uid":"alice"},' +
        '"amended":{"msgId":"4194304000000001","type":"text","recalled":true,"editedAtMs":"1767225600000"}}}}',
    );
    if (push?.cmd !== "push") throw new Error("not a push");
    expect(push.body.seq).toBe(9n);
    expect(push.body.message?.amended?.msgId).toBe(4194304000000001n);
    expect(push.body.message?.amended?.recalled).toBe(true);
    expect(push.body.message?.amended?.editedAtMs).toBe(1767225600000n);
    const ack = decodeJson('{"cmd":"amend_ack","seq":3,"body":{"clientMsgId":"a-1","msgId":"7","seq":"2","duplicate":true,"group":"g"}}');
    expect(ack?.cmd === "amend_ack" ? [ack.body.msgId, ack.body.seq, ack.body.duplicate, ack.body.group] : ack).toEqual([
      7n,
      2n,
      true,
      "g",
    ]);
  });

  it("refuses broken framing and skips unknown commands", () => {
    expect(() => decodeBinary(hex("00000010 0010 0002 00000005 00000001"), 65536)).toThrow(/version/);
    expect(() => decodeBinary(hex("00100000 0010 0001 00000005 00000001"), 65536)).toThrow(/limit/);
    expect(() => decodeBinary(hex("00000010 0010 0001 00020005 00000001"), 65536)).toThrow(/flags/);
    expect(decodeBinary(hex("00000010 0010 0001 00000063 00000001"), 65536)).toBeNull();
    expect(() => decodeJson("[1]")).toThrow(/object/);
    expect(decodeJson('{"cmd":"future_thing","seq":3}')).toBeNull();
  });
});

describe("close codes", () => {
  it("name the kick or error when no frame said it first", () => {
    const kick = closeError(4006, "KICK_ADMIN");
    expect(kick).toBeInstanceOf(KickedError);
    expect(kick.code).toBe(Code.KICK_ADMIN);
    // A server error's name in the reason wins over the close code.
    const err = closeError(4001, "TOKEN_INVALID: bad signature");
    expect(err).toBeInstanceOf(ServerError);
    expect(err.code).toBe(Code.TOKEN_INVALID);
    // A private close code with no name: a kick code as is.
    expect(closeError(4004, "").code).toBe(Code.KICK_IDLE_TIMEOUT);
    const dropped = closeError(1006, "");
    expect(dropped).toBeInstanceOf(ConnectionError);
    expect((dropped as ConnectionError).closeCode).toBe(1006);
    expect(dropped.retryable).toBe(true);
  });
});
