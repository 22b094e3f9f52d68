//! Grouping encrypted datagrams into UDP GSO sends: plain data, no IO.
//!
//! One `sendmsg` with `UDP_SEGMENT` carries many datagrams to one
//! destination if they sit back to back in one buffer and all have the
//! segment's size but the last, which may be shorter. A TSO super-packet
//! read from the TUN splits into equal-size segments (and a short tail), so
//! its ciphertexts fit one send; [`GsoBatch`] decides where a send ends.

use std::net::SocketAddr;

/// The kernel's ceiling for one UDP GSO send: the payload of one IPv4
/// datagram (65,535 minus the IPv4 and UDP headers).
pub(crate) const MAX_GSO_BYTES: usize = 65_535 - 20 - 8;
/// The kernel's `UDP_MAX_SEGMENTS`.
pub(crate) const MAX_GSO_SEGMENTS: usize = 64;

/// Where the next datagram goes, as decided by [`GsoBatch::place`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// It extends the batch: it is already where it belongs.
    Appended,
    /// The batch must be sent first; the datagram (which was written after
    /// it) then starts a new batch at offset 0.
    FlushFirst(Flush),
}

/// A batch to send: `[0, end)` of the buffer, to `to`, in datagrams of
/// `segment` bytes (the last may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flush {
    /// Bytes of the batch.
    pub(crate) end: usize,
    /// Its destination.
    pub(crate) to: SocketAddr,
    /// Its segment size.
    pub(crate) segment: usize,
    /// Its datagrams.
    pub(crate) count: usize,
}

/// The batch being built: datagrams at `[0, len)` of the caller's buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GsoBatch {
    to: Option<SocketAddr>,
    segment: usize,
    count: usize,
    len: usize,
    /// A shorter datagram ended the batch: nothing more may follow it.
    closed: bool,
    max_segments: usize,
}

impl GsoBatch {
    /// An empty batch of at most `max_segments` datagrams per send (what
    /// the socket supports; 1 without GSO).
    pub(crate) fn new(max_segments: usize) -> Self {
        GsoBatch {
            max_segments: max_segments.clamp(1, MAX_GSO_SEGMENTS),
            ..GsoBatch::default()
        }
    }

    /// Bytes of the batch (where the next datagram is written).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Sets how many datagrams one send may carry (from the next batch on).
    pub(crate) fn set_max_segments(&mut self, max_segments: usize) {
        self.max_segments = max_segments.clamp(1, MAX_GSO_SEGMENTS);
    }

    /// The batch so far, to send as it is: the batch is then empty.
    pub(crate) fn take(&mut self) -> Option<Flush> {
        let flush = self.flush();
        *self = GsoBatch::new(self.max_segments);
        flush
    }

    fn flush(&self) -> Option<Flush> {
        Some(Flush {
            end: self.len,
            to: self.to?,
            segment: self.segment,
            count: self.count,
        })
        .filter(|f| f.count > 0)
    }

    /// Takes a datagram of `len` bytes for `to`, already written at
    /// `[self.len(), self.len() + len)`.
    pub(crate) fn place(&mut self, to: SocketAddr, len: usize) -> Placement {
        let fits = self.to == Some(to)
            && !self.closed
            && len <= self.segment
            && self.count < self.max_segments
            && self.len + len <= MAX_GSO_BYTES;
        match self.flush() {
            Some(_) if fits => {
                // A shorter datagram is the last one a GSO send allows.
                self.closed = len < self.segment;
                self.count += 1;
                self.len += len;
                Placement::Appended
            }
            previous => {
                *self = GsoBatch {
                    to: Some(to),
                    segment: len,
                    count: 1,
                    len,
                    closed: false,
                    max_segments: self.max_segments,
                };
                previous.map_or(Placement::Appended, Placement::FlushFirst)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 2], port))
    }

    #[test]
    fn equal_segments_and_a_short_tail_make_one_send() {
        let mut b = GsoBatch::new(64);
        for _ in 0..3 {
            assert_eq!(b.place(a(1), 1452), Placement::Appended);
        }
        assert_eq!(b.place(a(1), 500), Placement::Appended);
        // Nothing may follow the short tail.
        assert_eq!(
            b.place(a(1), 1452),
            Placement::FlushFirst(Flush {
                end: 3 * 1452 + 500,
                to: a(1),
                segment: 1452,
                count: 4
            })
        );
        assert_eq!(b.len(), 1452);
        let last = b.take().unwrap();
        assert_eq!((last.count, last.end), (1, 1452));
        assert_eq!(b.take(), None);
    }

    #[test]
    fn another_destination_or_a_longer_datagram_flushes() {
        let mut b = GsoBatch::new(64);
        b.place(a(1), 1000);
        let flushed = |p: Placement| match p {
            Placement::FlushFirst(f) => (f.to, f.end),
            Placement::Appended => panic!("appended"),
        };
        assert_eq!(flushed(b.place(a(2), 1000)), (a(1), 1000));
        assert_eq!(flushed(b.place(a(2), 1001)), (a(2), 1000));
        assert_eq!(b.take().map(|f| (f.to, f.segment)), Some((a(2), 1001)));
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_send() {
        let mut b = GsoBatch::new(1);
        assert_eq!(b.place(a(1), 100), Placement::Appended);
        assert!(matches!(b.place(a(1), 100), Placement::FlushFirst(f) if f.end == 100));
    }

    proptest! {
        /// Whatever arrives, every batch is one destination, equal segments
        /// but a shorter last one, within the kernel's limits, and no
        /// datagram is lost or reordered.
        #[test]
        fn batches_are_valid_gso_sends(
            input in proptest::collection::vec((0u16..3, 1usize..1500), 1..300),
            max in 1usize..70,
        ) {
            let mut b = GsoBatch::new(max);
            let mut sends: Vec<(u16, Vec<usize>)> = Vec::new();
            let mut current: (u16, Vec<usize>) = (input[0].0, Vec::new());
            for &(port, len) in &input {
                match b.place(a(port), len) {
                    Placement::Appended => {
                        prop_assert_eq!(current.0, port);
                        current.1.push(len);
                    }
                    Placement::FlushFirst(f) => {
                        prop_assert_eq!(f.end, current.1.iter().sum::<usize>());
                        prop_assert_eq!(f.to, a(current.0));
                        prop_assert_eq!(f.segment, current.1[0]);
                        prop_assert_eq!(f.count, current.1.len());
                        sends.push(std::mem::replace(&mut current, (port, vec![len])));
                    }
                }
                prop_assert_eq!(b.len(), current.1.iter().sum::<usize>());
            }
            let last = b.take().unwrap();
            prop_assert_eq!((last.to, last.count), (a(current.0), current.1.len()));
            sends.push(current);
            let flat: Vec<usize> = sends.iter().flat_map(|(_, v)| v.clone()).collect();
            prop_assert_eq!(flat, input.iter().map(|&(_, l)| l).collect::<Vec<_>>());
            for (_, send) in &sends {
                prop_assert!(send.len() <= max.clamp(1, MAX_GSO_SEGMENTS));
                prop_assert!(send.len() == 1 || send.iter().sum::<usize>() <= MAX_GSO_BYTES);
                let (last, rest) = send.split_last().unwrap();
                prop_assert!(rest.iter().all(|l| *l == send[0]));
                prop_assert!(*last <= send[0]);
            }
        }
    }
}
