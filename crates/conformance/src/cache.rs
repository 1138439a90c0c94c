//! The battery of the `Cache` port, run against the in-process cache (each
//! eviction policy), `NearCache` and `RedisCache`.
//!
//! Load claims differ legitimately between adapters, so they are a
//! parameter ([`Claims`]) rather than a skipped case: a shared cache grants
//! a key's claim to one caller at a time, one process's memory grants every
//! claim. Every case uses keys of its own, so the cases share one cache.
//! Eviction order, near-cache staleness and outages are adapter-specific.

use crate::support::{announce, eventually, unique, wait_past};
use bytes::Bytes;
use domain::now_millis;
use domain::ports::Cache;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// A TTL short enough to wait out in a test.
const SHORT: Duration = Duration::from_millis(50);

/// What an adapter's load claims promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claims {
    /// One holder per key among every process sharing the cache, until it
    /// releases the claim or the claim's TTL runs out (Redis `SET NX PX`).
    Exclusive,
    /// Every claim is granted: the cache cannot coordinate (one process's
    /// memory); the port's default.
    AlwaysGranted,
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// Runs every case of the battery on `cache`, whose load claims behave as
/// `claims` says.
pub async fn run_all(cache: &dyn Cache, claims: Claims) {
    announce("cache", "round_trip");
    round_trip(cache).await;
    announce("cache", "keys_are_independent");
    keys_are_independent(cache).await;
    announce("cache", "entries_expire_after_their_ttl");
    entries_expire_after_their_ttl(cache).await;
    announce("cache", "an_overwrite_sets_a_new_ttl");
    an_overwrite_sets_a_new_ttl(cache).await;
    announce("cache", "load_claims");
    load_claims(cache, claims).await;
}

/// Missing keys miss; a value reads back byte for byte (binary and empty
/// values included: an empty value is a hit, not a miss); an overwrite
/// replaces it; a delete (twice, or of a missing key, is fine) makes it miss.
pub async fn round_trip(cache: &dyn Cache) {
    let k = unique("k");
    assert_eq!(cache.get(&k).await.unwrap(), None);
    cache.set(&k, b("v1"), MINUTE).await.unwrap();
    assert_eq!(cache.get(&k).await.unwrap(), Some(b("v1")));
    // Reading does not consume it.
    assert_eq!(cache.get(&k).await.unwrap(), Some(b("v1")));
    cache.set(&k, b("v2"), MINUTE).await.unwrap();
    assert_eq!(cache.get(&k).await.unwrap(), Some(b("v2")));

    // Binary values survive untouched.
    let bin = unique("bin");
    let binary = Bytes::from((0..=255u8).collect::<Vec<u8>>());
    cache.set(&bin, binary.clone(), MINUTE).await.unwrap();
    assert_eq!(cache.get(&bin).await.unwrap(), Some(binary));
    let empty = unique("empty");
    cache.set(&empty, Bytes::new(), MINUTE).await.unwrap();
    assert_eq!(cache.get(&empty).await.unwrap(), Some(Bytes::new()));

    cache.delete(&k).await.unwrap();
    assert_eq!(cache.get(&k).await.unwrap(), None);
    // Deleting a missing key is not an error.
    cache.delete(&k).await.unwrap();
    cache.delete(&unique("never")).await.unwrap();
}

/// Keys that share a prefix or contain separators are distinct entries:
/// writing or deleting one leaves the others.
pub async fn keys_are_independent(cache: &dyn Cache) {
    let base = unique("photo");
    let keys = [
        base.clone(),
        format!("{base}1"),
        format!("{base}:1"),
        format!("{base}/1 x"),
    ];
    for (i, k) in keys.iter().enumerate() {
        cache.set(k, Bytes::from(vec![i as u8; 3]), MINUTE).await.unwrap();
    }
    cache.delete(&keys[0]).await.unwrap();
    cache.set(&keys[1], b("new"), MINUTE).await.unwrap();
    assert_eq!(cache.get(&keys[0]).await.unwrap(), None);
    assert_eq!(cache.get(&keys[1]).await.unwrap(), Some(b("new")));
    for (i, k) in keys.iter().enumerate().skip(2) {
        assert_eq!(
            cache.get(k).await.unwrap(),
            Some(Bytes::from(vec![i as u8; 3])),
            "{k}"
        );
    }
}

/// An entry misses once its TTL ran out; an entry set at the same time with
/// a longer TTL is still served.
pub async fn entries_expire_after_their_ttl(cache: &dyn Cache) {
    let (short, long) = (unique("short"), unique("long"));
    cache.set(&long, b("v"), MINUTE).await.unwrap();
    cache.set(&short, b("v"), SHORT).await.unwrap();
    eventually("the short entry expires", || async {
        cache.get(&short).await.unwrap().is_none()
    })
    .await;
    assert_eq!(cache.get(&long).await.unwrap(), Some(b("v")));
}

/// An overwrite replaces the TTL with its own: a long entry overwritten
/// with a short TTL expires; a short entry overwritten with a long TTL
/// outlives a twin that kept the short one.
pub async fn an_overwrite_sets_a_new_ttl(cache: &dyn Cache) {
    let shortened = unique("shortened");
    cache.set(&shortened, b("v"), MINUTE).await.unwrap();
    cache.set(&shortened, b("v2"), SHORT).await.unwrap();
    eventually("the shortened entry expires", || async {
        cache.get(&shortened).await.unwrap().is_none()
    })
    .await;

    let (lengthened, twin) = (unique("lengthened"), unique("twin"));
    let set_at = now_millis();
    cache.set(&lengthened, b("v"), SHORT).await.unwrap();
    cache.set(&twin, b("v"), SHORT).await.unwrap();
    cache.set(&lengthened, b("v2"), MINUTE).await.unwrap();
    eventually("the twin expires", || async {
        cache.get(&twin).await.unwrap().is_none()
    })
    .await;
    // Past twice the short TTL too, in case the adapter jitters TTLs.
    wait_past(set_at + 2 * SHORT.as_millis() as i64).await;
    assert_eq!(cache.get(&lengthened).await.unwrap(), Some(b("v2")));
}

/// Load claims as `claims` says. Exclusive: a held claim is refused to the
/// next caller until released or expired, claims on other keys are
/// independent. Always granted: every caller may load. Either way a claim
/// is not a value.
pub async fn load_claims(cache: &dyn Cache, claims: Claims) {
    let (k, other) = (unique("claimed"), unique("unclaimed"));
    assert!(cache.claim_load(&k, MINUTE).await, "a first claim is granted");
    let second = cache.claim_load(&k, MINUTE).await;
    match claims {
        Claims::Exclusive => assert!(!second, "a held claim is refused"),
        Claims::AlwaysGranted => assert!(second, "every claim is granted"),
    }
    assert!(cache.claim_load(&other, MINUTE).await, "claims are per key");
    assert_eq!(cache.get(&k).await.unwrap(), None, "a claim is not a value");
    cache.release_load(&k).await;
    assert!(cache.claim_load(&k, MINUTE).await, "a released claim is granted");
    cache.release_load(&k).await;
    cache.release_load(&k).await; // twice is fine
    cache.release_load(&other).await;

    // A holder that dies without releasing holds the claim only for its TTL.
    let abandoned = unique("abandoned");
    assert!(cache.claim_load(&abandoned, SHORT).await);
    eventually("the abandoned claim expires", || async {
        cache.claim_load(&abandoned, SHORT).await
    })
    .await;
    cache.release_load(&abandoned).await;
}
