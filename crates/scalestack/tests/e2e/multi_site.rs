//! `topologies/multi-dc.toml`'s shape end to end: two sites behind two
//! geoDNS name servers, the database's primary in dc1 and its synchronous
//! replicas in dc2. First, a photo deleted in dc1 stops being served from
//! dc2's cache (the time it took is printed). Clients in both regions resolve `www.photos.test`
//! through the name servers, as a stub resolver does (each server in turn,
//! answers kept for their TTL), and sign up and read their session while
//! every process of dc1 is killed at once (`ctl site fail dc1`). The test
//! prints the figures of the window: failed requests, seconds until writes
//! resumed, sessions lost (zero), acknowledged writes lost (zero, with
//! synchronous replication to dc2); then dc1 is restored, its database
//! node rejoins as a replica, and its region gets its traffic back.

use crate::helpers::{free_port, free_ports, Up};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ZONE: &str = "photos.test";
/// The sites' addresses (not the file's 127.0.1.1 / 127.0.2.1, so a
/// developer's running multi-dc topology does not collide).
const DC1: [u8; 4] = [127, 0, 101, 1];
const DC2: [u8; 4] = [127, 0, 102, 1];
const EAST_CLIENT: [u8; 4] = [127, 0, 101, 50];
const WEST_CLIENT: [u8; 4] = [127, 0, 102, 50];

/// One `A` lookup of `name` at `server` from `source`: the address and TTL.
fn lookup(server: SocketAddr, source: IpAddr, name: &str) -> Option<(IpAddr, u32)> {
    let socket = UdpSocket::bind((source, 0)).ok()?;
    socket.set_read_timeout(Some(Duration::from_millis(700))).ok()?;
    let mut q = Message::query();
    q.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    socket.send_to(&q.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 1500];
    let n = socket.recv(&mut buf).ok()?;
    let answer = Message::from_vec(&buf[..n]).ok()?;
    answer.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
        _ => None,
    })
}

/// A client's stub resolver: the name servers in turn, from the client's
/// own address (its region), each answer kept for its TTL.
#[derive(Clone)]
struct StubResolver {
    servers: Vec<SocketAddr>,
    source: IpAddr,
    cached: Arc<Mutex<Option<(IpAddr, Instant)>>>,
}

impl StubResolver {
    fn new(servers: &[SocketAddr], source: [u8; 4]) -> Self {
        StubResolver {
            servers: servers.to_vec(),
            source: source.into(),
            cached: Arc::default(),
        }
    }

    fn resolve(&self, name: &str) -> Option<IpAddr> {
        let mut cached = self.cached.lock().unwrap();
        if let Some((ip, until)) = *cached {
            if Instant::now() < until {
                return Some(ip);
            }
        }
        let (ip, ttl) = self.servers.iter().find_map(|&s| lookup(s, self.source, name))?;
        *cached = Some((ip, Instant::now() + Duration::from_secs(ttl.into())));
        Some(ip)
    }
}

impl reqwest::dns::Resolve for StubResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let me = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let ip = tokio::task::spawn_blocking(move || StubResolver::resolve(&me, &host))
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no answer from any name server")?;
            let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

fn client(resolver: &StubResolver, cookies: bool) -> reqwest::Client {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(resolver.clone()))
        .cookie_store(cookies)
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

/// What one request of the load did, and when.
struct Outcome {
    at: Instant,
    region: &'static str,
    write: bool,
    ok: bool,
    /// `/api/me` answered 401: the session was lost.
    logged_out: bool,
}

