//! The sharded store over two real replica sets: the same port battery as
//! every other store, rows placed where their ids say, the celebrity
//! read path, and one set's primary killed while the other never notices.

use crate::helpers::eventually;
use domain::consistency::{self, Floor};
use domain::ports::Store;
use domain::shard::ShardedId;
use domain::*;
use std::collections::BTreeMap;
use std::time::Duration;
use store_postgres::{PgRouter, RouterConfig, ShardedConfig, ShardedStore};
use test_support::TestPg;

const PATIENCE: Duration = Duration::from_secs(30);

/// Two replica sets, `s1` (the catalog) and `s2`, with the replicas asked
/// for, each migrated, and a sharded store over them.
struct TwoSets {
    s1: TestPg,
    s2: TestPg,
    store: ShardedStore,
}

pub(crate) async fn router(set: &str, pg: &TestPg) -> PgRouter {
    let mut nodes = vec![pg.primary.url()];
    nodes.extend(pg.replicas.iter().map(|r| r.url()));
    let router = PgRouter::connect(RouterConfig {
        probe_interval_ms: 100,
        replica_set: domain::consistency::ReplicaSetId::parse(set).unwrap(),
        ..RouterConfig::new(nodes)
    })
    .await
    .unwrap();
    router.migrate().await.unwrap();
    router
}

async fn two_sets(replicas: (usize, usize), config: ShardedConfig) -> TwoSets {
    let (s1, s2) = tokio::join!(TestPg::start(replicas.0), TestPg::start(replicas.1));
    let sets = BTreeMap::from([
        ("s1".to_owned(), router("s1", &s1).await),
        ("s2".to_owned(), router("s2", &s2).await),
    ]);
    let store = ShardedStore::connect("s1", sets, config, None).await.unwrap();
    TwoSets { s1, s2, store }
}

async fn count(pg: &TestPg, sql: &str) -> i64 {
    pg.primary.psql(sql).await.unwrap().trim().parse().unwrap()
}

/// `sql`'s count summed over both sets.
async fn both(t: &TwoSets, sql: &str) -> i64 {
    count(&t.s1, sql).await + count(&t.s2, sql).await
}

pub(crate) fn name(tag: &str, i: usize) -> Username {
    Username::parse(&format!("{tag}{i}")).unwrap()
}

#[tokio::test]
async fn a_sharded_store_conforms_to_the_store_port() {
    let t = two_sets((1, 0), ShardedConfig::default()).await;
    // In a consistency scope, as the web tier runs it: the battery reads
    // what it just wrote, which a replica may not have yet.
    consistency::scope(Floor::none(), conformance::store::run_all(&t.store)).await;
    // The battery's users landed on both sets, not one.
    assert!(count(&t.s1, "SELECT count(*) FROM users").await > 0);
    assert!(count(&t.s2, "SELECT count(*) FROM users").await > 0);
}

/// Users spread evenly over the sets, each on the set the map names for the
/// logical shard inside its id, with its photos beside it.
#[tokio::test]
async fn rows_spread_evenly_and_live_where_their_ids_say() {
    let t = two_sets((0, 0), ShardedConfig::default()).await;
    let map = t.store.map().expect("the even map was published");
    assert_eq!(map.epoch, 1);
    let mut on = BTreeMap::<String, usize>::new();
    for i in 0..400 {
        let id = t.store.create_user(&name("spread", i), "h").await.unwrap();
        let set = map.set_of_id(ShardedId::from_raw(id.0).unwrap()).to_owned();
        if i % 20 == 0 {
            let photo = t
                .store
                .create_photo(&NewPhoto {
                    owner_id: id,
                    caption: None,
                    format: ImageFormat::Jpeg,
                    width: 1,
                    height: 1,
                })
                .await
                .unwrap();
            let pid = ShardedId::from_raw(photo.id.0).unwrap();
            assert_eq!(
                pid.shard(),
                ShardedId::from_raw(id.0).unwrap().shard(),
                "a photo carries its owner's shard"
            );
        }
        *on.entry(set).or_default() += 1;
    }
    let (n1, n2) = (
        count(&t.s1, "SELECT count(*) FROM users").await,
        count(&t.s2, "SELECT count(*) FROM users").await,
    );
    assert_eq!(
        (n1 as usize, n2 as usize),
        (on["s1"], on["s2"]),
        "every user on the set its id names"
    );
    println!("400 users: s1 {n1}, s2 {n2}");
    assert!((140..=260).contains(&n1), "an even spread, not {n1}/{n2}");
    assert_eq!(
        count(&t.s1, "SELECT count(*) FROM photos").await + count(&t.s2, "SELECT count(*) FROM photos").await,
        20
    );
    assert_eq!(
        count(&t.s1, "SELECT count(*) FROM usernames WHERE state = 'active'").await,
        400,
        "the catalog resolves every name"
    );
}

