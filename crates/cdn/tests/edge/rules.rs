//! RFC 9111 / 9213 / 5861 rules, request coalescing, ranges, purges and
//! poisoning attempts.

use std::time::Duration;

use super::*;

const CACHEABLE: (&str, &str) = ("cache-control", "public, max-age=600");

#[tokio::test]
async fn a_fresh_object_is_a_hit_with_age_and_cache_status() {
    let origin =
        Origin::start(|_, n| Reply::ok(&[CACHEABLE, ("etag", "\"v1\"")], &format!("body {n}"))).await;
    let edge = TestEdge::start(config(origin.addr)).await;
    let first = edge.get("/a").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "body 1");
    assert!(
        first.cache_status().contains("fwd=miss") && first.cache_status().contains("stored"),
        "{first:?}"
    );
    let second = edge.get("/a").await;
    assert_eq!(second.text(), "body 1");
    assert!(second.is_hit(), "{second:?}");
    assert!(second.header("age").is_some(), "every stored answer has an Age");
    assert_eq!(origin.count("/a"), 1);
    // HEAD is answered from the stored GET.
    let head = edge.request("HEAD", "/a", &[]).await;
    assert!(head.is_hit(), "{head:?}");
    assert_eq!(head.header("content-length"), Some("6"));
    assert_eq!(origin.count("/a"), 1);
    assert_eq!(
        edge.metric("scalestack_cdn_requests_total{outcome=\"hit\"}")
            .await,
        2.0
    );
    assert!(edge.metric("scalestack_cdn_hit_ratio").await > 0.5);
}

#[tokio::test]
async fn an_expired_object_is_revalidated_and_a_304_updates_it() {
    // `Age` equal to `max-age`: stale the moment it arrives, no waiting.
    let origin = Origin::start(|seen, n| match n {
        1 => Reply::ok(
            &[
                ("cache-control", "max-age=60"),
                ("age", "60"),
                ("etag", "\"v1\""),
                ("x-version", "1"),
            ],
            "original",
        ),
        _ => {
            assert_eq!(
                seen.header("if-none-match"),
                Some("\"v1\""),
                "a conditional request"
            );
            Reply::status(
                304,
                &[
                    ("cache-control", "max-age=600"),
                    ("etag", "\"v1\""),
                    ("x-version", "2"),
                ],
                "",
            )
        }
    })
    .await;
    let edge = TestEdge::start(config(origin.addr)).await;
    assert_eq!(edge.get("/e").await.text(), "original");
    let second = edge.get("/e").await;
    assert_eq!(origin.count("/e"), 2, "stale: asked again");
    assert_eq!(second.text(), "original", "the body comes from storage");
    assert_eq!(
        second.header("x-version"),
        Some("2"),
        "the 304 updated the stored fields"
    );
    assert!(second.cache_status().contains("fwd-status=304"), "{second:?}");
    let third = edge.get("/e").await;
    assert!(
        third.is_hit() && third.header("x-version") == Some("2"),
        "{third:?}"
    );
    assert_eq!(origin.count("/e"), 2);
}

#[tokio::test]
async fn directives_decide_what_is_stored() {
    let origin = Origin::start(|seen, _| {
        let cc = match seen.target.as_str() {
            "/no-store" => "no-store, max-age=600",
            "/private" => "private, max-age=600",
            "/no-cache" => "no-cache, max-age=600",
            "/s-maxage" => "max-age=0, s-maxage=600",
            "/plain-max-age-0" => "max-age=0",
            "/cookie" => "public, max-age=600",
            "/auth-public" => "public, max-age=600",
            "/auth-plain" => "max-age=600",
            _ => "max-age=600",
        };
        let mut h = vec![("cache-control", cc), ("etag", "\"e\"")];
        if seen.target == "/cookie" {
            h.push(("set-cookie", "id=1"));
        }
        Reply::ok(&h, "x")
    })
    .await;
    let edge = TestEdge::start(config(origin.addr)).await;
    for (path, stored) in [
        ("/no-store", false),
        ("/private", false),
        ("/s-maxage", true),
        ("/plain-max-age-0", false),
        ("/cookie", false),
    ] {
        edge.get(path).await;
        let second = edge.get(path).await;
        assert_eq!(second.is_hit(), stored, "{path}: {second:?}");
        assert_eq!(origin.count(path), if stored { 1 } else { 2 }, "{path}");
    }
    // no-cache: stored, but every reuse is validated first.
    edge.get("/no-cache").await;
    let again = edge.get("/no-cache").await;
    assert_eq!(origin.count("/no-cache"), 2);
    assert!(again.cache_status().contains("fwd-status="), "{again:?}");
    // Authorization: stored only when the response says public (or
    // s-maxage, must-revalidate).
    let auth = [("authorization", "Bearer x")];
    edge.request("GET", "/auth-plain", &auth).await;
    edge.request("GET", "/auth-plain", &auth).await;
    assert_eq!(origin.count("/auth-plain"), 2);
    edge.request("GET", "/auth-public", &auth).await;
    assert!(edge.request("GET", "/auth-public", &auth).await.is_hit());
    assert_eq!(origin.count("/auth-public"), 1);
}

