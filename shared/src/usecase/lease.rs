//! Generation leases: at most one delivery generates an image key at a time, so concurrent
//! duplicate deliveries (or two runs' jobs for one key) pay the provider once.
//!
//! A lease is a claim object under `leases/<key>/` in the bucket, created with a conditional
//! write; the common case (nobody ever claimed it) costs that one write. A claim older than the
//! TTL (its holder crashed mid-call) is taken over. Leases live beside the images rather than in the
//! run ledger because they belong to the image key, which several runs may share.

use std::time::Duration;

use crate::domain::events::{get_json, json_object, now_ms};
use crate::ports::store::{ObjectStore, PutOutcome, StoreError};

/// A held lease: the claim object to release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub claim: String,
    /// An earlier holder's claim expired: what it was doing may have finished since.
    pub taken_over: bool,
}

/// Takes the lease under `prefix` unless another caller holds a claim younger than `ttl`. The
/// common case (nobody ever claimed it) costs one conditional write.
pub async fn acquire<S: ObjectStore>(store: &S, prefix: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
    let first = claim_key(prefix, 1);
    if store.put_if_absent(&first, json_object(&now_ms())).await? == PutOutcome::Created {
        return Ok(Some(Lease {
            claim: first,
            taken_over: false,
        }));
    }
    let claim = format!("{prefix}claim-");
    let latest = store
        .list(&claim)
        .await?
        .iter()
        .filter_map(|k| k.strip_prefix(&claim)?.parse::<u32>().ok())
        .max()
        .unwrap_or(1);
    let claimed_at: u64 = get_json(store, &claim_key(prefix, latest)).await?.unwrap_or(0);
    if now_ms().saturating_sub(claimed_at) < ttl.as_millis() as u64 {
        return Ok(None);
    }
    let next = claim_key(prefix, latest + 1);
    Ok(
        (store.put_if_absent(&next, json_object(&now_ms())).await? == PutOutcome::Created).then_some(Lease {
            claim: next,
            taken_over: true,
        }),
    )
}

/// Gives a lease back at once (its holder failed), so the next caller need not wait for the TTL.
pub async fn release<S: ObjectStore>(store: &S, lease: &Lease) {
    if let Err(e) = store.put(&lease.claim, json_object(&0u64)).await {
        tracing::warn!(error = %e, claim = %lease.claim, "lease not released; it expires by itself");
    }
}

fn claim_key(prefix: &str, n: u32) -> String {
    format!("{prefix}claim-{n:06}")
}