#[tokio::test]
async fn losing_a_whole_site_keeps_users_logged_in_and_loses_no_acknowledged_write() {
    let (control, lb, lb_admin, cdn, cdn_admin) =
        (free_port(), free_port(), free_port(), free_port(), free_port());
    let (web, worker, pg, redis) = (free_ports(2), free_port(), free_ports(3), free_port());
    let (ns1, ns2, dns_admin) = (free_port(), free_port(), free_ports(2));
    let ip = |a: [u8; 4]| IpAddr::from(a);
    let topology = format!(
        "[[sites]]\nname = \"dc1\"\naddress = \"{dc1}\"\nnetworks = [\"127.0.101.0/24\"]\n\
         [[sites]]\nname = \"dc2\"\naddress = \"{dc2}\"\nnetworks = [\"127.0.102.0/24\"]\n\
         [dns]\nzone = \"{ZONE}\"\nlisten = [\"127.0.0.1:{ns1}\", \"127.0.0.2:{ns2}\"]\n\
         admin_listen = \"127.0.0.1:{dns_admin}\"\nttl = 2\n\
         health = {{ interval_ms = 300, timeout_ms = 1000, rise = 2, fall = 3 }}\n\
         rrl = {{ responses_per_second = 0 }}\n\
         [control]\nlisten = \"127.0.0.1:{control}\"\n\
         [lb]\nlisten = \"127.0.0.1:{lb}\"\nadmin_listen = \"127.0.0.1:{lb_admin}\"\n\
         [lb.health]\ninterval_ms = 300\n\
         [cdn]\nlisten = \"127.0.0.1:{cdn}\"\nadmin_listen = \"127.0.0.1:{cdn_admin}\"\nmemory_mb = 16\n\
         [web]\ncount = 2\nlisten = \"127.0.0.1:{web}\"\nargon2_memory_kib = 1024\nlist_cache_ttl_secs = 0\n\
         [worker]\ncount = 1\nmetrics_listen = \"127.0.0.1:{worker}\"\npoll_ms = 20\n\
         [postgres]\nport = {pg}\nreplicas = 2\nsynchronous = true\nfailover_after_ms = 2000\n\
         sites = [\"dc1\", \"dc2\", \"dc2\"]\n\
         [sql]\nkind = \"postgres\"\nprobe_interval_ms = 200\n\
         [redis]\nport = {redis}\n[cache]\nkind = \"redis\"\nnear_ttl_ms = 500\n[sessions]\nkind = \"redis\"\n\
         [queue]\nkind = \"embedded\"\n",
        dc1 = ip(DC1),
        dc2 = ip(DC2),
    );
    let up = Up::with_topology(&topology, format!("http://127.0.0.1:{control}"));
    up.wait_up(300).await;
    let ps = up.ctl_ok(&["ps"]);
    println!("{ps}");
    for name in ["pg1", "pg2", "pg3", "ns1", "ns2", "site-dc1", "site-dc2"] {
        assert!(ps.contains(name), "{ps}");
    }
    // The shared up sees every site's processes too (the dashboard's view).
    let everywhere: serde_json::Value = reqwest::get(format!("{}/api/ps?everywhere=true", up.control))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for site in ["dc1", "dc2"] {
        let has_lb = everywhere
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "lb" && c["site"] == site && c["via"].is_string());
        assert!(has_lb, "no lb of {site} in {everywhere}");
    }
    let servers = [
        SocketAddr::from(([127, 0, 0, 1], ns1)),
        SocketAddr::from(([127, 0, 0, 2], ns2)),
    ];
    let www = format!("www.{ZONE}");

    // Each region gets its own site, from both name servers, by source
    // address and by client subnet (dig as the client).
    for (server, port) in [("127.0.0.1", ns1), ("127.0.0.2", ns2)] {
        for (source, site) in [("127.0.101.9", DC1), ("127.0.102.9", DC2)] {
            // A probe lost while this machine runs the other tests may
            // send a region elsewhere for a moment: wait for it to settle.
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let out = std::process::Command::new("dig")
                    .args([
                        &format!("@{server}"),
                        "-p",
                        &port.to_string(),
                        "-b",
                        source,
                        "+short",
                        &www,
                    ])
                    .output()
                    .expect("dig runs (bind9-dnsutils)");
                let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if answer == ip(site).to_string() {
                    break;
                }
                assert!(Instant::now() < deadline, "{server} from {source}: {answer}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(
        lookup(servers[0], ip(WEST_CLIENT), &format!("cdn.{ZONE}"))
            .unwrap()
            .0,
        ip(DC2)
    );

    // A user in each region, signed up through DNS and the nearest site.
    let east = StubResolver::new(&servers, EAST_CLIENT);
    let west = StubResolver::new(&servers, WEST_CLIENT);
    let base = format!("http://{www}:{lb}");
    let mut sessions = Vec::new();
    for (region, resolver) in [("east", &east), ("west", &west)] {
        let c = client(resolver, true);
        let r = c
            .post(format!("{base}/api/signup"))
            .json(&serde_json::json!({"username": format!("{region}user"), "password": "password123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        sessions.push((region, c));
    }
    // (A probe lost while this machine runs the other tests may have sent
    // a region elsewhere for a moment: wait for the answers to settle.)
    for (resolver, site) in [(&east, DC1), (&west, DC2)] {
        let deadline = Instant::now() + Duration::from_secs(15);
        while resolver.resolve(&www) != Some(ip(site)) {
            assert!(Instant::now() < deadline, "a region is not sent to its own site");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A write in dc1 invalidates dc2's cached copy: a photo uploaded in
    // dc1, read (and so cached) in dc2, then deleted in dc1.
    let (east_user, west_user) = (&sessions[0].1, &sessions[1].1);
    let id = crate::upload(&base, east_user, imaging::samples::jpeg(320, 240)).await;
    let photo = crate::wait_processed(&base, east_user, id).await;
    assert_eq!(photo["status"], "ready", "{photo}");
    let photo_url = format!("{base}/api/photos/{id}");
    for _ in 0..2 {
        let r = west_user.get(&photo_url).send().await.unwrap();
        assert_eq!(r.status(), 200, "dc2 serves dc1's photo");
    }
    let r = east_user.delete(&photo_url).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let deleted_at = Instant::now();
    while west_user.get(&photo_url).send().await.unwrap().status() != 404 {
        assert!(
            deleted_at.elapsed() < Duration::from_secs(15),
            "dc2 still serves a photo deleted in dc1"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "a delete in dc1 reached dc2's readers after {} ms (peer invalidation, near-cache TTL 500 ms)",
        deleted_at.elapsed().as_millis()
    );

    // The load: in each region, sign-ups (writes) and the user's own
    // session (reads), retried through DNS whatever fails.
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (region, session) in sessions.iter().cloned() {
        let resolver = if region == "east" {
            east.clone()
        } else {
            west.clone()
        };
        let (outcomes, acknowledged, stop, base) =
            (outcomes.clone(), acknowledged.clone(), stop.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let anonymous = client(&resolver, false);
            let mut n = 0;
            while !stop.load(SeqCst) {
                n += 1;
                let name = format!("{region}{n}");
                let r = anonymous
                    .post(format!("{base}/api/signup"))
                    .json(&serde_json::json!({"username": name, "password": "password123"}))
                    .send()
                    .await;
                let ok = matches!(&r, Ok(r) if r.status() == 201);
                if ok {
                    acknowledged.lock().unwrap().push(name);
                }
                let at = Instant::now();
                outcomes.lock().unwrap().push(Outcome {
                    at,
                    region,
                    write: true,
                    ok,
                    logged_out: false,
                });
                let r = session.get(format!("{base}/api/me")).send().await;
                let (ok, logged_out) = match &r {
                    Ok(r) => (r.status() == 200, r.status() == 401),
                    Err(_) => (false, false),
                };
                let at = Instant::now();
                outcomes.lock().unwrap().push(Outcome {
                    at,
                    region,
                    write: false,
                    ok,
                    logged_out,
                });
                if !ok {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every process of dc1 at once: its up and children, ns1, pg1 (the primary).
    let failed_at = Instant::now();
    let out = up.ctl_ok(&["site", "fail", "dc1"]);
    println!("{out}");
    assert!(
        out.contains("pg1") && out.contains("ns1") && out.contains("site-dc1"),
        "{out}"
    );

    // DNS: east gets dc2 (from ns2: ns1 died with dc1), within fall (3) ×
    // interval (300 ms) and a probe's round.
    let dns_moved = loop {
        if lookup(servers[1], ip(EAST_CLIENT), &www).map(|a| a.0) == Some(ip(DC2)) {
            break failed_at.elapsed();
        }
        assert!(
            failed_at.elapsed() < Duration::from_secs(30),
            "DNS still sends east to dc1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Writes resume in both regions once dc2's replica is promoted: the
    // first write acknowledged after the region's first failed one (those
    // in flight at the kill may still be acknowledged just after it).
    let resumed = |region: &str| {
        let outcomes = outcomes.lock().unwrap();
        let mut writes = outcomes
            .iter()
            .filter(|o| o.region == region && o.write && o.at > failed_at);
        writes.find(|o| !o.ok)?;
        writes.find(|o| o.ok).map(|o| o.at - failed_at)
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while resumed("east").is_none() || resumed("west").is_none() {
        assert!(
            Instant::now() < deadline,
            "writes never resumed; log:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let ps = up.ctl_ok(&["ps"]);
    println!("{ps}");
    let primary_in_dc2 = ps
        .lines()
        .any(|l| (l.starts_with("pg2") || l.starts_with("pg3")) && l.contains("primary"));
    assert!(primary_in_dc2, "no primary in dc2:\n{ps}");

    // The figures.
    let (east_resumed, west_resumed) = (resumed("east").unwrap(), resumed("west").unwrap());
    let (after, failed, logged_out) = {
        let outcomes = outcomes.lock().unwrap();
        let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.at > failed_at).collect();
        let failed = after.iter().filter(|o| !o.ok).count();
        (
            after.len(),
            failed,
            outcomes.iter().filter(|o| o.logged_out).count(),
        )
    };
    let mut sessions_lost = 0;
    for (_, session) in &sessions {
        let r = session.get(format!("{base}/api/me")).send().await.unwrap();
        sessions_lost += usize::from(r.status() != 200);
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let dc2_lb = format!("http://{}:{lb}", ip(DC2));
    let http = reqwest::Client::new();
    let mut lost = 0;
    for name in &acknowledged {
        let r = http
            .get(format!("{dc2_lb}/api/users/{name}"))
            .send()
            .await
            .unwrap();
        lost += usize::from(r.status() != 200);
    }
    println!(
        "site loss (dc1, every process): DNS sent east to dc2 after {} ms; writes resumed after {:.1} s (east) and {:.1} s (west); \
         failed requests from the failure on: {failed} of {}; answers of 401 (sessions lost): {logged_out}; \
         sessions lost at the end: {sessions_lost}; acknowledged sign-ups lost: {lost} of {}",
        dns_moved.as_millis(),
        east_resumed.as_secs_f64(),
        west_resumed.as_secs_f64(),
        after,
        acknowledged.len()
    );
    assert_eq!(logged_out, 0, "a session was lost");
    assert_eq!(sessions_lost, 0);
    assert_eq!(
        lost, 0,
        "acknowledged sign-ups lost with synchronous replication to dc2"
    );
    drop(outcomes);

    // dc1 comes back: its database node rejoins as a replica, and east is
    // sent to it again, still logged in.
    let restored_at = Instant::now();
    println!("{}", up.ctl_ok(&["site", "restore", "dc1"]));
    let deadline = Instant::now() + Duration::from_secs(120);
    while lookup(servers[0], ip(EAST_CLIENT), &www).map(|a| a.0) != Some(ip(DC1)) {
        assert!(
            Instant::now() < deadline,
            "east never returned to dc1; log:\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "dc1 restored: east answered with dc1 again after {:.1} s",
        restored_at.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ps = up.ctl_ok(&["ps"]);
        if ps.lines().any(|l| l.starts_with("pg1") && l.contains("replica")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pg1 never rejoined as a replica:\n{ps}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let east_session = &sessions[0].1;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Once the stub's cached dc2 answer expires, east is on dc1 again.
        if east.resolve(&www) == Some(ip(DC1)) {
            let r = east_session.get(format!("{base}/api/me")).send().await.unwrap();
            assert_eq!(r.status(), 200, "logged in at dc1 again");
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}