#[tokio::test]
async fn edge_targeted_fields_rule_the_edge_and_never_reach_clients() {
    let origin = Origin::start(|seen, _| {
        let edge_field = if seen.target == "/cdn-cc" {
            "cdn-cache-control"
        } else {
            "surrogate-control"
        };
        Reply::ok(
            &[
                ("cache-control", "no-store"),
                (edge_field, "max-age=600"),
                ("surrogate-key", "k1 k2"),
            ],
            "x",
        )
    })
    .await;
    let edge = TestEdge::start(config(origin.addr)).await;
    for path in ["/cdn-cc", "/surrogate"] {
        let first = edge.get(path).await;
        let second = edge.get(path).await;
        assert!(second.is_hit(), "{path}: {second:?}");
        for r in [&first, &second] {
            assert_eq!(
                r.header("cache-control"),
                Some("no-store"),
                "browsers still get the origin's"
            );
            assert!(r.header("cdn-cache-control").is_none() && r.header("surrogate-control").is_none());
            assert!(r.header("surrogate-key").is_none(), "purge tags stay at the edge");
        }
        assert_eq!(origin.count(path), 1);
    }
}

#[tokio::test]
async fn vary_keeps_one_variant_per_normalised_value() {
    let origin = Origin::start(|seen, _| {
        let enc = seen.header("accept-encoding").unwrap_or("none").to_string();
        Reply::ok(&[CACHEABLE, ("vary", "Accept-Encoding")], &format!("for {enc}"))
    })
    .await;
    let edge = TestEdge::start(config(origin.addr)).await;
    let gzip = edge
        .request("GET", "/v", &[("accept-encoding", "gzip, deflate")])
        .await;
    let br = edge.request("GET", "/v", &[("accept-encoding", "br")]).await;
    assert_eq!(gzip.text(), "for gzip, deflate");
    assert_eq!(br.text(), "for br");
    assert_eq!(origin.count("/v"), 2);
    // `deflate, gzip` accepts the same of our codings as `gzip, deflate`.
    let again = edge
        .request("GET", "/v", &[("accept-encoding", "deflate, gzip")])
        .await;
    assert!(again.is_hit() && again.text() == "for gzip, deflate", "{again:?}");
    assert!(edge
        .request("GET", "/v", &[("accept-encoding", "br")])
        .await
        .is_hit());
    assert_eq!(origin.count("/v"), 2);
}

