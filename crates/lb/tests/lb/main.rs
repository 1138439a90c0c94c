//! The load balancer over real sockets: algorithms, health, ejection,
//! failover, drain, limits, smuggling, admin API, graceful shutdown.

mod helpers;

use helpers::*;
use lb::{Algorithm, HashKey};
use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn count_by_backend(c: &reqwest::Client, url: &str, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (status, body) = get(c, url).await;
        assert_eq!(status, 200, "{body}");
        *counts.entry(body).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_shares_equally() {
    let b = [TestBackend::start(), TestBackend::start(), TestBackend::start()];
    let lb = start_lb(config(&[&b[0], &b[1], &b[2]])).await;
    let counts = count_by_backend(&client(), &format!("{}/who", lb.url), 300).await;
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&n| n == 100), "{counts:?}");
}

#[tokio::test]
async fn weighted_round_robin_follows_weights() {
    let b = [TestBackend::start(), TestBackend::start(), TestBackend::start()];
    let mut c = config(&[&b[0], &b[1], &b[2]]);
    c.algorithm = Algorithm::WeightedRoundRobin;
    for (spec, w) in c.backends.iter_mut().zip([1, 2, 3]) {
        spec.weight = w;
    }
    let lb = start_lb(c).await;
    let counts = count_by_backend(&client(), &format!("{}/who", lb.url), 600).await;
    for (backend, w) in b.iter().zip([1, 2, 3]) {
        assert_eq!(counts[&backend.state.name], 100 * w, "{counts:?}");
    }
}

/// With one backend holding a slow request, the load-aware algorithms send
/// everything else to the idle one.
#[tokio::test]
async fn least_connections_and_power_of_two_avoid_the_busy_backend() {
    for algorithm in [Algorithm::LeastConnections, Algorithm::PowerOfTwo] {
        let b = [TestBackend::start(), TestBackend::start()];
        let mut c = config(&[&b[0], &b[1]]);
        c.algorithm = algorithm;
        let lb = start_lb(c).await;
        let http = client();
        // Busy for far longer than the 20 requests below take, however slow
        // the machine; abandoned once they are done.
        let slow = tokio::spawn({
            let (http, url) = (http.clone(), format!("{}/slow/20000", lb.url));
            async move { get(&http, &url).await }
        });
        eventually(Duration::from_secs(10), "the slow request to arrive", || async {
            b[0].hits() + b[1].hits() == 1
        })
        .await;
        let busy = if b[0].hits() == 1 { &b[0] } else { &b[1] };
        let counts = count_by_backend(&http, &format!("{}/who", lb.url), 20).await;
        assert_eq!(counts.get(&busy.state.name), None, "{algorithm:?}: {counts:?}");
        slow.abort();
    }
}

#[tokio::test]
async fn consistent_hash_keeps_keys_and_moves_only_a_lost_backends_keys() {
    let mut b = [TestBackend::start(), TestBackend::start(), TestBackend::start()];
    let mut c = config(&[&b[0], &b[1], &b[2]]);
    c.algorithm = Algorithm::ConsistentHash;
    c.hash_key = HashKey::parse("header:x-user").unwrap();
    let lb = start_lb(c).await;
    let http = client();
    let route = |user: String| {
        let (http, url) = (http.clone(), format!("{}/who", lb.url));
        async move {
            let r = http.get(&url).header("x-user", user).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };
    let mut before = HashMap::new();
    for u in 0..200 {
        let first = route(format!("user{u}")).await;
        assert_eq!(
            route(format!("user{u}")).await,
            first,
            "a key sticks to its backend"
        );
        before.insert(u, first);
    }
    let mut spread: HashMap<&String, usize> = HashMap::new();
    for v in before.values() {
        *spread.entry(v).or_default() += 1;
    }
    assert_eq!(spread.len(), 3, "{spread:?}");
    assert!(
        spread.values().all(|&n| n >= 30),
        "keys spread over backends: {spread:?}"
    );

    let lost = b[1].state.name.clone();
    b[1].kill();
    for u in 0..200 {
        let now = route(format!("user{u}")).await;
        if before[&u] == lost {
            assert_ne!(now, lost);
        } else {
            assert_eq!(now, before[&u], "user{u} moved although its backend lives");
        }
    }
}

#[tokio::test]
async fn failing_backend_is_ejected_then_returns() {
    let b = [TestBackend::start(), TestBackend::start()];
    let mut c = config(&[&b[0], &b[1]]);
    c.outlier.consecutive_failures = 2;
    // Long enough that the 40 requests below all fall inside the ejection
    // however slow the machine.
    c.outlier.base_ejection_ms = 5_000;
    c.outlier.max_ejection_ms = 5_000;
    let lb = start_lb(c).await;
    let http = client();
    b[1].state.failing.store(true, SeqCst);
    let url = format!("{}/who", lb.url);
    let mut errors = 0;
    for _ in 0..40 {
        if get(&http, &url).await.0 == 500 {
            errors += 1;
        }
    }
    assert_eq!(
        errors, 2,
        "two 5xx in a row eject the backend; the rest go elsewhere"
    );
    let metrics = lb.admin_text("/metrics").await;
    let line = format!(
        "scalestack_lb_backend_ejections_total{{backend=\"{}\"}} 1",
        b[1].addr
    );
    assert!(metrics.contains(&line), "{metrics}");

    b[1].state.failing.store(false, SeqCst);
    let before = b[1].hits();
    let back = &b[1];
    eventually(
        Duration::from_secs(30),
        "the backend to take traffic again after its ejection",
        || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                get(&http, &url).await;
                back.hits() > before
            }
        },
    )
    .await;
}

