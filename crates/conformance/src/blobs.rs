//! The battery of the `BlobStore` port, run against `LocalBlobStore` (and
//! every object store to come). Every case uses keys of its own, so the
//! cases share one store. What a store leaves on its medium (temporary
//! files) is adapter-specific.

use crate::support::{announce, unique};
use bytes::Bytes;
use domain::ports::BlobStore;
use domain::BlobKey;

fn key(s: &str) -> BlobKey {
    BlobKey::parse(s).unwrap()
}

/// Runs every case of the battery on `blobs`.
pub async fn run_all(blobs: &dyn BlobStore) {
    announce("blobs", "round_trip");
    round_trip(blobs).await;
    announce("blobs", "empty_and_large_objects");
    empty_and_large_objects(blobs).await;
    announce("blobs", "keys_are_independent");
    keys_are_independent(blobs).await;
    announce("blobs", "readers_never_see_half_an_object");
    readers_never_see_half_an_object(blobs).await;
}

/// A missing object is `None`; an object reads back as written; an
/// overwrite replaces it whole (a shorter one leaves no tail of the
/// longer); a delete (twice is fine) makes it missing.
pub async fn round_trip(blobs: &dyn BlobStore) {
    let k = key(&format!("variants/{}/thumbnail.jpg", unique("rt")));
    assert_eq!(blobs.get(&k).await.unwrap(), None);
    blobs.put(&k, Bytes::from_static(b"abc")).await.unwrap();
    assert_eq!(blobs.get(&k).await.unwrap().as_deref(), Some(&b"abc"[..]));
    blobs.put(&k, Bytes::from_static(b"abcd")).await.unwrap();
    assert_eq!(blobs.get(&k).await.unwrap().as_deref(), Some(&b"abcd"[..]));
    blobs.put(&k, Bytes::from_static(b"xy")).await.unwrap();
    assert_eq!(blobs.get(&k).await.unwrap().as_deref(), Some(&b"xy"[..]));
    blobs.delete(&k).await.unwrap();
    assert_eq!(blobs.get(&k).await.unwrap(), None);
    blobs.delete(&k).await.unwrap(); // twice is fine
    blobs
        .delete(&key(&format!("originals/{}.jpg", unique("never"))))
        .await
        .unwrap();
}

/// An empty object exists (it is not a missing one); a large object
/// (4 MiB, every byte value) reads back byte for byte.
pub async fn empty_and_large_objects(blobs: &dyn BlobStore) {
    let empty = key(&format!("originals/{}.png", unique("empty")));
    blobs.put(&empty, Bytes::new()).await.unwrap();
    assert_eq!(blobs.get(&empty).await.unwrap(), Some(Bytes::new()));

    let large = key(&format!("originals/{}.jpg", unique("large")));
    let bytes = Bytes::from((0..4 << 20).map(|i: u32| (i % 251) as u8).collect::<Vec<u8>>());
    blobs.put(&large, bytes.clone()).await.unwrap();
    assert!(
        blobs.get(&large).await.unwrap() == Some(bytes),
        "4 MiB round trip"
    );
    blobs.delete(&large).await.unwrap();
    blobs.delete(&empty).await.unwrap();
    assert_eq!(blobs.get(&empty).await.unwrap(), None);
}

/// Keys that share a prefix or a directory are distinct objects: writing
/// or deleting one leaves the others.
pub async fn keys_are_independent(blobs: &dyn BlobStore) {
    let id = unique("ind");
    let keys = [
        key(&format!("originals/{id}.jpg")),
        key(&format!("originals/{id}0.jpg")),
        key(&format!("variants/{id}/thumbnail.jpg")),
        key(&format!("variants/{id}/square.jpg")),
        key(&format!("variants/{id}0/thumbnail.jpg")),
    ];
    for (i, k) in keys.iter().enumerate() {
        blobs.put(k, Bytes::from(vec![i as u8; 10])).await.unwrap();
    }
    blobs.delete(&keys[0]).await.unwrap();
    blobs.delete(&keys[2]).await.unwrap();
    blobs.put(&keys[3], Bytes::from_static(b"new")).await.unwrap();
    assert_eq!(blobs.get(&keys[0]).await.unwrap(), None);
    assert_eq!(blobs.get(&keys[2]).await.unwrap(), None);
    assert_eq!(blobs.get(&keys[3]).await.unwrap().as_deref(), Some(&b"new"[..]));
    for i in [1, 4] {
        assert_eq!(
            blobs.get(&keys[i]).await.unwrap(),
            Some(Bytes::from(vec![i as u8; 10])),
            "{}",
            keys[i].as_str()
        );
    }
    for k in &keys {
        blobs.delete(k).await.unwrap();
    }
}

/// Writes are atomic: while one writer overwrites an object again and again
/// with two values of different lengths, concurrent readers only ever see
/// one of the two values whole.
pub async fn readers_never_see_half_an_object(blobs: &dyn BlobStore) {
    let k = key(&format!("variants/{}/square.jpg", unique("atomic")));
    let a = Bytes::from(vec![b'a'; 256 << 10]);
    let b = Bytes::from(vec![b'b'; 384 << 10]);
    blobs.put(&k, a.clone()).await.unwrap();
    let writer = async {
        for i in 0..40 {
            let v = if i % 2 == 0 { b.clone() } else { a.clone() };
            blobs.put(&k, v).await.unwrap();
        }
    };
    let reader = || async {
        let mut seen = 0;
        for _ in 0..40 {
            let got = blobs
                .get(&k)
                .await
                .unwrap()
                .expect("an overwritten object never goes missing");
            assert!(got == a || got == b, "a torn read of {} bytes", got.len());
            seen += 1;
        }
        seen
    };
    let (_, r1, r2) = tokio::join!(writer, reader(), reader());
    assert_eq!(r1 + r2, 80);
    blobs.delete(&k).await.unwrap();
}
