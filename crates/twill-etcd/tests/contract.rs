//! The Registry contract (`twill_subnet::contract`), against EtcdRegistry
//! on a real etcd: one etcd process per check, since compaction is global.
#![allow(clippy::unwrap_used)]

mod common;

use async_trait::async_trait;
use etcd_client::{CompactionOptions, PutOptions};
use twill_etcd::EtcdRegistry;
use twill_subnet::contract::{ContractFixture, FixtureError};
use twill_subnet::Registry;
use twill_testbed::etcd::EtcdServer;

/// A registry on its own etcd, and a plain client playing the operator.
struct EtcdFixture {
    registry: EtcdRegistry,
    raw: etcd_client::Client,
    prefix: String,
    // Dropped last: stops the etcd process.
    _etcd: EtcdServer,
}

async fn fresh() -> Option<EtcdFixture> {
    if let Err(reason) = twill_testbed::etcd::check_etcd() {
        twill_testbed::skip_or_fail(&reason);
        return None;
    }
    let etcd = common::start_etcd();
    let registry = common::connect(&etcd).await;
    let raw = common::raw(&etcd).await;
    Some(EtcdFixture {
        prefix: registry.config().prefix.clone(),
        registry,
        raw,
        _etcd: etcd,
    })
}

#[async_trait]
impl ContractFixture for EtcdFixture {
    fn registry(&self) -> &dyn Registry {
        &self.registry
    }

    async fn put_config(&self, json: &str) -> Result<(), FixtureError> {
        let key = format!("{}/config", self.prefix);
        self.raw.clone().put(key, json, None).await?;
        Ok(())
    }

    async fn put_raw(&self, name: &str, value: &[u8]) -> Result<(), FixtureError> {
        let key = format!("{}/subnets/{name}", self.prefix);
        self.raw.clone().put(key, value, None).await?;
        Ok(())
    }

    async fn overwrite_in_place(&self, name: &str, value: &[u8]) -> Result<(), FixtureError> {
        let key = format!("{}/subnets/{name}", self.prefix);
        let opts = PutOptions::new().with_ignore_lease();
        self.raw.clone().put(key, value, Some(opts)).await?;
        Ok(())
    }

    async fn compact(&self) -> Result<(), FixtureError> {
        let mut raw = self.raw.clone();
        let revision = raw
            .get("/", None)
            .await?
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision);
        raw.compact(revision, Some(CompactionOptions::new().with_physical()))
            .await?;
        Ok(())
    }
}

twill_subnet::registry_contract_tests!(fresh, tokio::test);
