//! The Registry contract, against the in-memory registry on a paused clock
//! (TTL expiry takes no real time).

use twill_subnet::contract::MemoryFixture;

async fn fresh() -> Option<MemoryFixture> {
    Some(MemoryFixture::default())
}

twill_subnet::registry_contract_tests!(fresh, tokio::test(start_paused = true));
