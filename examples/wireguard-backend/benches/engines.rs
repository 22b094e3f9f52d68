//! The WireGuard implementation, chosen by measurement: boringtun 0.7
//! against gotatun 0.10 (Mullvad's maintained fork), same run, same crypto
//! library (ring; gotatun's default aws-lc-rs was measured by hand, see
//! docs/custom-backend.md). One established session each way; a 1,420-byte
//! packet (the tunnel's MTU) encrypted by one side and decrypted by the
//! other, as the data path does: into a reused buffer for boringtun, through
//! gotatun's packet pool for gotatun (its API owns the buffers).
//!
//! `cargo bench -p twill-wireguard-backend --bench engines`
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const LEN: usize = 1420;

fn ip_packet() -> Vec<u8> {
    let mut p = vec![0u8; LEN];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(LEN).unwrap().to_be_bytes());
    p[12..16].copy_from_slice(&[10, 244, 1, 2]);
    p[16..20].copy_from_slice(&[10, 244, 2, 2]);
    p
}

fn boringtun(c: &mut Criterion) {
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};
    let (sa, sb) = (StaticSecret::from([1; 32]), StaticSecret::from([2; 32]));
    let (pa, pb) = (PublicKey::from(&sa), PublicKey::from(&sb));
    let mut a = Tunn::new(sa, pb, None, None, 1, None);
    let mut b = Tunn::new(sb, pa, None, None, 2, None);
    let (mut out_a, mut out_b) = (vec![0u8; 2048], vec![0u8; 2048]);
    let TunnResult::WriteToNetwork(init) = a.format_handshake_initiation(&mut out_a, false) else {
        panic!("no initiation");
    };
    let TunnResult::WriteToNetwork(resp) = b.decapsulate(None, init, &mut out_b) else {
        panic!("no response");
    };
    if let TunnResult::WriteToNetwork(k) = a.decapsulate(None, resp, &mut out_a) {
        let k = k.to_vec();
        let _ = b.decapsulate(None, &k, &mut out_b);
    }
    let packet = ip_packet();
    let mut g = c.benchmark_group("wireguard_engine");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.bench_function("boringtun_0_7/encrypt_decrypt_1420", |bench| {
        bench.iter(|| {
            let TunnResult::WriteToNetwork(ct) = a.encapsulate(&packet, &mut out_a) else {
                panic!("encapsulate");
            };
            let TunnResult::WriteToTunnelV4(pt, _) = b.decapsulate(None, ct, &mut out_b) else {
                panic!("decapsulate");
            };
            assert_eq!(pt.len(), LEN);
        });
    });
    g.finish();
}

fn gotatun(c: &mut Criterion) {
    use gotatun::noise::index_table::IndexTable;
    use gotatun::noise::rate_limiter::RateLimiter;
    use gotatun::noise::{Tunn, TunnResult};
    use gotatun::packet::{PacketBufPool, WgKind};
    use gotatun::x25519::{PublicKey, StaticSecret};
    use std::sync::Arc;
    let (sa, sb) = (StaticSecret::from([1; 32]), StaticSecret::from([2; 32]));
    let (pa, pb) = (PublicKey::from(&sa), PublicKey::from(&sb));
    let (ra, rb) = (
        Arc::new(RateLimiter::new(&pa, 100)),
        Arc::new(RateLimiter::new(&pb, 100)),
    );
    let mut a = Tunn::new(sa, pb, None, None, IndexTable::from_os_rng(), ra);
    let mut b = Tunn::new(sb, pa, None, None, IndexTable::from_os_rng(), rb);
    let init = a.format_handshake_initiation(false).unwrap();
    let TunnResult::WriteToNetwork(resp) = b.handle_incoming_packet(WgKind::HandshakeInit(init))
    else {
        panic!("no response");
    };
    if let TunnResult::WriteToNetwork(k) = a.handle_incoming_packet(resp) {
        let _ = b.handle_incoming_packet(k);
    }
    let packet = ip_packet();
    let pool: PacketBufPool = PacketBufPool::new(64);
    let mut g = c.benchmark_group("wireguard_engine");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.bench_function("gotatun_0_10/encrypt_decrypt_1420", |bench| {
        bench.iter(|| {
            let mut p = pool.get();
            p.buf_mut().clear();
            p.buf_mut().extend_from_slice(&packet);
            let Some(WgKind::Data(ct)) = a.handle_outgoing_packet(p, None) else {
                panic!("encapsulate");
            };
            let TunnResult::WriteToTunnel(pt) = b.handle_incoming_packet(WgKind::Data(ct)) else {
                panic!("decapsulate");
            };
            assert_eq!(pt.len(), LEN);
        });
    });
    g.finish();
}

criterion_group!(engines, boringtun, gotatun);
criterion_main!(engines);
