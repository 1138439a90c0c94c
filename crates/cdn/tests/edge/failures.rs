//! What the edge does when the origin fails or misbehaves, when a client
//! leaves mid-fill, and across a restart with the disk tier.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Stale on arrival, may be served for a minute if the origin fails.
const STALE_IF_ERROR: [(&str, &str); 2] =
    [("cache-control", "max-age=60, stale-if-error=600"), ("age", "60")];

#[tokio::test]
async fn stale_if_error_covers_refused_5xx_and_timed_out_origins() {
    let origin = Origin::start(|_, _| Reply::ok(&STALE_IF_ERROR, "kept")).await;
    let mut cfg = config(origin.addr);
    cfg.limits.origin_timeout_ms = 300;
    let edge = TestEdge::start(cfg).await;
    for p in ["/refused", "/5xx", "/timeout"] {
        assert_eq!(edge.get(p).await.text(), "kept");
    }
    let origin = origin
        .restart(|seen, _| match seen.target.as_str() {
            "/5xx" => Reply::status(503, &[], "down"),
            "/timeout" => Reply::Hang,
            _ => Reply::status(500, &[], "no"),
        })
        .await;
    for p in ["/5xx", "/timeout"] {
        let r = edge.get(p).await;
        assert_eq!((r.status, r.text().as_str()), (200, "kept"), "{p}: {r:?}");
        assert!(r.cache_status().contains("detail=stale-if-error"), "{p}: {r:?}");
    }
    assert!(edge.get("/5xx").await.cache_status().contains("fwd-status=503"));
    origin.stop();
    let refused = edge.get("/refused").await;
    assert_eq!(
        (refused.status, refused.text().as_str()),
        (200, "kept"),
        "{refused:?}"
    );
    // Nothing stored: the error goes through.
    let missing = edge.get("/never-stored").await;
    assert_eq!(missing.status, 502);
    assert!(
        edge.metric("scalestack_cdn_stale_served_total{reason=\"error\"}")
            .await
            >= 3.0
    );
}

#[tokio::test]
async fn must_revalidate_forbids_serving_stale_on_error() {
    let origin = Origin::start(|_, _| {
        Reply::ok(
            &[("cache-control", "max-age=60, must-revalidate"), ("age", "60")],
            "strict",
        )
    })
    .await;
    let edge = TestEdge::start(config(origin.addr)).await;
    edge.get("/mr").await;
    origin.stop();
    assert_eq!(
        edge.get("/mr").await.status,
        502,
        "grace does not override must-revalidate"
    );
}

#[tokio::test]
async fn malformed_or_smuggling_shaped_origin_answers_are_never_stored() {
    let origin = Origin::start(|seen, _| {
        let head = match seen.target.as_str() {
            "/cl-te" => "HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "/two-cl" => "HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
            "/plus-cl" => "HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: +5\r\n\r\nhello",
            "/bare-lf" => "HTTP/1.1 200 OK\ncache-control: max-age=600\ncontent-length: 5\n\nhello",
            "/short" => "HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: 100\r\n\r\nonly this",
            _ => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        };
        Reply::Raw(head.as_bytes().to_vec())
    })
    .await;
    let edge = TestEdge::start(config(origin.addr)).await;
    for p in ["/cl-te", "/two-cl", "/plus-cl", "/bare-lf"] {
        assert_eq!(edge.get(p).await.status, 502, "{p}");
        assert_eq!(edge.get(p).await.status, 502, "{p}: asked again, not stored");
        assert_eq!(origin.count(p), 2, "{p}");
    }
    // A body cut short: the client sees the cut (no complete answer) and
    // nothing is stored.
    let first = edge.get("/short").await;
    assert!(first.body.len() < 100, "{first:?}");
    edge.get("/short").await;
    assert_eq!(origin.count("/short"), 2, "a truncated body was not stored");
    assert!(edge.metric("scalestack_cdn_origin_errors_total").await >= 9.0);
}

#[tokio::test]
async fn a_client_that_leaves_mid_fill_leaves_no_truncated_object() {
    let big = "x".repeat(256 * 1024);
    let body = big.clone();
    let origin = Origin::start(move |_, _| {
        Reply::ok(&[("cache-control", "max-age=600")], &body).delayed(Duration::from_millis(50))
    })
    .await;
    let edge = TestEdge::start(config(origin.addr)).await;
    // Read the head and a little, then go.
    let mut conn = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    conn.write_all(b"GET /big HTTP/1.1\r\nHost: cdn.test\r\n\r\n")
        .await
        .unwrap();
    let mut some = [0u8; 512];
    let _ = conn.read(&mut some).await.unwrap();
    drop(conn);
    // The fill went on without its client: the next request is a hit with
    // the whole body, or (had it been dropped) a fresh miss, never a part.
    let mut hit = None;
    for _ in 0..200 {
        let r = edge.get("/big").await;
        assert_eq!(r.body.len(), big.len(), "never a truncated object");
        if r.is_hit() {
            hit = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(hit.is_some(), "the abandoned fill was completed and stored");
    assert_eq!(origin.count("/big"), 1);
}

#[tokio::test]
async fn answers_over_the_object_limit_stream_through_uncached() {
    let big = "y".repeat(2 << 20);
    let body = big.clone();
    let origin = Origin::start(move |_, _| Reply::ok(&[("cache-control", "max-age=600")], &body)).await;
    let edge = TestEdge::start(config(origin.addr)).await; // 1 MiB per object
    let first = edge.get("/huge").await;
    assert_eq!(first.body.len(), big.len());
    assert!(first.cache_status().contains("detail=too-large"), "{first:?}");
    // Remembered: the next one goes straight through.
    let second = edge.get("/huge").await;
    assert_eq!(second.body.len(), big.len());
    assert!(
        second.cache_status().contains("detail=hit-for-miss"),
        "{second:?}"
    );
    assert_eq!(origin.count("/huge"), 2);
}

#[tokio::test]
async fn the_disk_tier_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start(|_, n| Reply::ok(&[CACHEABLE_LONG], &format!("disk {n}"))).await;
    let mut cfg = config(origin.addr);
    cfg.disk = Some(cdn::config::DiskSection {
        dir: dir.path().to_path_buf(),
        capacity_bytes: 64 << 20,
        max_object_bytes: 8 << 20,
    });
    let edge = TestEdge::start(cfg.clone()).await;
    assert_eq!(edge.get("/d").await.text(), "disk 1");
    assert!(edge.get("/d").await.is_hit());
    edge.stop().await;
    let edge = TestEdge::start(cfg).await;
    let after = edge.get("/d").await;
    assert!(after.is_hit(), "{after:?}");
    assert_eq!(after.text(), "disk 1");
    assert_eq!(origin.count("/d"), 1, "nothing fetched again after the restart");
}

const CACHEABLE_LONG: (&str, &str) = ("cache-control", "public, max-age=3600");
