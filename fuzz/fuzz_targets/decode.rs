//! Garbage in: the frame decoder, the body decoder, the inflater and the JSON
//! decoder must return errors, never panic, hang or over-allocate.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_proto::{Compression, Packet, decode, json};

const MAX_FRAME: usize = 4096;
const DEFLATE: Compression = Compression::Deflate { threshold: 0 };

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decode(&mut buf, MAX_FRAME) {
            Ok(Some(frame)) => {
                let taken = before - buf.len();
                assert!(taken <= MAX_FRAME, "frame of {taken} bytes over the limit");
                let _ = Packet::from_frame(&frame);
                if let Ok(plain) = DEFLATE.inflate(frame, MAX_FRAME) {
                    assert!(plain.body.len() <= MAX_FRAME);
                    let _ = Packet::from_frame(&plain);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok((seq, packet)) = json::decode(text) {
            // What decodes re-encodes, in both forms.
            let again = json::decode(&json::encode(&packet, seq)).expect("re-encoded JSON decodes");
            assert_eq!(again, (seq, packet.clone()));
            let _ = packet.encode(seq);
        }
    }
});