/// A feed that mixes fanned-out followees and celebrities (merged at read
/// time) is complete and newest first; a celebrity's photo writes no feed
/// entries, and a read touches each set at most once for them.
#[tokio::test]
async fn a_feed_mixes_normal_and_celebrity_followees() {
    let t = two_sets(
        (0, 0),
        ShardedConfig {
            celebrity_followers: 5,
            ..ShardedConfig::default()
        },
    )
    .await;
    let s = &t.store;
    let reader = s.create_user(&name("reader", 0), "h").await.unwrap();
    let normal = s.create_user(&name("normal", 0), "h").await.unwrap();
    let star = s.create_user(&name("star", 0), "h").await.unwrap();
    let ready = |owner: UserId| async move {
        let id = s
            .create_photo(&NewPhoto {
                owner_id: owner,
                caption: None,
                format: ImageFormat::Jpeg,
                width: 1,
                height: 1,
            })
            .await
            .unwrap()
            .id;
        s.set_photo_status(id, PhotoStatus::Ready).await.unwrap();
        id
    };
    let old_star = ready(star).await;
    s.follow(reader, normal).await.unwrap();
    s.follow(reader, star).await.unwrap();
    // Fans on both sets make the star a celebrity on the fifth follow.
    for i in 0..6 {
        let fan = s.create_user(&name("fan", i), "h").await.unwrap();
        s.follow(fan, star).await.unwrap();
    }
    assert_eq!(s.profile(star).await.unwrap().unwrap().followers, 7);
    let mut expected = vec![old_star];
    for i in 0..6 {
        expected.push(ready(if i % 2 == 0 { normal } else { star }).await);
    }
    expected.reverse();
    let feed = s
        .feed_ids(
            reader,
            Page {
                before: None,
                limit: 50,
            },
        )
        .await
        .unwrap();
    assert_eq!(feed, expected, "complete and newest first");
    let page1 = s
        .feed_ids(
            reader,
            Page {
                before: None,
                limit: 4,
            },
        )
        .await
        .unwrap();
    let page2 = s
        .feed_ids(
            reader,
            Page {
                before: page1.last().copied(),
                limit: 4,
            },
        )
        .await
        .unwrap();
    assert_eq!([page1, page2].concat(), expected, "pages neither skip nor repeat");
    let star_entries = both(
        &t,
        &format!("SELECT count(*) FROM feed_entries WHERE author_id = {}", star.0),
    )
    .await;
    let normal_entries = both(
        &t,
        &format!("SELECT count(*) FROM feed_entries WHERE author_id = {}", normal.0),
    )
    .await;
    assert_eq!(normal_entries, 3, "a normal followee's photos are fanned out");
    // The star's first photo was back-filled before the promotion; none after.
    assert!(
        star_entries <= 7,
        "a celebrity's photos are not fanned out ({star_entries} entries)"
    );
    let marked = both(
        &t,
        &format!(
            "SELECT count(*) FROM following WHERE followee_id = {} AND celebrity",
            star.0
        ),
    )
    .await;
    assert_eq!(marked, 7, "every follower's row marked, on both sets");
}

