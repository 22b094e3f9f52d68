//! Listing many leases takes one request.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use common::*;
use etcd_client::{PutOptions, Txn, TxnOp};
use twill_model::LeaseKind;
use twill_subnet::Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_ten_thousand_leases_is_one_request() {
    twill_testbed::require_etcd!();
    let etcd = start_etcd();
    let raw = raw(&etcd).await;
    let mut lc = raw.clone();
    let lease = lc.lease_grant(3600, None).await.unwrap().id();

    // 10,000 leases, 100 puts per transaction, 4 transactions in flight;
    // every other one attached to an etcd lease.
    let write = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4u32 {
        let mut c = raw.clone();
        tasks.push(tokio::spawn(async move {
            for batch in (w..100).step_by(4) {
                let ops: Vec<TxnOp> = (0..100u32)
                    .map(|j| {
                        let i = batch * 100 + j;
                        let key = format!("{SUBNETS}10.{}.{}.0-24", i / 256, i % 256);
                        let value = format!(
                            r#"{{"PublicIP":"172.16.{}.{}","BackendType":"vxlan","BackendData":{{"VtepMAC":"6e:af:8f:41:72:26"}}}}"#,
                            i / 256,
                            i % 256
                        );
                        let opts = (i % 2 == 0).then(|| PutOptions::new().with_lease(lease));
                        TxnOp::put(key, value, opts)
                    })
                    .collect();
                c.txn(Txn::new().and_then(ops)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!("wrote 10,000 leases in {:?}", write.elapsed());

    let reg = connect(&etcd).await;
    let before = reg.requests_made();
    let start = Instant::now();
    let listing = reg.list_leases().await.unwrap();
    let took = start.elapsed();
    assert_eq!(reg.requests_made() - before, 1, "one range request");
    eprintln!("listed 10,000 leases in {took:?} (one request)");
    assert_eq!(listing.leases.len(), 10_000);
    assert!(listing.malformed.is_empty());
    let reservations = listing
        .leases
        .iter()
        .filter(|l| l.kind == LeaseKind::Reservation)
        .count();
    assert_eq!(reservations, 5_000);
    assert!(listing
        .leases
        .iter()
        .all(|l| l.revision <= listing.revision));
}