#[tokio::test]
async fn a_successful_unsafe_request_invalidates_the_url_and_its_location() {
    let origin = Origin::start(|seen, _| match seen.method.as_str() {
        "POST" => Reply::status(201, &[("location", "/items/2")], "made"),
        _ => Reply::ok(&[CACHEABLE], "item"),
    })
    .await;
    let edge = TestEdge::start(config(origin.addr)).await;
    for p in ["/items", "/items/2"] {
        edge.get(p).await;
        assert!(edge.get(p).await.is_hit());
    }
    let post = edge.request("POST", "/items", &[]).await;
    assert_eq!(post.status, 201);
    assert!(post.cache_status().contains("fwd=method"), "{post:?}");
    for p in ["/items", "/items/2"] {
        assert!(!edge.get(p).await.is_hit(), "{p} was invalidated");
    }
    assert_eq!(edge.metric("scalestack_cdn_invalidations_total").await, 2.0);
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_exactly_once() {
    let origin = Origin::start(|_, n| match n {
        // Stale on arrival (Age = max-age), within stale-while-revalidate.
        1 => Reply::ok(
            &[
                ("cache-control", "max-age=60, stale-while-revalidate=600"),
                ("age", "60"),
            ],
            "v1",
        ),
        // The refresh is slow, so every request below arrives while it runs.
        _ => Reply::ok(&[CACHEABLE], &format!("v{n}")).delayed(Duration::from_millis(300)),
    })
    .await;
    let edge = TestEdge::start(config(origin.addr)).await;
    assert_eq!(edge.get("/swr").await.text(), "v1");
    for _ in 0..5 {
        let r = edge.get("/swr").await;
        assert_eq!(r.text(), "v1", "stale, at once");
        assert!(r.cache_status().contains("stale-while-revalidate"), "{r:?}");
    }
    eventually("the one refresh reached the origin", || origin.count("/swr") == 2).await;
    let mut refreshed = false;
    for _ in 0..500 {
        let r = edge.get("/swr").await;
        if r.text() == "v2" {
            assert!(r.is_hit(), "{r:?}");
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refreshed, "the refresh replaced the object");
    assert_eq!(origin.count("/swr"), 2, "six stale answers, one refresh");
    assert_eq!(
        edge.metric("scalestack_cdn_origin_requests_total{kind=\"refresh\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_origin_request() {
    let origin =
        Origin::start(|_, _| Reply::ok(&[CACHEABLE], "popular").delayed(Duration::from_millis(300))).await;
    let edge = TestEdge::start(config(origin.addr)).await;
    let addr = edge.addr;
    let clients: Vec<_> = (0..100)
        .map(|_| {
            tokio::spawn(async move {
                raw(
                    addr,
                    b"GET /hot HTTP/1.1\r\nHost: cdn.test\r\nConnection: close\r\n\r\n",
                    false,
                )
                .await
            })
        })
        .collect();
    for c in clients {
        let r = c.await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "popular"));
    }
    assert_eq!(origin.count("/hot"), 1, "coalesced into one origin request");
    assert!(edge.metric("scalestack_cdn_coalesced_waits_total").await >= 1.0);
}

#[tokio::test]
async fn an_uncacheable_answer_releases_waiters_and_is_remembered_as_hit_for_miss() {
    let origin = Origin::start(|_, _| {
        Reply::ok(&[("cache-control", "private")], "yours").delayed(Duration::from_millis(200))
    })
    .await;
    let edge = TestEdge::start(config(origin.addr)).await;
    let addr = edge.addr;
    let req = b"GET /private HTTP/1.1\r\nHost: cdn.test\r\nConnection: close\r\n\r\n";
    // The first wave: one leads, the others are released at its answer.
    let wave: Vec<_> = (0..5).map(|_| tokio::spawn(raw(addr, req, false))).collect();
    for c in wave {
        assert_eq!(c.await.unwrap().status, 200);
    }
    // Now marked hit-for-miss: ten requests go to the origin side by side.
    let before = origin.count("/private");
    let wave: Vec<_> = (0..10).map(|_| tokio::spawn(raw(addr, req, false))).collect();
    let mut detail = String::new();
    for c in wave {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200);
        detail = r.cache_status().to_string();
    }
    assert_eq!(origin.count("/private") - before, 10, "each asked the origin");
    assert!(origin.max_concurrent() >= 2, "not serialised behind one another");
    assert!(detail.contains("hit-for-miss"), "{detail}");
}

#[tokio::test]
async fn ranges_are_answered_from_the_stored_full_response() {
    let origin = Origin::start(|_, _| Reply::ok(&[CACHEABLE, ("etag", "\"r\"")], "0123456789")).await;
    let edge = TestEdge::start(config(origin.addr)).await;
    edge.get("/r").await;
    let part = edge.request("GET", "/r", &[("range", "bytes=2-5")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.text(), "2345");
    assert_eq!(part.header("content-range"), Some("bytes 2-5/10"));
    let suffix = edge.request("GET", "/r", &[("range", "bytes=-3")]).await;
    assert_eq!((suffix.status, suffix.text().as_str()), (206, "789"));
    let past = edge.request("GET", "/r", &[("range", "bytes=50-")]).await;
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some("bytes */10"));
    let stale_validator = edge
        .request("GET", "/r", &[("range", "bytes=0-0"), ("if-range", "\"old\"")])
        .await;
    assert_eq!(
        (stale_validator.status, stale_validator.text().as_str()),
        (200, "0123456789")
    );
    let conditional = edge.request("GET", "/r", &[("if-none-match", "\"r\"")]).await;
    assert_eq!(conditional.status, 304);
    assert_eq!(origin.count("/r"), 1, "all from storage");
}

#[tokio::test]
async fn purges_by_url_tag_and_prefix() {
    let origin = Origin::start(|seen, _| {
        let tag = if seen.target.starts_with("/media/1") {
            "photo-1"
        } else {
            "photo-2"
        };
        Reply::ok(&[CACHEABLE, ("surrogate-key", tag)], "img")
    })
    .await;
    let edge = TestEdge::start(config(origin.addr)).await;
    let paths = [
        "/media/1/thumb",
        "/media/1/full",
        "/media/2/thumb",
        "/static/app.js",
    ];
    let warm = |edge: &TestEdge| {
        let edge_addr = edge.addr;
        async move {
            for p in paths {
                let req = format!("GET {p} HTTP/1.1\r\nHost: cdn.test\r\nConnection: close\r\n\r\n");
                raw(edge_addr, req.as_bytes(), false).await;
            }
        }
    };
    warm(&edge).await;
    let hits = |edge: &TestEdge| {
        let edge_addr = edge.addr;
        async move {
            let mut out = Vec::new();
            for p in paths {
                let req = format!("GET {p} HTTP/1.1\r\nHost: cdn.test\r\nConnection: close\r\n\r\n");
                out.push(raw(edge_addr, req.as_bytes(), false).await.is_hit());
            }
            out
        }
    };
    assert_eq!(hits(&edge).await, [true; 4]);

    assert_eq!(edge.purge("tag=photo-1").await, (200, "{\"purged\":2}".into()));
    assert_eq!(hits(&edge).await, [false, false, true, true]);
    assert_eq!(
        edge.purge("url=http://cdn.test/static/app.js").await.1,
        "{\"purged\":1}"
    );
    assert_eq!(hits(&edge).await, [true, true, true, false]);
    assert_eq!(
        edge.purge("prefix=http://cdn.test/media/").await.1,
        "{\"purged\":3}"
    );
    assert_eq!(hits(&edge).await, [false, false, false, true]);
    // Bad input purges nothing.
    for bad in [
        "",
        "tag=",
        "url=/relative",
        "tag=a&url=http://x/",
        "mode=sideways&tag=x",
        "zzz=1",
    ] {
        let (status, body) = edge.purge(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(hits(&edge).await, [true, true, true, true]);
    assert_eq!(
        edge.metric("scalestack_cdn_purges_total{kind=\"tag\",mode=\"hard\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_soft_purge_revalidates_but_grace_still_protects_the_origin() {
    let origin =
        Origin::start(|_, n| Reply::ok(&[CACHEABLE, ("surrogate-key", "t")], &format!("v{n}"))).await;
    let edge = TestEdge::start(config(origin.addr)).await;
    edge.get("/s").await;
    assert_eq!(edge.purge("tag=t&mode=soft").await.1, "{\"purged\":1}");
    let after = edge.get("/s").await;
    assert_eq!(after.text(), "v2", "soft-purged: fetched again");
    assert_eq!(origin.count("/s"), 2);
    // Soft purge again, then the origin goes down: the stale copy answers.
    assert_eq!(edge.purge("tag=t&mode=soft").await.1, "{\"purged\":1}");
    origin.stop();
    let down = edge.get("/s").await;
    assert_eq!((down.status, down.text().as_str()), (200, "v2"), "{down:?}");
    assert!(down.cache_status().contains("stale-if-error"), "{down:?}");
    // A hard purge leaves nothing to fall back on.
    edge.purge("tag=t").await;
    assert_eq!(edge.get("/s").await.status, 502);
}

#[tokio::test]
async fn unkeyed_fields_cannot_poison_the_cache() {
    let origin = Origin::start(|seen, _| {
        // An origin that trusts X-Forwarded-Host, as many frameworks do.
        let host = seen.header("x-forwarded-host").unwrap_or("cdn.test");
        Reply::ok(&[CACHEABLE], &format!("<script src=//{host}/app.js>"))
    })
    .await;
    let edge = TestEdge::start(config(origin.addr)).await;
    let evil = edge
        .request(
            "GET",
            "/page",
            &[("x-forwarded-host", "evil.test"), ("x-original-url", "/admin")],
        )
        .await;
    assert_eq!(evil.text(), "<script src=//cdn.test/app.js>");
    let victim = edge.get("/page").await;
    assert!(victim.is_hit());
    assert_eq!(victim.text(), "<script src=//cdn.test/app.js>");
    for seen in origin.seen() {
        assert!(seen.header("x-forwarded-host").is_none() && seen.header("x-original-url").is_none());
    }
    // Ignored query parameters neither key the object nor reach the origin.
    let mut cfg = config(origin.addr);
    cfg.query.ignore = vec!["utm_*".into()];
    let edge = TestEdge::start(cfg).await;
    edge.get("/q?a=1&utm_source=x").await;
    assert!(edge.get("/q?utm_campaign=y&a=1").await.is_hit());
    assert!(
        origin.seen().iter().all(|s| !s.target.contains("utm_")),
        "{:?}",
        origin.seen()
    );
}

#[tokio::test]
async fn a_304_without_validators_answers_the_response_it_was_asked_about() {
    // Python's http.server and some frameworks send bare 304s.
    let origin = Origin::start(|_, n| match n {
        1 => Reply::ok(
            &[
                ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("cache-control", "max-age=0"),
            ],
            "file",
        ),
        _ => Reply::status(304, &[("cache-control", "max-age=600")], ""),
    })
    .await;
    let edge = TestEdge::start(config(origin.addr)).await;
    edge.get("/bare").await;
    let again = edge.get("/bare").await;
    assert_eq!((again.status, again.text().as_str()), (200, "file"), "{again:?}");
    assert!(edge.get("/bare").await.is_hit());
    assert_eq!(origin.count("/bare"), 2);
}
