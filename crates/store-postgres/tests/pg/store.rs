//! The SQL store port: the shared battery (`conformance::store`), on
//! PostgreSQL.

use crate::helpers::spawn_db;
use store_postgres::PgStore;

#[tokio::test]
async fn conforms_to_the_store_port() {
    let db = spawn_db().await;
    conformance::store::run_all(&PgStore::new(db.pool.clone())).await;
    conformance::store::business_figures_count_what_happened(&PgStore::new(db.pool.clone())).await;
}
