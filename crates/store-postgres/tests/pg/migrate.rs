//! Connecting and migrating.

use std::time::Duration;
use test_support::TestPg;

#[tokio::test]
async fn concurrent_migrations_apply_each_once() {
    let pg = TestPg::start(0).await;
    let url = pg.primary.url();
    // Separate pools, as separate processes starting at once would have.
    let mut pools = vec![];
    for _ in 0..4 {
        pools.push(store_postgres::connect(&url, 2).await.unwrap());
    }
    let runs: Vec<_> = pools
        .iter()
        .map(|p| {
            let p = p.clone();
            tokio::spawn(async move { store_postgres::migrate(&p).await })
        })
        .collect();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    // And again, once everything is applied.
    store_postgres::migrate(&pools[0]).await.unwrap();
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM _migrations ORDER BY version")
        .fetch_all(&pools[0])
        .await
        .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    for table in ["users", "photos", "follows", "sessions", "jobs"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&pools[1])
            .await
            .unwrap();
        assert_eq!(n, 0, "{table}");
    }
}

#[tokio::test]
async fn connections_carry_our_settings_unless_the_url_overrides_them() {
    let pg = TestPg::start(0).await;
    let url = pg.primary.url();
    let pool = store_postgres::connect(&url, 1).await.unwrap();
    let (timeout, app): (String, String) =
        sqlx::query_as("SELECT current_setting('statement_timeout'), current_setting('application_name')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((timeout.as_str(), app.as_str()), ("30s", "scalestack"));

    let sep = if url.contains('?') { '&' } else { '?' };
    let custom = format!("{url}{sep}options=-c%20statement_timeout%3D5s&application_name=other");
    let pool = store_postgres::connect(&custom, 1).await.unwrap();
    let (timeout, app): (String, String) =
        sqlx::query_as("SELECT current_setting('statement_timeout'), current_setting('application_name')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((timeout.as_str(), app.as_str()), ("5s", "other"));
}

#[tokio::test]
async fn an_unreachable_server_is_an_error_not_a_hang() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A guard against hanging for ever, far above the connect timeout; not a
    // measurement.
    let guard = store_postgres::CONNECT_TIMEOUT + Duration::from_secs(60);
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let err = tokio::time::timeout(guard, store_postgres::connect(&url, 1))
        .await
        .expect("connect gives up")
        .unwrap_err();
    assert!(matches!(err, domain::StoreError::Unavailable(_)), "{err}");
    assert!(store_postgres::connect("not a url", 1).await.is_err());
}
