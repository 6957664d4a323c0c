//! The JSON form of a frame, carried in WebSocket text messages.
//!
//! ```json
//! {"cmd": "c2c", "seq": 7, "body": {"clientMsgId": "m1", "to": {"app": "demo", "uid": "bob"}, "type": "text", "body": "aGk="}}
//! ```
//! `cmd` is the command's name (or its number), `seq` the request id (0 when
//! absent), `body` the command's message in protobuf's canonical JSON mapping
//! (lowerCamelCase names, `bytes` as base64, 64-bit integers as strings).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Command, Packet, ProtoError};

#[derive(Serialize, Deserialize)]
struct JsonFrame {
    cmd: Value,
    #[serde(default)]
    seq: u32,
    #[serde(default)]
    body: Option<Value>,
}

/// Encodes a packet as a JSON text frame.
pub fn encode(packet: &Packet, seq: u32) -> String {
    let body = packet.to_json_value().unwrap_or(Value::Null);
    let frame = JsonFrame {
        cmd: Value::from(packet.command().json_name()),
        seq,
        body: Some(body),
    };
    serde_json::to_string(&frame).unwrap_or_default()
}

/// Decodes a JSON text frame into its request id and packet.
///
/// Errors carry the request id when it could be read, so the error frame can
/// answer the right request.
pub fn decode(text: &str) -> Result<(u32, Packet), (u32, ProtoError)> {
    let frame: JsonFrame = serde_json::from_str(text).map_err(|_| {
        (
            0,
            ProtoError::Malformed("text frame is not a JSON frame object"),
        )
    })?;
    let seq = frame.seq;
    let command = match &frame.cmd {
        Value::String(name) => {
            Command::from_json_name(name).ok_or((seq, ProtoError::UnknownCommand(0)))?
        }
        Value::Number(n) => {
            let n = n.as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(0);
            Command::from_u16(n).ok_or((seq, ProtoError::UnknownCommand(n)))?
        }
        _ => return Err((seq, ProtoError::Malformed("cmd must be a name or a number"))),
    };
    let body = match frame.body {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v) => v,
    };
    let packet = Packet::from_json_value(command, body).map_err(|e| {
        (
            seq,
            ProtoError::Body {
                cmd: command.json_name(),
                reason: e.to_string(),
            },
        )
    })?;
    Ok((seq, packet))
}
