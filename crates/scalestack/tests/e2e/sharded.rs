//! `topologies/sharded.toml`'s shape on real engines that `up` starts: the
//! SQL store over two PostgreSQL replica sets (a primary and a replica
//! each), Redis, NATS, the LB, web servers and a worker. The app works end
//! to end; `ctl shards` shows rows on both sets; then `ctl reshard` adds a
//! third set and moves logical shards to it while sign-ups, follows,
//! uploads and reads go on: every acknowledged write is there afterwards,
//! exactly once, no read of data that existed before the move failed, and
//! the cutover pause is printed. Last, `up` is SIGKILLed right after it
//! started a second move and started again: the move is recovered (rolled
//! back) and every acknowledged sign-up is still served.

use crate::helpers::{self, free_port, free_ports, get_json, Up};
use crate::{signup, upload_and_wait, wait_processed};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the load saw while the move ran.
#[derive(Default)]
struct Seen {
    signups: Mutex<Vec<String>>,
    follows: Mutex<Vec<(usize, String)>>,
    photos: Mutex<Vec<i64>>,
    writes_failed: AtomicU64,
    reads: AtomicU64,
    reads_failed: AtomicU64,
}

/// The logical shard inside an id (Instagram's layout: 13 bits above the
/// 10-bit sequence).
fn logical_shard(id: i64) -> i64 {
    (id >> 10) & 8191
}

/// A pool on the first node (the primary, nothing having failed) of replica
/// set `k` (from 0).
async fn set_pool(pg: u16, k: u16) -> sqlx::PgPool {
    let url = format!("postgres://scalestack@127.0.0.1:{}/scalestack", pg + 2 * k);
    store_postgres::connect(&url, 1).await.unwrap()
}

/// How many of `names` the app at `web` does not know.
async fn missing_users(http: &reqwest::Client, web: &str, names: &[String]) -> usize {
    let mut missing = 0;
    for name in names {
        let r = http.get(format!("{web}/api/users/{name}")).send().await.unwrap();
        missing += usize::from(r.status() != 200);
    }
    missing
}

