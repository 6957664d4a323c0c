//! The scenarios, each with its own `Args` and `run`, and what they share:
//! the message body that carries a timestamp, and the receiver's record.

pub mod amqp;
pub mod c2c;
pub mod connections;
pub mod conversations;
pub mod disk;
pub mod fanout;
pub mod group;
pub mod mqtt;
pub mod reconnect;

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;

use crate::stats::{self, Timeline};

/// A short random id that keeps the users of one run apart from earlier runs'.
pub fn run_id() -> String {
    format!("{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    // Time and pid are random enough to tell runs apart.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

/// Body of a bench message: stream index, message number, send time (ns on
/// [`stats::now_ns`]'s clock), padded to `size` bytes.
pub fn body(stream: u32, n: u64, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(20));
    b.put_u32(stream);
    b.put_u64(n);
    b.put_u64(stats::now_ns());
    b.resize(size.max(20), b'x');
    b.freeze()
}

/// The same as text (`sb-bench:<stream>:<n>:<sent_ns>`), for bodies that
/// travel inside JSON (the HTTP API).
pub fn text_body(stream: u32, n: u64) -> String {
    format!("{TEXT_TAG}{stream}:{n}:{}", stats::now_ns())
}

const TEXT_TAG: &str = "sb-bench:";

/// `(stream, n, sent_ns)` of a bench body, binary or text (found anywhere in
/// the bytes, so a body the API wrapped in quotes still parses).
pub fn parse_body(b: &[u8]) -> Option<(u32, u64, u64)> {
    if let Some(i) = b
        .windows(TEXT_TAG.len())
        .position(|w| w == TEXT_TAG.as_bytes())
    {
        let rest = &b[i + TEXT_TAG.len()..];
        let end = rest
            .iter()
            .position(|c| !(c.is_ascii_digit() || *c == b':'))
            .unwrap_or(rest.len());
        let text = std::str::from_utf8(&rest[..end]).ok()?;
        let mut parts = text.split(':');
        return Some((
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
        ));
    }
    if b.len() < 20 {
        return None;
    }
    let stream = u32::from_be_bytes(b[0..4].try_into().ok()?);
    let n = u64::from_be_bytes(b[4..12].try_into().ok()?);
    let t = u64::from_be_bytes(b[12..20].try_into().ok()?);
    Some((stream, n, t))
}

/// What one receiver saw: message numbers in arrival order, with their
/// send and arrival times.
///
/// Only raw numbers are kept while the run is on; the histogram and the
/// timeline are built once at the end ([`Received::merge_into`]). A
/// histogram per receiver is ~190 KB of zeroed memory: 19,000 fan-out
/// receivers faulted in 3.6 GB inside the timed window, and the generator
/// spent most of its CPU clearing pages instead of reading pushes.
#[derive(Default)]
pub struct Received {
    pub ns: Vec<u64>,
    /// Send time of each entry of `ns` (from its body).
    sent: Vec<u64>,
    /// Arrival time of each entry of `ns`.
    at: Vec<u64>,
}

impl Received {
    /// Records one arrival of a bench body.
    pub fn record(&mut self, body: &[u8]) {
        if let Some((_, n, sent)) = parse_body(body) {
            self.ns.push(n);
            self.sent.push(sent);
            self.at.push(stats::now_ns());
        }
    }

    /// Each arrival's message number and latency (arrival − send, ns).
    pub fn latencies(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ns
            .iter()
            .zip(self.sent.iter().zip(&self.at))
            .map(|(&n, (&sent, &at))| (n, at.saturating_sub(sent)))
    }

    /// When the last bench body arrived (0: none did).
    pub fn last_ns(&self) -> u64 {
        self.at.last().copied().unwrap_or(0)
    }

    /// Adds this receiver's latencies and arrivals to a run's figures.
    pub fn merge_into(&self, hist: &mut Histogram<u64>, timeline: &mut Timeline) {
        for (&sent, &at) in self.sent.iter().zip(&self.at) {
            stats::record_us(hist, at.saturating_sub(sent) / 1000);
            timeline.add(at, 1);
        }
    }
}

/// Checks one stream: every number in `must` arrived exactly once, and the
/// arrivals are in increasing order. Returns (received of must, lost, duplicates, out of order).
pub fn check_stream(arrived: &[u64], must: impl Iterator<Item = u64>) -> (u64, u64, u64, u64) {
    let mut seen = std::collections::HashMap::<u64, u32>::with_capacity(arrived.len());
    let mut out_of_order = 0;
    let mut prev: Option<u64> = None;
    for &n in arrived {
        *seen.entry(n).or_default() += 1;
        if let Some(p) = prev
            && n <= p
        {
            out_of_order += 1;
        }
        prev = Some(n);
    }
    let duplicates = seen.values().map(|c| (*c as u64).saturating_sub(1)).sum();
    let (mut got, mut lost) = (0, 0);
    for n in must {
        if seen.contains_key(&n) {
            got += 1;
        } else {
            lost += 1;
        }
    }
    (got, lost, duplicates, out_of_order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_roundtrip() {
        let b = body(7, 42, 64);
        assert_eq!(b.len(), 64);
        let (s, n, _) = parse_body(&b).unwrap();
        assert_eq!((s, n), (7, 42));
        let t = format!("\"{}\"", text_body(3, 9));
        let (s, n, _) = parse_body(t.as_bytes()).unwrap();
        assert_eq!((s, n), (3, 9));
    }

    #[test]
    fn arrivals_become_one_histogram_and_timeline() {
        let mut rec = Received::default();
        for n in 0..3 {
            rec.record(&body(1, n, 64));
        }
        rec.record(b"not a bench body");
        assert_eq!(rec.ns, [0, 1, 2]);
        assert!(rec.last_ns() > 0);
        let mut hist = stats::histogram();
        let mut timeline = Timeline::new(0);
        rec.merge_into(&mut hist, &mut timeline);
        assert_eq!(hist.len(), 3);
        let total: f64 = timeline.rates().iter().map(|(_, r)| r).sum();
        assert!((total * stats::BUCKET.as_secs_f64() - 3.0).abs() < 1e-9);
    }

    #[test]
    fn stream_check() {
        assert_eq!(check_stream(&[0, 1, 2], 0..3), (3, 0, 0, 0));
        assert_eq!(check_stream(&[0, 2, 2, 1], 0..4), (3, 1, 1, 2));
    }
}
