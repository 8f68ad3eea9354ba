//! Kubernetes' WebSocket channel protocols, as kubelet's streaming server speaks them.
//!
//! Every message carries one channel's data. The binary protocols (`channel.k8s.io`,
//! `v4.channel.k8s.io`, `v5.channel.k8s.io`, and no subprotocol at all) send binary
//! messages whose first byte is the channel; the base64 ones
//! (`base64.channel.k8s.io`, `v4.base64.channel.k8s.io`, `v5.base64.channel.k8s.io`)
//! send text messages whose first character is the channel as an ASCII digit and the
//! rest the data in base64. The protocols before v4 report an exec's end only when it
//! failed, as a plain message; v4 and later send a JSON `Status` whatever the end; v5
//! adds the message `[255, n]` closing channel n.

use base64::Engine as _;
use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message;

/// One WebSocket channel protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// The subprotocol's name (empty: the client offered none).
    pub name: &'static str,
    /// Text messages with a digit and base64 data instead of binary ones.
    pub base64: bool,
    /// The exec's final `Status` as JSON (v4 and later), also on success.
    pub json_status: bool,
    /// `[255, n]` closes channel n (v5).
    pub close_channel: bool,
}

const fn protocol(name: &'static str, base64: bool, version: u8) -> Protocol {
    Protocol {
        name,
        base64,
        json_status: version >= 4,
        close_channel: version >= 5,
    }
}

/// exec and attach: kubelet's remotecommand protocols.
pub const EXEC: [Protocol; 7] = [
    protocol("v5.channel.k8s.io", false, 5),
    protocol("v5.base64.channel.k8s.io", true, 5),
    protocol("v4.channel.k8s.io", false, 4),
    protocol("v4.base64.channel.k8s.io", true, 4),
    protocol("channel.k8s.io", false, 1),
    protocol("base64.channel.k8s.io", true, 1),
    protocol("", false, 1),
];

/// port-forward: kubelet's port-forward protocols (v5 taken as v4: port-forward has
/// no status and no stdin to close).
pub const PORT_FORWARD: [Protocol; 6] = [
    protocol("v5.channel.k8s.io", false, 4),
    protocol("v4.channel.k8s.io", false, 4),
    protocol("v4.base64.channel.k8s.io", true, 4),
    protocol("channel.k8s.io", false, 1),
    protocol("base64.channel.k8s.io", true, 1),
    protocol("", false, 1),
];

/// The protocol to speak: the first the client offers (its order, as kubelet picks)
/// that is among `ours`; a client offering none gets the plain binary protocol.
pub fn negotiate(offered: &str, ours: &[Protocol]) -> Option<Protocol> {
    let mut offered: Vec<&str> = offered
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        offered.push("");
    }
    offered
        .iter()
        .find_map(|o| ours.iter().find(|p| p.name == *o).copied())
}

/// The names of `ours` for an error message.
pub fn names(ours: &[Protocol]) -> String {
    ours.iter()
        .map(|p| p.name)
        .filter(|n| !n.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Protocol {
    /// A message carrying `data` on `channel`.
    pub fn frame(&self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut s = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            s.push(char::from(b'0' + channel % 10));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
            Message::Text(s.into())
        } else {
            let mut v = Vec::with_capacity(data.len() + 1);
            v.push(channel);
            v.extend_from_slice(data);
            Message::Binary(Bytes::from(v))
        }
    }

    /// The channel and data of a client's message; `None` for a message that carries
    /// none (control frames, empty or undecodable ones).
    pub fn unframe(&self, msg: Message) -> Option<(u8, Vec<u8>)> {
        let raw: Vec<u8> = match msg {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_bytes().to_vec(),
            _ => return None,
        };
        let (&first, body) = raw.split_first()?;
        if !self.base64 {
            return Some((first, body.to_vec()));
        }
        let channel = first.checked_sub(b'0').filter(|c| *c <= 9)?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(body)
            .ok()?;
        Some((channel, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_order_decides_and_plain_names_are_spoken() {
        let pick = |o: &str| negotiate(o, &EXEC).map(|p| p.name);
        assert_eq!(
            pick("v4.channel.k8s.io, v5.channel.k8s.io"),
            Some("v4.channel.k8s.io")
        );
        // The upstream websocket conformance test offers the pre-v4 protocols.
        assert_eq!(pick("channel.k8s.io"), Some("channel.k8s.io"));
        assert_eq!(pick("base64.channel.k8s.io"), Some("base64.channel.k8s.io"));
        assert_eq!(pick(""), Some(""));
        assert_eq!(pick("v9.channel.k8s.io"), None);
        assert!(!negotiate("channel.k8s.io", &EXEC).unwrap().json_status);
        assert!(negotiate("v5.channel.k8s.io", &EXEC).unwrap().close_channel);
        assert_eq!(
            negotiate("v5.channel.k8s.io", &PORT_FORWARD).map(|p| p.close_channel),
            Some(false)
        );
    }

    #[test]
    fn binary_and_base64_framing() {
        let bin = negotiate("channel.k8s.io", &EXEC).unwrap();
        let b64 = negotiate("base64.channel.k8s.io", &EXEC).unwrap();
        assert_eq!(
            bin.frame(1, b"hi"),
            Message::Binary(Bytes::from_static(b"\x01hi"))
        );
        assert_eq!(b64.frame(1, b"hi"), Message::Text("1aGk=".into()));
        assert_eq!(
            b64.unframe(Message::Text("0aGk=".into())),
            Some((0, b"hi".to_vec()))
        );
        assert_eq!(
            bin.unframe(Message::Binary(Bytes::from_static(b"\x04{}"))),
            Some((4, b"{}".to_vec()))
        );
        assert_eq!(b64.unframe(Message::Text("x".into())), None);
        assert_eq!(bin.unframe(Message::Ping(Bytes::new())), None);
    }
}