/// `kill -9` of one set's primary: that set's calls fail until its replica
/// is promoted, then succeed; the other set never notices.
#[tokio::test]
async fn killing_one_sets_primary_leaves_the_other_untouched() {
    let t = two_sets((0, 1), ShardedConfig::default()).await;
    let s = &t.store;
    let map = s.map().unwrap();
    let mut on: BTreeMap<String, Vec<UserId>> = BTreeMap::new();
    for i in 0..40 {
        let id = s.create_user(&name("kill", i), "h").await.unwrap();
        on.entry(map.set_of_id(ShardedId::from_raw(id.0).unwrap()).to_owned())
            .or_default()
            .push(id);
    }
    let (calm, hit) = (on["s1"].clone(), on["s2"].clone());
    // Asynchronous replication: let the replica replay the sign-ups first,
    // so what is checked after the failover is the routing, not the lag.
    let end = t.s2.primary.psql("SELECT pg_current_wal_lsn()").await.unwrap();
    let caught_up = format!("SELECT pg_last_wal_replay_lsn() >= '{}'::pg_lsn", end.trim());
    eventually(PATIENCE, "the replica replays the sign-ups", || async {
        t.s2.replicas[0].psql(&caught_up).await.unwrap().trim() == "t"
    })
    .await;
    t.s2.primary.kill9().unwrap();
    let mut calm_failures = 0;
    for (i, id) in calm.iter().enumerate() {
        let photo = NewPhoto {
            owner_id: *id,
            caption: None,
            format: ImageFormat::Jpeg,
            width: 1,
            height: i as u32 + 1,
        };
        if s.create_photo(&photo).await.is_err() {
            calm_failures += 1;
        }
    }
    assert_eq!(calm_failures, 0, "writes to the other set go on");
    t.s2.replicas[0].promote().await.unwrap();
    let hit_user = hit[0];
    eventually(PATIENCE, "the promoted replica takes writes", || async {
        s.create_photo(&NewPhoto {
            owner_id: hit_user,
            caption: None,
            format: ImageFormat::Jpeg,
            width: 1,
            height: 1,
        })
        .await
        .is_ok()
    })
    .await;
    for id in &hit {
        assert!(
            s.user_by_id(*id).await.unwrap().is_some(),
            "acknowledged sign-ups survive the failover"
        );
    }
    let _ = &t.s1;
}

/// Reads on every node of every set of `store`'s routers.
fn reads(store: &ShardedStore) -> u64 {
    store
        .sets()
        .values()
        .flat_map(|r| r.status())
        .map(|n| n.reads)
        .sum()
}

/// `readers` feed reads by `followers` (in turn) from 8 tasks on `store`;
/// the database reads they cost each, and the read latencies, sorted.
async fn feed_reads(store: &ShardedStore, followers: &[UserId], n: usize) -> (f64, Vec<Duration>) {
    let before = reads(store);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..8 {
        let (store, followers) = (store.clone(), followers.to_vec());
        tasks.spawn(async move {
            let mut took = Vec::new();
            for i in (task..n).step_by(8) {
                let start = std::time::Instant::now();
                let page = Page {
                    before: None,
                    limit: 20,
                };
                let feed = store
                    .feed_ids(followers[i % followers.len()], page)
                    .await
                    .unwrap();
                took.push(start.elapsed());
                assert_eq!(feed.len(), 20, "a full page of the celebrity's photos");
            }
            took
        });
    }
    let mut took: Vec<Duration> = tasks.join_all().await.concat();
    took.sort();
    ((reads(store) - before) as f64 / n as f64, took)
}

