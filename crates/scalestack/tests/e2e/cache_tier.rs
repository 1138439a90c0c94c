//! The shared cache and the sessions on a Redis that `up` starts and
//! supervises: killing it under load fails no request and logs nobody out
//! (the cache is never a single point of failure; sessions fall back to
//! SQL); `up` restarts it and cache hits resume.

use crate::helpers::{free_port, signal, web_metric, Up};
use crate::{signup, upload_and_wait};
use nix::sys::signal::Signal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `scalestack_cache_requests_total{cache="photo",result=...}` over the web servers.
async fn photo_cache(up: &Up, result: &str) -> u64 {
    let result = format!("result=\"{result}\"");
    web_metric(
        up,
        "scalestack_cache_requests_total",
        &["cache=\"photo\"", &result],
    )
    .await as u64
}

#[tokio::test]
async fn redis_can_die_under_load_without_a_failed_request_or_a_lost_session() {
    let redis_port = free_port();
    let up = Up::web_tier(
        3,
        500,
        &format!(
            "[cache]\nkind = \"redis\"\nnear_ttl_ms = 100\n[sessions]\nkind = \"redis\"\n[redis]\nport = {redis_port}\n"
        ),
    );
    up.wait_up(90).await;
    let c = signup(&up.web, "popular").await;
    let photo = upload_and_wait(&up.web, &c).await;
    assert_eq!(photo["status"], "ready");
    let url = format!("{}/api/photos/{}", up.web, photo["id"].as_str().unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let logged_out = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for i in 0..16 {
        // Logged-in readers: their session is checked on every request.
        let http = signup(&up.web, &format!("fan{i}")).await;
        let (url, me) = (url.clone(), format!("{}/api/me", up.web));
        let (stop, ok, failed, logged_out) = (stop.clone(), ok.clone(), failed.clone(), logged_out.clone());
        readers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(SeqCst) {
                n += 1;
                let target = if n.is_multiple_of(2) { &url } else { &me };
                match http.get(target).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, SeqCst),
                    Ok(r) if r.status() == 401 => logged_out.fetch_add(1, SeqCst),
                    other => {
                        eprintln!("read failed: {other:?}");
                        failed.fetch_add(1, SeqCst)
                    }
                };
            }
        }));
    }
    // Photos are served from the cache (before Redis dies).
    let deadline = Instant::now() + Duration::from_secs(30);
    while photo_cache(&up, "hit").await == 0 {
        assert!(
            Instant::now() < deadline,
            "photos are not served from the cache:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fallbacks = || web_metric(&up, "scalestack_session_redis_fallbacks_total", &[]);
    let (errors_before, fallbacks_before) = (photo_cache(&up, "error").await, fallbacks().await);

    let redis = up.pid("redis").expect("up runs the managed redis");
    signal(redis, Signal::SIGKILL);
    // The readers run into the outage: cache errors served from the store,
    // session reads served from SQL.
    let deadline = Instant::now() + Duration::from_secs(30);
    while photo_cache(&up, "error").await == errors_before || fallbacks().await == fallbacks_before {
        assert!(
            Instant::now() < deadline,
            "the outage was never seen:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while up.pid("redis").is_none_or(|p| p == redis) {
        assert!(Instant::now() < deadline, "redis not restarted:\n{}", up.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Hits resume once the restarted (empty) Redis is filled again.
    let hits_after_restart = photo_cache(&up, "hit").await;
    loop {
        if photo_cache(&up, "hit").await > hits_after_restart + 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cache hits after redis restarted:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, SeqCst);
    for r in readers {
        r.await.unwrap();
    }
    let errors = photo_cache(&up, "error").await;
    println!(
        "redis killed under load: {} reads ok, {} failed, {} logged out, {errors} cache errors served from the store",
        ok.load(SeqCst),
        failed.load(SeqCst),
        logged_out.load(SeqCst)
    );
    assert_eq!(failed.load(SeqCst), 0);
    assert_eq!(logged_out.load(SeqCst), 0, "sessions survive the Redis outage");
    assert!(errors > 0, "the outage was seen (and absorbed)");
    assert!(
        fallbacks().await > 0.0,
        "session reads fell back to SQL and were counted"
    );
    // The Redis clients' breakers export what they saw, per tier.
    for tier in ["cache", "sessions"] {
        let label = format!("tier=\"{tier}\"");
        let failures = web_metric(&up, "scalestack_redis_failures_total", &[&label]).await;
        assert!(failures > 0.0, "the {tier} connection's failures are exported");
    }
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}