#[tokio::test]
async fn health_checks_take_a_backend_out_and_back() {
    let b = [TestBackend::start(), TestBackend::start()];
    let lb = start_lb(config(&[&b[0], &b[1]])).await;
    let http = client();
    let url = format!("{}/who", lb.url);
    b[0].state.sick.store(true, SeqCst);
    let admin = format!("{}/backends", lb.admin);
    let healthy = |i: usize| {
        let (http, admin, addr) = (http.clone(), admin.clone(), b[i].addr.to_string());
        async move {
            let list: serde_json::Value = http.get(&admin).send().await.unwrap().json().await.unwrap();
            let me = list
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["addr"] == addr)
                .unwrap()
                .clone();
            me["healthy"].as_bool().unwrap()
        }
    };
    eventually(Duration::from_secs(3), "fall after failed checks", || {
        healthy(0).map_not()
    })
    .await;
    let counts = count_by_backend(&http, &url, 10).await;
    assert_eq!(counts.get(&b[0].state.name), None, "{counts:?}");
    b[0].state.sick.store(false, SeqCst);
    eventually(Duration::from_secs(3), "rise after passed checks", || healthy(0)).await;
    let counts = count_by_backend(&http, &url, 10).await;
    assert_eq!(counts[&b[0].state.name], 5, "{counts:?}");
}

trait MapNot {
    fn map_not(self) -> impl std::future::Future<Output = bool>;
}
impl<F: std::future::Future<Output = bool>> MapNot for F {
    async fn map_not(self) -> bool {
        !self.await
    }
}

