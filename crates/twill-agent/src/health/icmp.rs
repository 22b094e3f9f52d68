//! ICMP echo over a raw IPv4 socket (socket2; the agent runs as root):
//! building requests, parsing replies. The socket belongs to the network
//! namespace of the thread that opens it.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
/// Bytes after the ICMP header: small, the probe tests reachability, not
/// the MTU.
const PAYLOAD: &[u8] = b"twill-probe";

/// A raw ICMP socket sending echoes with one identifier.
#[derive(Debug)]
pub struct EchoSocket {
    socket: Socket,
    ident: u16,
}

/// An echo reply to one of our requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoReply {
    /// Who answered.
    pub from: Ipv4Addr,
    /// The request's sequence number.
    pub seq: u16,
}

impl EchoSocket {
    /// Opens the socket in the calling thread's network namespace. `ident`
    /// tells our replies from those of other pingers on the host (every raw
    /// ICMP socket sees every ICMP packet).
    ///
    /// # Errors
    /// The socket call's error (EPERM without `CAP_NET_RAW`).
    pub fn open(ident: u16) -> std::io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        Ok(EchoSocket { socket, ident })
    }

    /// Sends echo request `seq` to `dst`.
    ///
    /// # Errors
    /// The send's error (ENETUNREACH without a route, EPERM when a local
    /// firewall refuses it).
    pub fn send(&self, dst: Ipv4Addr, seq: u16) -> std::io::Result<()> {
        let packet = echo_request(self.ident, seq);
        self.socket
            .send_to(&packet, &SockAddr::from(SocketAddrV4::new(dst, 0)))
            .map(|_| ())
    }

    /// Waits at most `timeout` for one of our echo replies; `None` when
    /// none came (other ICMP is read and dropped).
    ///
    /// # Errors
    /// The receive's error, other than a timeout.
    pub fn recv(&self, timeout: Duration) -> std::io::Result<Option<EchoReply>> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = [0u8; 1500];
        match (&self.socket).read(&mut buf) {
            Ok(n) => Ok(buf
                .get(..n)
                .and_then(parse_reply)
                .filter(|(ident, _)| *ident == self.ident)
                .map(|(_, reply)| reply)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// An ICMP echo request: header, identifier, sequence, payload, checksum.
#[must_use]
pub fn echo_request(ident: u16, seq: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + PAYLOAD.len());
    p.extend_from_slice(&[ECHO_REQUEST, 0, 0, 0]);
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(PAYLOAD);
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071).
#[must_use]
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = match pair {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(u16::try_from(sum).unwrap_or(u16::MAX))
}

/// `(identifier, reply)` of an IPv4 packet holding an ICMP echo reply (a
/// raw socket reads the IP header too); `None` for anything else.
#[must_use]
pub fn parse_reply(packet: &[u8]) -> Option<(u16, EchoReply)> {
    let first = *packet.first()?;
    if first >> 4 != 4 || packet.get(9) != Some(&1) {
        return None;
    }
    let header = usize::from(first & 0x0f) * 4;
    let src = packet.get(12..16)?;
    let icmp = packet.get(header..)?;
    if icmp.len() < 8 || icmp[0] != ECHO_REPLY || icmp[1] != 0 {
        return None;
    }
    let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    Some((
        ident,
        EchoReply {
            from: Ipv4Addr::new(src[0], src[1], src[2], src[3]),
            seq,
        },
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_request_checksums_to_zero_and_its_reply_parses() {
        let req = echo_request(0x1234, 7);
        assert_eq!(checksum(&req), 0);
        // The reply as the kernel delivers it: a 20-byte IPv4 header, then
        // the request with type 0.
        let mut packet = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 5, 2, 0, 10, 5, 1, 0,
        ];
        let mut reply = req.clone();
        reply[0] = ECHO_REPLY;
        packet.extend_from_slice(&reply);
        let (ident, r) = parse_reply(&packet).unwrap();
        assert_eq!(ident, 0x1234);
        assert_eq!(
            r,
            EchoReply {
                from: Ipv4Addr::new(10, 5, 2, 0),
                seq: 7
            }
        );
        // Our own request looped back, truncated and non-ICMP packets are not replies.
        let mut own = packet.clone();
        own[20] = ECHO_REQUEST;
        assert_eq!(parse_reply(&own), None);
        assert_eq!(parse_reply(&packet[..24]), None);
        packet[9] = 17;
        assert_eq!(parse_reply(&packet), None);
        assert_eq!(parse_reply(&[]), None);
    }
}
