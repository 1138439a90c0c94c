//! Replication probes for the database router: where the primary's WAL is,
//! how far a replica has replayed it, and which role a server plays.
//!
//! Positions are LSNs as `u64` (PostgreSQL prints them as `X/Y`, the high
//! and low 32 bits in hex), so "has this replica seen my write" is an
//! integer comparison.

use crate::unavailable;
use domain::StoreError;
use sqlx::PgPool;

/// Parses an LSN as PostgreSQL prints it (`16/B374D848`: two groups of at
/// most 8 hex digits) into `(high << 32) | low`. `None` for anything else.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let group = |s: &str| {
        if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(s, 16).ok()
    };
    Some((u64::from(group(high)?) << 32) | u64::from(group(low)?))
}

/// Prints an LSN as PostgreSQL does (`16/B374D848`), the inverse of
/// [`parse_lsn`]; usable as a `pg_lsn` literal.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

fn lsn_from_text(text: Option<String>) -> Result<Option<u64>, StoreError> {
    text.map(|t| parse_lsn(&t).ok_or_else(|| unavailable(format!("unexpected lsn {t:?}"))))
        .transpose()
}

/// `pg_current_wal_lsn()`: the end of the WAL written so far. Only a primary
/// can answer; on a replica (in recovery) it is an error.
pub async fn current_wal_lsn(pool: &PgPool) -> Result<u64, StoreError> {
    let text: Option<String> = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await
        .map_err(unavailable)?;
    lsn_from_text(text)?.ok_or_else(|| unavailable("pg_current_wal_lsn() is null"))
}

/// `pg_last_wal_replay_lsn()` on a replica: the WAL it has applied, so the
/// writes it can show. `None` on a primary, including a promoted former
/// replica (whose function would still report where its recovery stopped).
pub async fn replay_lsn(pool: &PgPool) -> Result<Option<u64>, StoreError> {
    let text: Option<String> =
        sqlx::query_scalar("SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text END")
            .fetch_one(pool)
            .await
            .map_err(unavailable)?;
    lsn_from_text(text)
}

/// On a replica, milliseconds since the commit time of the last transaction
/// it replayed (`now() - pg_last_xact_replay_timestamp()`, never negative).
/// `None` on a primary, and on a replica that has replayed no transaction
/// since it started.
///
/// Caveat: this measures the age of the last replayed commit, so while the
/// primary commits nothing it grows although the replica is fully caught
/// up. Compare [`replay_lsn`] with the primary's [`current_wal_lsn`] to know
/// whether a replica has seen a given write.
pub async fn replay_lag_ms(pool: &PgPool) -> Result<Option<u64>, StoreError> {
    let lag: Option<i64> = sqlx::query_scalar(
        "SELECT CASE WHEN pg_is_in_recovery() THEN \
           greatest(0, floor(extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000))::bigint \
         END",
    )
    .fetch_one(pool)
    .await
    .map_err(unavailable)?;
    Ok(lag.map(|ms| ms.max(0) as u64))
}

/// `pg_is_in_recovery()`: true on a replica (a standby replaying WAL), false
/// on a primary.
pub async fn is_in_recovery(pool: &PgPool) -> Result<bool, StoreError> {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(pool)
        .await
        .map_err(unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lsns_as_postgres_prints_them() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("0/1"), Some(1));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(parse_lsn("ffffffff/FFFFFFFF"), Some(u64::MAX));
        assert_eq!(parse_lsn("0/3000148"), Some(0x0300_0148));
    }

    #[test]
    fn refuses_what_is_not_an_lsn() {
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/0/0",
            "g/0",
            "0/-1",
            "+1/0",
            " 0/0",
            "0/0 ",
            "100000000/0",
            "0/100000000",
        ] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lsns_order_as_integers() {
        // The low group is not zero-padded, so text order is wrong where
        // integer order is right.
        assert!(parse_lsn("0/9").unwrap() < parse_lsn("0/10").unwrap());
        assert!(parse_lsn("0/FFFFFFFF").unwrap() < parse_lsn("1/0").unwrap());
    }

    #[test]
    fn formats_back() {
        for text in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "1/0"] {
            assert_eq!(format_lsn(parse_lsn(text).unwrap()), text);
        }
    }
}
