//! The memory tier's resident memory stays within its configured size plus
//! a small fixed overhead: every allocation is counted by a global
//! allocator, so this test has a process (a test binary) of its own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cdn::store::{MemoryConfig, MemoryStore, Object, ObjectMeta, Purge, PurgeMode};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed) as i64
}

/// xorshift64: a fixed sequence, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn object(rng: &mut Rng, i: u64, body: usize) -> Object {
    let mut meta = ObjectMeta::new(SystemTime::now())
        .with_url(format!("cdn.example/photos/{i}/variant"))
        .with_fresh_for(Duration::from_secs(60));
    if rng.below(2) == 0 {
        meta = meta.with_variant(format!("accept-encoding=gzip;{}", rng.below(3)));
    }
    for _ in 0..rng.below(3) {
        meta = meta.with_tag(format!("photo-{}", rng.below(1_000_000)));
    }
    if rng.below(4) == 0 {
        meta = meta.with_tag(Bytes::from_static(b"photos"));
    }
    Object::new(
        format!("GET cdn.example /photos/{i}/variant?w=640").into(),
        meta,
        Bytes::from(vec![b'h'; 150 + rng.below(200) as usize]),
        Bytes::from(vec![b'b'; body]),
    )
}

/// Fills the tier many times over with a mix of tiny and large objects,
/// and checks what is allocated against the configured size at every step.
fn check(sizes: impl Fn(&mut Rng, u64) -> usize, label: &str) {
    let capacity: u64 = 8 << 20;
    // The fixed overhead: the shard array, and the maps' and queues' slack
    // between the points where they grow or give memory back (the worst
    // seen is about 0.45 MiB, just after thousands of small objects gave
    // way to a few hundred large ones).
    let fixed: i64 = 768 * 1024;
    let before = live();
    let store = Arc::new(MemoryStore::new(MemoryConfig {
        capacity_bytes: capacity,
        ..MemoryConfig::default()
    }));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut worst = 0;
    for i in 0..60_000u64 {
        let key = rng.below(40_000);
        let body = sizes(&mut rng, i);
        store.insert(object(&mut rng, key, body)).unwrap();
        if i % 1000 == 0 {
            store.purge(&Purge::Tag("photos".into()), PurgeMode::Soft);
        }
        if i % 500 == 0 {
            let used = live() - before;
            worst = worst.max(used);
            if std::env::var_os("STORE_RESIDENT_TRACE").is_some() {
                println!("{label} {i}: {used} allocated, {} charged", store.stats().bytes);
            }
            assert!(
                used <= capacity as i64 + fixed,
                "{label}: {used} bytes allocated for a {capacity}-byte tier after {i} inserts"
            );
        }
    }
    let stats = store.stats();
    assert!(stats.evictions > 0, "{label}: the tier never filled");
    assert!(stats.bytes <= capacity);
    println!(
        "{label}: worst {worst} bytes for {capacity}, {} objects",
        stats.objects
    );
}

#[test]
fn resident_memory_stays_within_the_configured_size() {
    check(|_, _| 0, "empty bodies");
    check(|rng, _| rng.below(256) as usize, "tiny bodies");
    check(|rng, _| rng.below(64 * 1024) as usize, "mixed bodies");
    // Many small objects, then large ones: the maps grown for the small
    // ones must not stay grown.
    check(
        |rng, i| {
            if i < 30_000 {
                rng.below(256) as usize
            } else {
                16 * 1024 + rng.below(64 * 1024) as usize
            }
        },
        "small then large",
    );
}
