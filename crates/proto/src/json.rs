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

#[derive(Deserialize)]
struct JsonFrame {
    cmd: Value,
    #[serde(default)]
    seq: u32,
    #[serde(default)]
    body: Option<Value>,
}

#[derive(Serialize)]
struct JsonFrameOut<'a> {
    cmd: &'static str,
    seq: u32,
    body: Body<'a>,
}

struct Body<'a>(&'a Packet);

impl Serialize for Body<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_json_body(serializer)
    }
}

/// Encodes a packet as a JSON text frame: `cmd` by name, then `seq`, then the
/// body with its fields in field-number order.
pub fn encode(packet: &Packet, seq: u32) -> String {
    let frame = JsonFrameOut {
        cmd: packet.command().json_name(),
        seq,
        body: Body(packet),
    };
    serde_json::to_string(&frame).unwrap_or_default()
}

/// Decodes a JSON text frame into its request id and packet.
///
/// Errors carry the request id when it could be read, so the error frame can
/// answer the right request.
pub fn decode(text: &str) -> Result<(u32, Packet), (u32, ProtoError)> {
    let not_a_frame = || {
        (
            0,
            ProtoError::Malformed("text frame is not a JSON frame object"),
        )
    };
    // Only an object is a frame (serde would also take `[cmd, seq, body]`).
    let value: Value = serde_json::from_str(text).map_err(|_| not_a_frame())?;
    if !value.is_object() {
        return Err(not_a_frame());
    }
    let frame: JsonFrame = serde_json::from_value(value).map_err(|_| not_a_frame())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn unknown_fields_are_ignored_like_in_the_binary_form() {
        let text =
            r#"{"cmd":"push_ack","seq":3,"body":{"seq":"9","addedLater":{"x":[1]}},"extra":1}"#;
        let (seq, p) = decode(text).unwrap();
        assert_eq!(
            (seq, p),
            (
                3,
                Packet::PushAck(pb::PushAck {
                    group: Default::default(),
                    seq: 9
                })
            )
        );
    }

    #[test]
    fn proto_names_and_numeric_64_bit_values_are_accepted() {
        let text = r#"{"cmd":"c2c_ack","body":{"client_msg_id":"m","msg_id":5,"seq":"6"}}"#;
        let (_, p) = decode(text).unwrap();
        let Packet::C2cAck(ack) = p else { panic!() };
        assert_eq!(
            (ack.client_msg_id.as_str(), ack.msg_id, ack.seq),
            ("m", 5, 6)
        );
    }

    #[test]
    fn cmd_by_number_and_missing_body() {
        assert_eq!(
            decode(r#"{"cmd":5}"#).unwrap(),
            (0, Packet::Ping(pb::Ping {}))
        );
        let (seq, e) = decode(r#"{"cmd":99,"seq":4}"#).unwrap_err();
        assert_eq!((seq, e), (4, ProtoError::UnknownCommand(99)));
        assert!(decode("[1]").unwrap_err().1.is_fatal());
    }
}
