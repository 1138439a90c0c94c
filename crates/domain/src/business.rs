//! The business's own figures, from the application's rows: sign-ups,
//! uploads and daily active users per UTC day, and day-1 / day-7
//! retention. A user is active on a day when they signed up, logged in,
//! uploaded or followed someone that day (every such row has its time).
//! The adapters run [`ACTIVITY_SQL`] (portable: SQLite and PostgreSQL) and
//! hand the rows to [`BusinessFigures::from_activity`], the pure part.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One row per (user, day active), since `{since}` (ms, inlined by the
/// adapter: a number it computed, never input): `user_id, day, signed_up`
/// where `signed_up` is 1 on the user's sign-up row. Days are UTC day
/// numbers (ms / 86 400 000).
pub const ACTIVITY_SQL: &str = "\
SELECT user_id, day, MAX(signed_up) AS signed_up FROM (\
 SELECT id AS user_id, created_at / 86400000 AS day, 1 AS signed_up, 0 AS uploads FROM users WHERE created_at >= {since} \
 UNION ALL SELECT owner_id, created_at / 86400000, 0, 1 FROM photos WHERE created_at >= {since} \
 UNION ALL SELECT follower_id, created_at / 86400000, 0, 0 FROM follows WHERE created_at >= {since} \
 UNION ALL SELECT user_id, created_at / 86400000, 0, 0 FROM sessions WHERE created_at >= {since}\
) AS activity GROUP BY user_id, day";

/// Uploads per day since `{since}`: `day, uploads`.
pub const UPLOADS_SQL: &str =
    "SELECT created_at / 86400000 AS day, COUNT(*) FROM photos WHERE created_at >= {since} GROUP BY day";

/// The figures of one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayFigures {
    /// UTC day number (days since 1970-01-01).
    pub day: i64,
    pub signups: i64,
    pub uploads: i64,
    pub active_users: i64,
}

/// What the business looks like over the last days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusinessFigures {
    /// Every user ever.
    pub users: i64,
    /// The last days, oldest first, today last.
    pub days: Vec<DayFigures>,
    /// Of the users who signed up on a day of the window whose next day has
    /// begun, the share active that next day (None: no such user).
    pub retention_d1: Option<f64>,
    /// The same seven days later.
    pub retention_d7: Option<f64>,
}

impl BusinessFigures {
    /// The first day of a window of `days` ending `today`, in ms: what
    /// the adapters pass as `{since}`. Retention needs the cohorts' later
    /// days, so the window starts 7 days earlier than shown.
    pub fn since_ms(today: i64, days: i64) -> i64 {
        (today - days - 7 + 1) * 86_400_000
    }

    /// The figures of the `days` days ending `today` from the activity rows
    /// (`user_id, day, signed_up`) and the uploads per day.
    pub fn from_activity(
        users: i64,
        today: i64,
        days: i64,
        activity: &[(i64, i64, bool)],
        uploads: &[(i64, i64)],
    ) -> BusinessFigures {
        let mut active: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
        let mut signed_up: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for &(user, day, signup) in activity {
            active.entry(day).or_default().insert(user);
            if signup {
                signed_up.entry(day).or_default().push(user);
            }
        }
        let uploads: BTreeMap<i64, i64> = uploads.iter().copied().collect();
        let first = today - days + 1;
        let list = (first..=today)
            .map(|day| DayFigures {
                day,
                signups: signed_up.get(&day).map_or(0, |u| u.len() as i64),
                uploads: uploads.get(&day).copied().unwrap_or(0),
                active_users: active.get(&day).map_or(0, |u| u.len() as i64),
            })
            .collect();
        let retention = |after: i64| {
            let (mut cohort, mut back) = (0usize, 0usize);
            for (&day, users) in &signed_up {
                if day + after > today {
                    continue;
                }
                cohort += users.len();
                let later = active.get(&(day + after));
                back += users
                    .iter()
                    .filter(|u| later.is_some_and(|l| l.contains(u)))
                    .count();
            }
            (cohort > 0).then(|| back as f64 / cohort as f64)
        };
        BusinessFigures {
            users,
            days: list,
            retention_d1: retention(1),
            retention_d7: retention(7),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_active_users_and_retention() {
        let today = 20_000;
        // Ada signed up two days ago and came back the next day; Bob
        // signed up yesterday and did not come back today; Cy signed up
        // today; Ada uploaded twice today.
        let activity = [
            (1, today - 2, true),
            (1, today - 1, false),
            (1, today, false),
            (2, today - 1, true),
            (3, today, true),
        ];
        let f = BusinessFigures::from_activity(3, today, 3, &activity, &[(today, 2)]);
        assert_eq!(f.days.len(), 3);
        assert_eq!(
            f.days[2],
            DayFigures {
                day: today,
                signups: 1,
                uploads: 2,
                active_users: 2
            }
        );
        assert_eq!(f.days[1].active_users, 2);
        // Cohorts with a next day: Ada (back), Bob (not): 1/2.
        assert_eq!(f.retention_d1, Some(0.5));
        assert_eq!(f.retention_d7, None);
        assert_eq!(BusinessFigures::since_ms(today, 3) / 86_400_000, today - 9);
    }
}