#[tokio::test]
async fn the_app_runs_on_two_shards_and_reshards_to_a_third_under_load() {
    // Six ports: s1 and s2 (a primary and a replica each), and s3 that
    // `ctl reshard` adds after them.
    let (pg, redis) = (free_ports(6), free_port());
    let (nats, cluster, monitor) = (free_port(), free_port(), free_port());
    let mut up = Up::web_tier(
        2,
        300,
        &format!(
            "[sql]\nkind = \"postgres\"\ncelebrity_followers = 5\n\
             [postgres]\nsets = 2\nport = {pg}\nreplicas = 1\nfailover_after_ms = 2000\n\
             [cache]\nkind = \"redis\"\n[sessions]\nkind = \"redis\"\n[redis]\nport = {redis}\n\
             [queue]\nkind = \"nats\"\n\
             [nats]\nnodes = 1\nport = {nats}\ncluster_port = {cluster}\nmonitor_port = {monitor}\n"
        ),
    );
    up.wait_up(240).await;
    let ps = up.ctl_ok(&["ps"]);
    for node in ["s1-pg1", "s1-pg2", "s2-pg1", "s2-pg2"] {
        assert!(ps.contains(node), "{ps}");
    }

    // The app end to end: a photo, a follow, the follower's feed (fanned
    // out on write by the photo's job, to the follower's shard).
    let ada = signup(&up.web, "ada").await;
    let bob = signup(&up.web, "bob").await;
    let r = bob
        .post(format!("{}/api/users/ada/follow", up.web))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let photo = upload_and_wait(&up.web, &ada).await;
    assert_eq!(photo["status"], "ready", "{photo}");
    let feed = get_json(&bob, &format!("{}/api/feed", up.web)).await;
    assert_eq!(feed["photos"][0]["id"], photo["id"], "{feed}");
    let profile = get_json(&bob, &format!("{}/api/users/ada", up.web)).await;
    assert_eq!(
        (profile["followers"].as_i64(), profile["followed_by_me"].as_bool()),
        (Some(1), Some(true))
    );

    // Users on both sets, and the fans who follow during the move.
    let mut fans = Vec::new();
    for i in 0..6 {
        fans.push(signup(&up.web, &format!("fan{i}")).await);
    }
    let before: Vec<String> = (0..40).map(|i| format!("old{i}")).collect();
    futures_util::future::join_all(before.iter().map(|name| signup(&up.web, name))).await;
    let shards = up.ctl_ok(&["shards"]);
    println!("{shards}");
    assert!(shards.contains("2 replica sets"), "{shards}");
    // Every web server exports the requests it routed to each set.
    for set in ["s1", "s2"] {
        let label = format!("set=\"{set}\"");
        let routed = helpers::web_metric(&up, "scalestack_shard_requests_total", &[&label]).await;
        assert!(routed > 0.0, "no request counted for {set}");
    }
    let (s1, s2) = (set_pool(pg, 0).await, set_pool(pg, 1).await);
    for (name, pool) in [("s1", &s1), ("s2", &s2)] {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM users")
            .fetch_one(pool)
            .await
            .unwrap();
        assert!(n > 0, "{name} holds no user: the ids do not spread");
    }

    // The load: sign-ups, follows of the new users by the fans, uploads,
    // and reads of what existed before.
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..4 {
        let (web, seen, stop) = (up.web.clone(), seen.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let http = helpers::http_client(false);
            let mut n = 0;
            while !stop.load(SeqCst) {
                n += 1;
                let name = format!("new{task}_{n}");
                let r = http
                    .post(format!("{web}/api/signup"))
                    .json(&serde_json::json!({"username": name, "password": "password123"}))
                    .send()
                    .await;
                if matches!(&r, Ok(r) if r.status() == 201) {
                    seen.signups.lock().unwrap().push(name);
                } else {
                    eprintln!("sign-up failed during the move: {r:?}");
                    seen.writes_failed.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    for (f, fan) in fans.iter().enumerate() {
        let (web, seen, stop, fan) = (up.web.clone(), seen.clone(), stop.clone(), fan.clone());
        tasks.push(tokio::spawn(async move {
            let mut followed = 0;
            while !stop.load(SeqCst) {
                let next = seen.signups.lock().unwrap().get(followed).cloned();
                let Some(name) = next else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                followed += 1;
                let r = fan.post(format!("{web}/api/users/{name}/follow")).send().await;
                if matches!(&r, Ok(r) if r.status() == 204) {
                    seen.follows.lock().unwrap().push((f, name));
                } else {
                    eprintln!("follow failed during the move: {r:?}");
                    seen.writes_failed.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    {
        let (web, seen, stop, ada) = (up.web.clone(), seen.clone(), stop.clone(), ada.clone());
        let jpeg = imaging::samples::jpeg(64, 48);
        tasks.push(tokio::spawn(async move {
            while !stop.load(SeqCst) {
                let form = reqwest::multipart::Form::new().part(
                    "file",
                    reqwest::multipart::Part::bytes(jpeg.clone()).file_name("p.jpg"),
                );
                let r = ada.post(format!("{web}/api/photos")).multipart(form).send().await;
                match r {
                    Ok(r) if r.status() == 202 => {
                        let body: Value = r.json().await.unwrap();
                        seen.photos
                            .lock()
                            .unwrap()
                            .push(body["id"].as_str().unwrap().parse().unwrap());
                    }
                    other => {
                        eprintln!("upload failed during the move: {other:?}");
                        seen.writes_failed.fetch_add(1, SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    for reader in 0..2 {
        let (web, seen, stop, before) = (up.web.clone(), seen.clone(), stop.clone(), before.clone());
        tasks.push(tokio::spawn(async move {
            let http = helpers::http_client(false);
            let mut n = reader;
            while !stop.load(SeqCst) {
                n += 1;
                let name = &before[n % before.len()];
                let path = if n % 2 == 0 {
                    format!("users/{name}")
                } else {
                    format!("users/{name}/photos")
                };
                seen.reads.fetch_add(1, SeqCst);
                match http.get(format!("{web}/api/{path}")).send().await {
                    Ok(r) if r.status() == 200 => {}
                    other => {
                        eprintln!("read of {path} failed during the move: {other:?}");
                        seen.reads_failed.fetch_add(1, SeqCst);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The move: `up` adds s3 and moves the upper half of s1's range to it.
    let (bin_args, dir) = (
        vec![
            "ctl".to_owned(),
            "--url".to_owned(),
            up.control.clone(),
            "reshard".to_owned(),
        ],
        up.dir.path().to_owned(),
    );
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = bin_args.iter().map(String::as_str).collect();
        helpers::run(&args, &dir)
    })
    .await
    .unwrap();
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "ctl reshard failed: {stdout}{stderr}\n{}",
        up.log()
    );
    // The set with the most rows gives the upper half of its range.
    let (first, last, source) = {
        let line = stderr
            .lines()
            .find(|l| l.contains("logical shards"))
            .unwrap_or_else(|| panic!("no move announced: {stderr}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "shards").unwrap();
        let (first, last) = words[at + 1].split_once('-').unwrap();
        assert_eq!((words[at + 2], words[at + 4]), ("from", "to"), "{line}");
        assert_eq!(words[at + 5], "s3", "{line}");
        let source = if words[at + 3] == "s1" { &s1 } else { &s2 };
        (
            first.parse::<i64>().unwrap(),
            last.parse::<i64>().unwrap(),
            source,
        )
    };
    assert!(stderr.contains("copying"), "the progress is drawn: {stderr}");
    let pause: u64 = stdout
        .split("paused ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no cutover pause printed: {stdout}"));

    // Every acknowledged write is there, through the app.
    let signups = seen.signups.lock().unwrap().clone();
    let follows = seen.follows.lock().unwrap().clone();
    let photos = seen.photos.lock().unwrap().clone();
    let web = up.web.clone();
    let http = helpers::http_client(false);
    let mut missing = missing_users(&http, &web, &signups).await;
    let mut expected_followers: BTreeMap<&str, i64> = BTreeMap::new();
    for (f, name) in &follows {
        *expected_followers.entry(name).or_default() += 1;
        let p = get_json(&fans[*f], &format!("{web}/api/users/{name}")).await;
        missing += usize::from(p["followed_by_me"] != true);
    }
    for (name, n) in &expected_followers {
        let p = get_json(&http, &format!("{web}/api/users/{name}")).await;
        missing += usize::from(p["followers"].as_i64() != Some(*n));
    }
    for id in &photos {
        missing += usize::from(wait_processed(&web, &ada, *id).await["status"] != "ready");
    }

    // Exactly once, and where the new map says: nothing of the moved range
    // is left on its source, and s3 holds it.
    let s3 = set_pool(pg, 2).await;
    let mut ids = Vec::new();
    for pool in [&s1, &s2, &s3] {
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT id FROM users")
            .fetch_all(pool)
            .await
            .unwrap();
        ids.extend(rows.into_iter().map(|(id,)| id));
    }
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    let moved = format!("((id >> 10) & 8191) BETWEEN {first} AND {last}");
    let (left,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM users WHERE {moved}"))
        .fetch_one(source)
        .await
        .unwrap();
    let (on_s3,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM users WHERE NOT ({moved})"))
        .fetch_one(&s3)
        .await
        .unwrap();
    let s3_users: Vec<(i64,)> = sqlx::query_as("SELECT id FROM users")
        .fetch_all(&s3)
        .await
        .unwrap();
    assert!(s3_users
        .iter()
        .all(|(id,)| (first..=last).contains(&logical_shard(*id))));

    println!(
        "reshard under load: `ctl reshard` took {took:?}, writes to the moved shards paused {pause} ms; \
         {} sign-ups, {} follows, {} uploads acknowledged, {} writes failed, {missing} acknowledged missing; \
         {} reads of older data, {} failed; {} users on 3 sets, {} duplicated; {}",
        signups.len(),
        follows.len(),
        photos.len(),
        seen.writes_failed.load(SeqCst),
        seen.reads.load(SeqCst),
        seen.reads_failed.load(SeqCst),
        total,
        total - ids.len(),
        stdout.trim()
    );
    assert!(
        !signups.is_empty() && !follows.is_empty() && !photos.is_empty(),
        "the load ran"
    );
    assert_eq!(missing, 0, "an acknowledged write is missing");
    assert_eq!(
        seen.writes_failed.load(SeqCst),
        0,
        "writes failed during the move"
    );
    assert_eq!(
        seen.reads_failed.load(SeqCst),
        0,
        "reads of older data failed during the move"
    );
    assert_eq!(total, ids.len(), "a user is on two sets");
    assert_eq!((left, on_s3), (0, 0), "the moved range lives on s3 only");
    assert!(!s3_users.is_empty(), "s3 holds the moved users");

    let shards = up.ctl_ok(&["shards"]);
    assert!(shards.contains("3 replica sets"), "{shards}");
    let ps = up.ctl_ok(&["ps"]);
    assert!(ps.contains("s3-pg1") && ps.contains("s3-pg2"), "{ps}");
    // s3's data is where a restarted `up` finds it, to run it again.
    assert!(up.data().join("pg-s3").is_dir());
    // Bad input is refused and changes nothing.
    let bad = up.ctl(&["reshard", "--shards", "9000"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a range"),
        "{bad:?}"
    );
    assert!(up.ctl_ok(&["shards"]).contains("3 replica sets"));

    // `up` killed mid-move and started again. A second move (s1's lower
    // half, which the first left where it was, to s3: the set exists, so
    // the move starts at once), `up` SIGKILLed as soon as it started it:
    // the restarted `up` rolls the move back (or finishes it, had it
    // switched), and every acknowledged sign-up is still served.
    let in_range = "SELECT count(*) FROM users WHERE ((id >> 10) & 8191) BETWEEN 0 AND 2047";
    let (on_s1,): (i64,) = sqlx::query_as(in_range).fetch_one(&s1).await.unwrap();
    up.ctl_ok(&["reshard", "--shards", "0-2047", "--to", "s3", "--no-wait"]);
    up.crash_and_restart();
    up.wait_up(240).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let recovered = loop {
        let m = get_json(&http, &format!("{}/api/reshard", up.control)).await;
        if m["phase"] == "aborted" || m["phase"] == "done" {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the interrupted move is not recovered: {m}\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "`up` killed mid-move and restarted: the move ended {}",
        recovered["phase"]
    );
    let (s1, s3) = (set_pool(pg, 0).await, set_pool(pg, 2).await);
    let (s1_after,): (i64,) = sqlx::query_as(in_range).fetch_one(&s1).await.unwrap();
    let (s3_after,): (i64,) = sqlx::query_as(in_range).fetch_one(&s3).await.unwrap();
    if recovered["phase"] == "aborted" {
        assert!(
            recovered["error"].as_str().unwrap_or("").contains("interrupted"),
            "{recovered}"
        );
        assert_eq!(
            (s1_after, s3_after),
            (on_s1, 0),
            "rolled back: the range whole on s1 only"
        );
    } else {
        assert_eq!(
            (s1_after, s3_after),
            (0, on_s1),
            "finished: the range whole on s3 only"
        );
    }
    let missing = missing_users(&http, &web, &signups).await;
    assert_eq!(missing, 0, "a sign-up is missing after `up` restarted");
    let (status, log) = up.stop();
    assert!(status.success(), "{log}");
}