#[tokio::test]
async fn killed_backend_loses_no_request() {
    let mut b = [TestBackend::start(), TestBackend::start(), TestBackend::start()];
    let lb = start_lb(config(&[&b[0], &b[1], &b[2]])).await;
    let http = client();
    // Warm the pool so the LB holds keep-alive connections to the victim.
    count_by_backend(&http, &format!("{}/who", lb.url), 30).await;
    b[0].kill();
    let mut failed = 0;
    for i in 0..90 {
        let ok = if i % 2 == 0 {
            get(&http, &format!("{}/who", lb.url)).await.0 == 200
        } else {
            let r = http
                .post(format!("{}/echo", lb.url))
                .body("x")
                .send()
                .await
                .unwrap();
            r.status() == 200
        };
        if !ok {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "connection refusals are retried on another backend");
    let metrics = lb.admin_text("/metrics").await;
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
    };
    assert!(
        value("scalestack_lb_retries_total") >= 1.0,
        "the refusals were retried"
    );
    let (dead, alive) = (b[0].addr, b[1].addr);
    assert!(
        value(&format!(
            r#"scalestack_lb_backend_errors_total{{backend="{dead}",kind="connect"}}"#
        )) >= 1.0
    );
    assert_eq!(
        value(&format!(r#"scalestack_lb_backend_healthy{{backend="{alive}"}}"#)),
        1.0
    );
    assert_eq!(
        value(&format!(
            r#"scalestack_lb_backend_in_flight{{backend="{alive}"}}"#
        )),
        0.0
    );
    assert!(
        value(&format!(
            r#"scalestack_lb_backend_requests_total{{backend="{alive}"}}"#
        )) >= 30.0
    );
    assert!(
        value(&format!(
            r#"scalestack_lb_backend_latency_seconds_count{{backend="{alive}"}}"#
        )) >= 30.0
    );
    assert_eq!(
        value(r#"scalestack_lb_responses_total{status="200"}"#),
        120.0,
        "30 + 90 answered"
    );
}

#[tokio::test]
async fn a_post_that_reached_a_backend_is_never_replayed() {
    let mut b = [TestBackend::start(), TestBackend::start()];
    let lb = start_lb(config(&[&b[0], &b[1]])).await;
    let http = client();
    let post = tokio::spawn({
        let (http, url) = (http.clone(), format!("{}/hang", lb.url));
        async move {
            http.post(url)
                .body("payload")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    eventually(Duration::from_secs(10), "the POST to arrive", || async {
        b[0].state.posts.load(SeqCst) + b[1].state.posts.load(SeqCst) == 1
    })
    .await;
    let victim = if b[0].state.posts.load(SeqCst) == 1 { 0 } else { 1 };
    b[victim].kill();
    assert_eq!(
        post.await.unwrap(),
        502,
        "the client is told, not silently retried"
    );
    let total: u64 = b.iter().map(|x| x.state.posts.load(SeqCst)).sum();
    assert_eq!(total, 1, "the POST was not replayed on the other backend");

    // A GET that dies the same way is retried on the other backend.
    let mut b = [TestBackend::start(), TestBackend::start()];
    let lb = start_lb(config(&[&b[0], &b[1]])).await;
    let slow = tokio::spawn({
        let (http, url) = (http.clone(), format!("{}/slow/3000", lb.url));
        async move { get(&http, &url).await }
    });
    eventually(Duration::from_secs(10), "the GET to arrive", || async {
        b[0].hits() + b[1].hits() == 1
    })
    .await;
    let victim = if b[0].hits() == 1 { 0 } else { 1 };
    b[victim].kill();
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, b[1 - victim].state.name);
}

#[tokio::test]
async fn drain_lets_in_flight_requests_finish_and_sends_no_new_ones() {
    let b = [TestBackend::start(), TestBackend::start()];
    let lb = start_lb(config(&[&b[0], &b[1]])).await;
    let http = client();
    let slow = tokio::spawn({
        let (http, url) = (http.clone(), format!("{}/slow/4000", lb.url));
        async move { get(&http, &url).await }
    });
    eventually(Duration::from_secs(10), "the slow request to arrive", || async {
        b[0].hits() + b[1].hits() == 1
    })
    .await;
    let (busy, idle) = if b[0].hits() == 1 {
        (&b[0], &b[1])
    } else {
        (&b[1], &b[0])
    };
    let r = http
        .post(format!("{}/backends/{}/drain", lb.admin, busy.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (status["draining"].as_bool(), status["in_flight"].as_u64()),
        (Some(true), Some(1))
    );
    let counts = count_by_backend(&http, &format!("{}/who", lb.url), 10).await;
    assert_eq!(counts[&idle.state.name], 10);
    let (code, body) = slow.await.unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, busy.state.name.as_str()),
        "in-flight request finished"
    );
    let r = http
        .delete(format!("{}/backends/{}", lb.admin, busy.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list = lb.admin_json("/backends").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn admin_api_adds_and_validates() {
    let b = [TestBackend::start(), TestBackend::start()];
    let lb = start_lb(config(&[&b[0]])).await;
    let http = client();
    let backends = format!("{}/backends", lb.admin);
    let r = http
        .post(&backends)
        .json(&serde_json::json!({ "addr": b[1].addr.to_string(), "weight": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let added: serde_json::Value = r.json().await.unwrap();
    assert_eq!(added["healthy"], true, "probed at once: {added}");
    let counts = count_by_backend(&http, &format!("{}/who", lb.url), 10).await;
    assert_eq!(counts[&b[1].state.name], 5, "{counts:?}");

    let again = http
        .post(&backends)
        .json(&serde_json::json!({ "addr": b[1].addr.to_string() }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    for bad in [
        serde_json::json!({ "addr": "not-an-address" }),
        serde_json::json!({ "addr": "127.0.0.1:1", "weight": 0 }),
        serde_json::json!({ "weight": 1 }),
    ] {
        let r = http.post(&backends).json(&bad).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert!(e["error"].is_string());
    }
    let r = http
        .post(format!("{backends}/nonsense/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .delete(format!("{backends}/127.0.0.1:1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let list: serde_json::Value = http.get(&backends).send().await.unwrap().json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "bad requests changed nothing");
    assert_eq!(
        http.get(format!("{}/readyz", lb.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn forwarded_headers_and_request_id_reach_the_backend() {
    let b = TestBackend::start();
    let lb = start_lb(config(&[&b])).await;
    let http = client();
    let r = http
        .get(format!("{}/headers", lb.url))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-request-id", "trace-42")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-42");
    let h = b.state.last_headers.lock().unwrap().clone();
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "a client cannot forge its address"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], lb.addr.to_string().as_str());
    assert_eq!(h["x-request-id"], "trace-42");
    assert!(
        h.get("x-secret").is_none(),
        "headers named by Connection are hop-by-hop"
    );
    let r = http.get(format!("{}/headers", lb.url)).send().await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32);
    assert_eq!(
        b.state.last_headers.lock().unwrap()["x-request-id"],
        generated.as_str()
    );
}

#[tokio::test]
async fn limits_answer_with_their_status() {
    let b = TestBackend::start();
    let mut c = config(&[&b]);
    c.limits.max_header_bytes = 2048;
    c.limits.max_headers = 20;
    c.limits.max_body_bytes = 1000;
    c.limits.header_timeout_ms = 300;
    c.limits.body_timeout_ms = 300;
    c.limits.idle_timeout_ms = 300;
    let lb = start_lb(c).await;

    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(3000));
    assert!(raw(lb.addr, big.as_bytes()).await.starts_with("HTTP/1.1 431"));
    let many: String = (0..30).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert!(raw(lb.addr, many.as_bytes()).await.starts_with("HTTP/1.1 431"));
    let body = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n{}",
        "b".repeat(1001)
    );
    assert!(raw(lb.addr, body.as_bytes()).await.starts_with("HTTP/1.1 413"));
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n{}\r\n0\r\n\r\n",
        "c".repeat(1001)
    );
    assert!(raw(lb.addr, chunked.as_bytes()).await.starts_with("HTTP/1.1 413"));
    // Slow header and slow body: 408.
    assert!(raw(lb.addr, b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .starts_with("HTTP/1.1 408"));
    let slow_body = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc";
    assert!(raw(lb.addr, slow_body).await.starts_with("HTTP/1.1 408"));
    // An idle keep-alive connection is closed quietly after its timeout.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut byte = [0u8; 1];
    let eof = tokio::time::timeout(Duration::from_millis(200), s.read(&mut byte)).await;
    assert!(
        matches!(eof, Ok(Ok(0))),
        "the idle connection was closed by the LB: {eof:?}"
    );
    assert_eq!(b.hits(), 1, "no refused request reached the backend");
    // A body within limits goes through, with 100-continue honoured.
    let ok = raw(
        lb.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert!(
        ok.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"),
        "{ok}"
    );
    assert!(ok.ends_with(&format!("{} 3", b.state.name)), "{ok}");
}

#[tokio::test]
async fn clients_that_send_nothing_or_stop_reading_are_cut_off() {
    let b = TestBackend::start();
    let mut c = config(&[&b]);
    c.limits.header_timeout_ms = 300;
    c.limits.body_timeout_ms = 300;
    c.limits.idle_timeout_ms = 600_000;
    let lb = start_lb(c).await;
    let patience = Duration::from_secs(20);

    // A connection that never sends a byte is closed (well before the
    // 10-minute idle timeout, which only applies between requests).
    let mut silent = TcpStream::connect(lb.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let eof = tokio::time::timeout(patience, silent.read(&mut byte)).await;
    assert!(
        matches!(eof, Ok(Ok(0))),
        "the silent connection was closed: {eof:?}"
    );

    // A client that asks for 64 MiB and reads none of it is dropped, and
    // the backend's request stops counting as in flight.
    let mut reader = TcpStream::connect(lb.addr).await.unwrap();
    reader
        .write_all(b"GET /big/64 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (backend, lb_ref) = (&b, &lb);
    eventually(patience, "the stalled response to be dropped", || async move {
        let list = lb_ref.admin_json("/backends").await;
        backend.hits() == 1 && list[0]["in_flight"].as_u64() == Some(0)
    })
    .await;
    // What the client then reads ends before 64 MiB: the LB hung up.
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    while let Ok(Ok(n)) = tokio::time::timeout(patience, reader.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(got < 64 << 20, "the response was cut short ({got} bytes)");
}

#[tokio::test]
async fn bodies_held_at_once_are_bounded() {
    let b = TestBackend::start();
    let mut c = config(&[&b]);
    c.limits.max_body_bytes = 1000;
    c.limits.max_buffered_bytes = 1000;
    let lb = start_lb(c).await;
    // One client holds 900 bytes of the budget with a body it sends slowly.
    let mut slow = TcpStream::connect(lb.addr).await.unwrap();
    slow.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\nabc")
        .await
        .unwrap();
    // Another's 200 bytes do not fit: 503, and nothing reaches a backend.
    let post = |n: usize| {
        format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n{}",
            "d".repeat(n)
        )
    };
    let answer = loop {
        let answer = raw(lb.addr, post(200).as_bytes()).await;
        // Until the slow client's head has been read, its bytes are not held.
        if !answer.starts_with("HTTP/1.1 200") {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // A smaller one still fits.
    assert!(raw(lb.addr, post(50).as_bytes())
        .await
        .starts_with("HTTP/1.1 200"));
    // Once the slow body is complete and forwarded, its bytes are given back.
    slow.write_all("e".repeat(897).as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    slow.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    drop(slow);
    assert!(raw(lb.addr, post(200).as_bytes())
        .await
        .starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_above_the_limit_get_503() {
    let b = TestBackend::start();
    let mut c = config(&[&b]);
    c.limits.max_connections = 2;
    let lb = start_lb(c).await;
    let _held = [
        TcpStream::connect(lb.addr).await.unwrap(),
        TcpStream::connect(lb.addr).await.unwrap(),
    ];
    // Both accepted and holding their slots.
    let lb_ref = &lb;
    eventually(Duration::from_secs(10), "two connections open", || async move {
        let m = lb_ref.admin_text("/metrics").await;
        m.lines().any(|l| l == "scalestack_lb_connections 2")
    })
    .await;
    let http = client();
    let answer = raw(lb.addr, b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(_held);
    let url = format!("{}/who", lb.url);
    eventually(Duration::from_secs(10), "the slots to be given back", || {
        let (http, url) = (http.clone(), url.clone());
        // Until then the LB answers 503 as it closes, which the client may
        // see as a broken request.
        async move { http.get(&url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
}

#[tokio::test]
async fn smuggling_attempts_are_rejected_and_the_connection_closed() {
    let b = TestBackend::start();
    let lb = start_lb(config(&[&b])).await;
    let attempts: &[&[u8]] = &[
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /who HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcGET /who HTTP/1.1\r\n\r\n",
        // Identical duplicate lengths, obfuscated codings, negative and
        // oversized chunk sizes, chunked in HTTP/1.0, bare LF.
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /who HTTP/1.1\nHost: x\n\nGET /who HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for a in attempts {
        let answer = raw(lb.addr, a).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} -> {answer}",
            String::from_utf8_lossy(a)
        );
        assert!(answer.contains("connection: close"), "{answer}");
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "nothing smuggled behind: {answer}"
        );
    }
    // And the connection is really closed after the 400 (EOF, not just
    // the header).
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(attempts[0]).await.unwrap();
    let answer = read_all(&mut s, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let mut byte = [0u8; 1];
    let eof = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await;
    assert!(matches!(eof, Ok(Ok(0)) | Ok(Err(_))), "closed: {eof:?}");
    assert_eq!(b.hits(), 0, "no smuggling attempt reached the backend");
}

/// One slowloris connection: trickles a header that never ends, a byte
/// every 100 ms, until the LB answers; returns the answer.
async fn trickle(addr: std::net::SocketAddr) -> String {
    let (mut r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
    let trickling = async move {
        let endless = b"GET / HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'));
        for byte in endless.take(600) {
            if w.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Out of patience (60 s): hold the connection without a word.
        std::future::pending::<()>().await
    };
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::select! {
        n = r.read(&mut buf) => answer.extend_from_slice(&buf[..n.unwrap_or(0)]),
        _ = trickling => {}
    }
    // The rest of the answer, up to the close.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n @ 1..) = r.read(&mut buf).await {
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn slowloris_cannot_exhaust_the_balancer() {
    let b = TestBackend::start();
    let mut c = config(&[&b]);
    c.limits.header_timeout_ms = 500;
    // Three times more tricklers than connection slots, trickling for as
    // long as they are let: without the header timeout they would hold
    // every slot for good and no one else would get in.
    let slots = 20;
    c.limits.max_connections = slots;
    let lb = start_lb(c).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tricklers = Vec::new();
    for _ in 0..3 * slots {
        let (addr, stop) = (lb.addr, stop.clone());
        tricklers.push(tokio::spawn(async move {
            // What the trickler was told each time it held a slot; turned
            // away at the door (503, all slots taken), it comes back. It
            // goes on until told to stop and once served at least.
            let mut served = Vec::new();
            let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
            while (served.is_empty() || !stop.load(SeqCst)) && tokio::time::Instant::now() < give_up {
                let answer = trickle(addr).await;
                // Turned away: the 503, or nothing if the close raced it
                // (the LB does not linger on a connection it refuses).
                if answer.is_empty() || answer.starts_with("HTTP/1.1 503") {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                } else {
                    served.push(answer);
                }
            }
            served
        }));
    }
    // The tricklers do take every slot.
    let lb_ref = &lb;
    let full = format!("scalestack_lb_connections {slots}");
    eventually(
        Duration::from_secs(20),
        "the tricklers to hold every slot",
        || {
            let full = full.clone();
            async move { lb_ref.admin_text("/metrics").await.lines().any(|l| l == full) }
        },
    )
    .await;
    // And yet, while they keep at it, a client gets its answers: slots come
    // free every header timeout.
    let http = client();
    let url = format!("{}/who", lb.url);
    for _ in 0..20 {
        eventually(Duration::from_secs(30), "a GET to get through", || {
            let (http, url) = (http.clone(), url.clone());
            // Turned away (503) or reset at the door until a slot is free.
            async move { http.get(&url).send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
    }
    stop.store(true, SeqCst);
    for t in tricklers {
        let served = t.await.unwrap();
        assert!(!served.is_empty(), "every trickler got a slot in the end");
        for answer in served {
            assert!(
                answer.starts_with("HTTP/1.1 408"),
                "cut off however slowly it trickles: {answer}"
            );
        }
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let b = TestBackend::start();
    let mut lb = start_lb(config(&[&b])).await;
    let http = client();
    let slow = tokio::spawn({
        let (http, url) = (http.clone(), format!("{}/slow/600", lb.url));
        async move { get(&http, &url).await }
    });
    eventually(Duration::from_secs(10), "the slow request to arrive", || async {
        b.hits() == 1
    })
    .await;
    lb.stop();
    assert_eq!(slow.await.unwrap().0, 200, "the request in flight finished");
    lb.task.take().unwrap().await.unwrap().unwrap();
    assert!(TcpStream::connect(lb.addr).await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn no_backend_gives_503_with_retry_after() {
    let mut b = TestBackend::start();
    let lb = start_lb(config(&[&b])).await;
    b.kill();
    let r = client().get(format!("{}/who", lb.url)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("no backend"));
}

/// A raw HTTP/1.1 backend that answers every request `200 ok` on kept-alive
/// connections and counts the connections that carried application
/// requests (health checks come on connections of their own).
async fn counting_backend() -> (lb::BackendSpec, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let used = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = used.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut counted = false;
                loop {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        if !counted && !buf.starts_with(b"GET /readyz") {
                            counter.fetch_add(1, SeqCst);
                            counted = true;
                        }
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (lb::BackendSpec { addr, weight: 1 }, used)
}

#[tokio::test]
async fn upstream_keep_alive_is_configurable() {
    let http = client();
    for (idle, most) in [(None, 2), (Some(0), 10)] {
        let (spec, used) = counting_backend().await;
        let mut c = config(&[]);
        c.backends = vec![spec];
        if let Some(idle) = idle {
            c.limits.upstream_idle_per_backend = idle;
        }
        let lb = start_lb(c).await;
        for _ in 0..10 {
            assert_eq!(
                get(&http, &format!("{}/x", lb.url)).await,
                (200, "ok".to_string())
            );
        }
        let opened = used.load(SeqCst);
        match idle {
            // Pooled: one connection per LB thread at most carried them all.
            None => assert!(opened <= most, "{opened} upstream connections for 10 requests"),
            // No idle connection kept: one per request.
            Some(_) => assert_eq!(opened, most, "a connection per request"),
        }
    }
}