/// A celebrity with a thousand followers uploads while they read their
/// feeds: with the hot-key defence, the celebrity's photos come from the
/// near-cache, so a feed read costs one database read (the reader's own
/// shard) however many read; without it, two. The feed stays complete and
/// ordered, a photo uploaded meanwhile shows, and `report` names the
/// celebrity as the hottest user.
#[tokio::test]
async fn a_celebritys_followers_read_their_feeds_with_bounded_database_work() {
    let t = two_sets(
        (0, 0),
        ShardedConfig {
            celebrity_followers: 50,
            ..ShardedConfig::default()
        },
    )
    .await;
    let s = &t.store;
    let registry = prometheus::Registry::new();
    s.register_metrics(&registry).unwrap();
    let star = s.create_user(&name("star", 0), "h").await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..16 {
        let s = s.clone();
        tasks.spawn(async move {
            let mut fans = Vec::new();
            for i in (chunk..1000).step_by(16) {
                let fan = s.create_user(&name("fan", i), "h").await.unwrap();
                s.follow(fan, star).await.unwrap();
                fans.push(fan);
            }
            fans
        });
    }
    let fans: Vec<UserId> = tasks.join_all().await.concat();
    assert_eq!(s.profile(star).await.unwrap().unwrap().followers, 1000);
    let upload = move |s: ShardedStore| async move {
        let id = s
            .create_photo(&NewPhoto {
                owner_id: star,
                caption: None,
                format: ImageFormat::Jpeg,
                width: 1,
                height: 1,
            })
            .await
            .unwrap()
            .id;
        s.set_photo_status(id, PhotoStatus::Ready).await.unwrap();
        id
    };
    let mut photos = Vec::new();
    for _ in 0..30 {
        photos.push(upload(s.clone()).await);
    }
    let entries = both(&t, "SELECT count(*) FROM feed_entries").await;
    assert!(
        entries <= 50,
        "a celebrity's photos are not fanned out ({entries} feed entries)"
    );

    // The same reads through a store without the defence (another process).
    let cold = ShardedStore::connect(
        "s1",
        BTreeMap::from([
            ("s1".to_owned(), router("s1", &t.s1).await),
            ("s2".to_owned(), router("s2", &t.s2).await),
        ]),
        ShardedConfig {
            hot_share: 0.0,
            ..ShardedConfig::default()
        },
        None,
    )
    .await
    .unwrap();
    let (cold_cost, cold_took) = feed_reads(&cold, &fans, 800).await;

    // With it, while the celebrity uploads three more photos.
    let uploads = tokio::spawn({
        let s = s.clone();
        async move {
            let mut ids = Vec::new();
            for _ in 0..3 {
                ids.push(upload(s.clone()).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ids
        }
    });
    let (hot_cost, hot_took) = feed_reads(s, &fans, 800).await;
    photos.extend(uploads.await.unwrap());
    let p99 = |took: &[Duration]| took[took.len() * 99 / 100];
    println!(
        "celebrity with 1000 followers, 800 feed reads from 8 tasks: {cold_cost:.2} database reads per feed read \
         and p99 {:?} without the hot-key defence; {hot_cost:.2} and p99 {:?} with it",
        p99(&cold_took),
        p99(&hot_took)
    );
    assert!(
        cold_cost >= 1.9,
        "without the defence every read asks the celebrity's set ({cold_cost:.2})"
    );
    assert!(
        hot_cost <= 1.2,
        "with it the celebrity's photos come from the near-cache ({hot_cost:.2})"
    );

    // Complete and ordered, the photos uploaded during the reads included
    // (this process's own uploads drop its near-cache entry).
    photos.reverse();
    let feed = s
        .feed_ids(
            fans[0],
            Page {
                before: None,
                limit: 20,
            },
        )
        .await
        .unwrap();
    assert_eq!(feed, photos[..20], "the newest 20, newest first");
    let page2 = s
        .feed_ids(
            fans[0],
            Page {
                before: feed.last().copied(),
                limit: 20,
            },
        )
        .await
        .unwrap();
    assert_eq!(page2, photos[20..], "the next page, older ones");

    let report = s.report().await.unwrap();
    let hottest = &report.hot_users[0];
    assert_eq!(hottest.username.as_deref(), Some("star0"), "{report:?}");
    assert!(hottest.share > 0.3, "{report:?}");
    assert!(report.near_hits >= 700, "{report:?}");
    assert!(
        report.sets.iter().map(|s| s.requests).sum::<u64>() > 1600,
        "{report:?}"
    );
    // And in Prometheus: the near-cache's hits, the celebrity's share.
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    let hits = text
        .lines()
        .find(|l| l.starts_with("hot_reads_total{result=\"near_hit\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(hits.is_some_and(|h| h >= 700.0), "{text}");
    assert!(
        text.contains(&format!("hot_user_share{{user=\"{}\"}}", star.0)),
        "{text}"
    );
}
