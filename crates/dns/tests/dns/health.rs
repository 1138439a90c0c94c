//! Health-driven failover in the answers: a site whose load balancer stops
//! being ready leaves the answers after `fall` probes and comes back after
//! `rise`; with every site down the last known good set still answers.

use crate::helpers::*;
use hickory_proto::rr::{RData, RecordType};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `/readyz` endpoint whose answer the test switches: the contract the
/// DNS server probes a load balancer's admin port with (the multi-site
/// end-to-end test probes real load balancers).
async fn readyz(ready: Arc<AtomicBool>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let ready = ready.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let status = if ready {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .as_bytes(),
                    )
                    .await;
            });
        }
    });
    addr
}

fn www_for(server: SocketAddr, source: [u8; 4]) -> IpAddr {
    let a = udp(
        server,
        source.into(),
        &query(&format!("www.{ZONE}"), RecordType::A, None, None),
    );
    match &a.answers[0].data {
        RData::A(a) => IpAddr::V4(a.0),
        other => panic!("not an address: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_fails_its_checks_leaves_the_answers_and_comes_back() {
    let (ready1, ready2) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(true)));
    let mut config = two_sites(
        Some(readyz(ready1.clone()).await),
        Some(readyz(ready2.clone()).await),
    );
    config.rrl.responses_per_second = 0;
    config.health.interval_ms = 100;
    config.health.rise = 2;
    config.health.fall = 3;
    let s = spawn(config).await;
    let dc1: IpAddr = [127, 0, 1, 1].into();
    let dc2: IpAddr = [127, 0, 2, 1].into();
    assert_eq!(www_for(s.addr, [127, 0, 1, 9]), dc1);

    // dc1 stops being ready: east goes to dc2 within fall × interval.
    let down = Instant::now();
    ready1.store(false, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(5), || www_for(s.addr, [127, 0, 1, 9]) == dc2).await);
    println!(
        "dc1 left the answers {} ms after it failed (fall 3 × 100 ms)",
        down.elapsed().as_millis()
    );
    assert_eq!(www_for(s.addr, [127, 0, 2, 9]), dc2, "west is not moved");
    let metrics = metrics(s.admin).await;
    assert!(
        metrics.contains(r#"scalestack_dns_site_up{site="dc1"} 0"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"scalestack_dns_site_changes_total{site="dc1",to="down"} 1"#));
    let sites = reqwest_get(s.admin, "/sites").await;
    assert!(
        sites.contains(r#""name":"dc1","up":false"#) || sites.contains(r#""up":false"#),
        "{sites}"
    );

    // Every site down: the last known good set (dc2) still answers, for
    // both regions, rather than nothing.
    ready2.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || {
            metrics_blocking(s.admin).contains(r#"scalestack_dns_site_up{site="dc2"} 0"#)
        })
        .await
    );
    assert_eq!(www_for(s.addr, [127, 0, 1, 9]), dc2);
    assert_eq!(www_for(s.addr, [127, 0, 2, 9]), dc2);

    // dc1 is back: east returns to it after `rise` good probes.
    ready1.store(true, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(5), || www_for(s.addr, [127, 0, 1, 9]) == dc1).await);
    // West's own site is still down; west goes to dc1 too.
    assert_eq!(www_for(s.addr, [127, 0, 2, 9]), dc1);
    ready2.store(true, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(5), || www_for(s.addr, [127, 0, 2, 9]) == dc2).await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_down_at_start_is_skipped_from_the_first_answer() {
    // Nothing listens on dc1's health address.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = two_sites(Some(dead), None);
    config.rrl.responses_per_second = 0;
    let s = spawn(config).await;
    assert_eq!(www_for(s.addr, [127, 0, 1, 9]), IpAddr::from([127, 0, 2, 1]));
    s.stop().await;
}

fn metrics_blocking(admin: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
