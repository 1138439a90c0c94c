//! `scalestack ctl`: a client of the orchestrator's control API.

use crate::supervisor::ChildStatus;
use anyhow::{bail, Context};
use std::time::Duration;

/// What `ctl` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlCommand {
    Ps,
    Kill {
        name: String,
        signal: String,
    },
    Start {
        name: String,
    },
    Scale {
        role: String,
        count: usize,
    },
    Autoscale,
    JobsDead {
        limit: usize,
    },
    JobsRetry {
        id: i64,
    },
    Shards,
    /// Start a move and follow it (`wait`) to its end.
    Reshard {
        shards: Option<String>,
        to: Option<String>,
        wait: bool,
    },
    /// Follow the latest move (or show how it ended).
    ReshardStatus,
    /// Ask the running move to roll back, and follow it.
    ReshardAbort,
    /// Kill every process of a site and hold it down.
    SiteFail {
        site: String,
    },
    /// Start a failed site again.
    SiteRestore {
        site: String,
    },
    /// The collected log lines that match, and with `follow` those that
    /// come, until interrupted.
    Logs {
        filter: crate::logs::LogFilter,
        follow: bool,
    },
}

/// Parses `ROLE=N` of `ctl scale`.
pub fn parse_scale(s: &str) -> anyhow::Result<(String, usize)> {
    let Some((role, n)) = s.split_once('=') else {
        bail!("expected ROLE=COUNT, like web=5, not {s:?}");
    };
    let n: usize = n
        .trim()
        .parse()
        .with_context(|| format!("{n:?} is not a count"))?;
    Ok((role.trim().to_owned(), n))
}

/// Runs one command against the control API at `url` and prints the result.
pub async fn run(url: &str, command: CtlCommand) -> anyhow::Result<()> {
    let url = url.trim_end_matches('/');
    let http = reqwest::Client::builder()
        // A scale drains servers, which waits for their requests in flight.
        .timeout(Duration::from_secs(120))
        .build()?;
    let request = match &command {
        CtlCommand::Ps => http.get(format!("{url}/api/ps")),
        CtlCommand::Kill { name, signal } => http
            .post(format!("{url}/api/processes/{name}/kill"))
            .query(&[("signal", signal)]),
        CtlCommand::Start { name } => http.post(format!("{url}/api/processes/{name}/start")),
        CtlCommand::Scale { role, count } => http
            .post(format!("{url}/api/scale"))
            .json(&serde_json::json!({ "role": role, "count": count })),
        CtlCommand::Autoscale => http.get(format!("{url}/api/autoscale")),
        CtlCommand::JobsDead { limit } => http
            .get(format!("{url}/api/jobs/dead"))
            .query(&[("limit", limit)]),
        CtlCommand::JobsRetry { id } => http.post(format!("{url}/api/jobs/{id}/retry")),
        CtlCommand::Shards => http.get(format!("{url}/api/shards")),
        CtlCommand::SiteFail { site } => http.post(format!("{url}/api/sites/{site}/fail")),
        CtlCommand::SiteRestore { site } => http.post(format!("{url}/api/sites/{site}/restore")),
        CtlCommand::Reshard { shards, to, .. } => http
            .post(format!("{url}/api/reshard"))
            .json(&serde_json::json!({ "shards": shards, "to": to })),
        CtlCommand::ReshardAbort => http.post(format!("{url}/api/reshard/abort")),
        CtlCommand::ReshardStatus => return follow_move(&http, url).await,
        CtlCommand::Logs { filter, follow } => return logs(&http, url, filter.clone(), *follow).await,
    };
    let text = call(request, url).await?;
    match command {
        CtlCommand::Ps | CtlCommand::Scale { .. } => {
            let ps: Vec<ChildStatus> = serde_json::from_str(&text).context("unexpected answer")?;
            print!("{}", table(&ps));
        }
        CtlCommand::Kill { name, signal } => {
            let role = serde_json::from_str::<ChildStatus>(&text).map(|c| c.role).ok();
            if role == Some(crate::Role::Postgres) {
                // The failover controller decides for its nodes: it
                // restarts a replica and fails over from a primary.
                println!("sent SIG{signal} to {name}; up restarts it, or fails over if it was the primary")
            } else {
                println!("sent SIG{signal} to {name}; it stays down until `ctl start {name}`")
            }
        }
        CtlCommand::Start { name } => println!("{name} starting"),
        CtlCommand::SiteFail { .. } | CtlCommand::SiteRestore { .. } => {
            let change: crate::site_failure::SiteChange =
                serde_json::from_str(&text).context("unexpected answer")?;
            let done = if matches!(command, CtlCommand::SiteFail { .. }) {
                format!(
                    "failed: killed {} and the {} processes of its up",
                    change.components.join(", "),
                    change.site_processes
                )
            } else {
                format!("restoring: {}", change.components.join(", "))
            };
            println!("site {} {done}", change.site);
        }
        CtlCommand::Autoscale => {
            let tiers: serde_json::Value = serde_json::from_str(&text).context("unexpected answer")?;
            print!("{}", autoscale_table(&tiers));
        }
        CtlCommand::JobsDead { .. } => {
            let jobs: Vec<domain::DeadJob> = serde_json::from_str(&text).context("unexpected answer")?;
            print!("{}", dead_table(&jobs));
        }
        CtlCommand::JobsRetry { id } => println!("job {id} is ready again"),
        CtlCommand::Shards => {
            let report: store_postgres::ShardReport =
                serde_json::from_str(&text).context("unexpected answer")?;
            print!("{}", shards_table(&report));
        }
        CtlCommand::Reshard { wait, .. } => follow_started(&http, url, &text, wait).await?,
        CtlCommand::ReshardAbort => follow_started(&http, url, &text, true).await?,
        CtlCommand::ReshardStatus | CtlCommand::Logs { .. } => unreachable!("followed above"),
    }
    Ok(())
}

/// Sends `request`; the body of a successful answer, else the API's error.
/// `ctl logs`: one line per record, `time component LEVEL message
/// {other fields}`; with `follow`, asks again every second for what came
/// since the last line shown.
async fn logs(
    http: &reqwest::Client,
    url: &str,
    mut filter: crate::logs::LogFilter,
    follow: bool,
) -> anyhow::Result<()> {
    let mut shown_at_last: Vec<String> = Vec::new();
    loop {
        let mut query: Vec<(&str, String)> = Vec::new();
        let f = &filter;
        for (k, v) in [
            ("component", &f.component),
            ("level", &f.level),
            ("request_id", &f.request_id),
            ("user", &f.user),
            ("since", &f.since),
        ] {
            if let Some(v) = v {
                query.push((k, v.clone()));
            }
        }
        if let Some(limit) = f.limit {
            query.push(("limit", limit.to_string()));
        }
        let text = call(http.get(format!("{url}/api/logs")).query(&query), url).await?;
        let lines: Vec<serde_json::Value> = serde_json::from_str(&text).context("unexpected answer")?;
        let mut last_time = filter.since.clone();
        let mut at_last = Vec::new();
        for v in &lines {
            let raw = v.to_string();
            let time = v["timestamp"].as_str().unwrap_or("").to_owned();
            if Some(&time) == filter.since.as_ref() && shown_at_last.contains(&raw) {
                continue;
            }
            println!("{}", log_line(v));
            if Some(&time) != last_time.as_ref() {
                at_last.clear();
                last_time = Some(time);
            }
            at_last.push(raw);
        }
        if !follow {
            return Ok(());
        }
        if last_time != filter.since {
            shown_at_last = at_last;
        } else {
            shown_at_last.extend(at_last);
        }
        filter.since = last_time;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One collected record for a terminal.
fn log_line(v: &serde_json::Value) -> String {
    let mut rest = v.clone();
    let take = |rest: &mut serde_json::Value, k: &str| {
        rest.as_object_mut()
            .and_then(|m| m.remove(k))
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let time = take(&mut rest, "timestamp");
    let component = take(&mut rest, "component");
    let level = take(&mut rest, "level");
    let message = rest["fields"]
        .as_object_mut()
        .and_then(|f| f.remove("message"))
        .and_then(|m| m.as_str().map(str::to_owned))
        .unwrap_or_default();
    if rest["fields"].as_object().is_some_and(|f| f.is_empty()) {
        rest.as_object_mut().map(|m| m.remove("fields"));
    }
    rest.as_object_mut().map(|m| m.remove("site"));
    if rest.as_object().is_some_and(|m| m.is_empty()) {
        return format!("{time} {component:<12} {level:<5} {message}");
    }
    format!("{time} {component:<12} {level:<5} {message} {rest}")
}

async fn call(request: reqwest::RequestBuilder, url: &str) -> anyhow::Result<String> {
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the orchestrator at {url}; is `scalestack up` running?"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        bail!("{message}");
    }
    Ok(text)
}

/// `ctl reshard` (or `--abort`) once the API took it: the move as it
/// stands in `text`, then, with `wait`, followed to its end.
async fn follow_started(http: &reqwest::Client, url: &str, text: &str, wait: bool) -> anyhow::Result<()> {
    let started: store_postgres::MoveStatus = serde_json::from_str(text).context("unexpected answer")?;
    eprintln!(
        "move {}: logical shards {}-{} from {} to {}",
        started.id, started.first_shard, started.last_shard, started.source, started.target
    );
    if !wait {
        println!(
            "move {} started; `scalestack ctl reshard --status` follows it",
            started.id
        );
        return Ok(());
    }
    follow_move(http, url).await
}

/// Polls the latest move until it is done or aborted, drawing its progress.
async fn follow_move(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stderr().is_terminal();
    let mut last_phase = String::new();
    loop {
        let text = call(http.get(format!("{url}/api/reshard")), url).await?;
        let Some(m): Option<store_postgres::MoveStatus> =
            serde_json::from_str(&text).context("unexpected answer")?
        else {
            println!("no move has run");
            return Ok(());
        };
        if terminal {
            eprint!("\r{}\x1b[K", progress_line(&m));
            let _ = std::io::stderr().flush();
        } else if m.phase != last_phase {
            eprintln!("{}", progress_line(&m));
        }
        last_phase.clone_from(&m.phase);
        if m.finished() {
            if terminal {
                eprintln!();
            }
            println!("{}", move_summary(&m));
            if m.phase == "aborted" {
                bail!("move {} was rolled back: nothing changed", m.id);
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `[#########...........]  45%  copying  12000/26000 rows`.
pub fn progress_line(m: &store_postgres::MoveStatus) -> String {
    const WIDTH: i64 = 30;
    let done = match m.phase.as_str() {
        "copying" => m.rows_copied.min(m.rows_total),
        _ => m.rows_total,
    };
    let filled = if m.rows_total > 0 {
        done * WIDTH / m.rows_total
    } else {
        WIDTH
    };
    let percent = if m.rows_total > 0 {
        done * 100 / m.rows_total
    } else {
        100
    };
    let mut line = format!(
        "[{}{}] {percent:>3}%  {:<11} {done}/{} rows",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize),
        m.phase,
        m.rows_total
    );
    if m.rows_replayed > 0 {
        line.push_str(&format!(", {} replayed", m.rows_replayed));
    }
    if m.rows_verified > 0 {
        line.push_str(&format!(", {} verified", m.rows_verified));
    }
    if m.rows_deleted > 0 {
        line.push_str(&format!(", {} cleaned", m.rows_deleted));
    }
    line
}

/// How a finished move ended, in one line.
pub fn move_summary(m: &store_postgres::MoveStatus) -> String {
    let took = m.finished_at.unwrap_or(m.updated_at) - m.started_at;
    if m.phase == "aborted" {
        return format!(
            "move {} of logical shards {}-{} to {} rolled back after {took} ms: {}",
            m.id,
            m.first_shard,
            m.last_shard,
            m.target,
            m.error.as_deref().unwrap_or("aborted")
        );
    }
    format!(
        "moved logical shards {}-{} from {} to {} in {took} ms: {} rows copied, {} replayed, {} verified, {} deleted from {}; \
         writes to them paused {} ms at the cutover; shard map epoch {}",
        m.first_shard,
        m.last_shard,
        m.source,
        m.target,
        m.rows_copied,
        m.rows_replayed,
        m.rows_verified,
        m.rows_deleted,
        m.source,
        m.pause_ms.map_or("?".into(), |p| p.to_string()),
        m.epoch_after.map_or("?".into(), |e| e.to_string()),
    )
}

/// `ctl autoscale`: one line per autoscaled tier.
pub fn autoscale_table(tiers: &serde_json::Value) -> String {
    let Some(tiers) = tiers.as_object().filter(|t| !t.is_empty()) else {
        return "no tier is autoscaled (add [autoscale.worker] or [autoscale.web] to the topology)\n".into();
    };
    let mut out = format!(
        "{:<7} {:>4} {:>4} {:>7} {:>7} {:>5} {:>5}  {}\n",
        "ROLE", "MIN", "MAX", "RUNNING", "DESIRED", "UPS", "DOWNS", "REASON"
    );
    for (role, t) in tiers {
        let last = &t["last"];
        let reason = match (t["error"].as_str(), last["reason"].as_str()) {
            (Some(e), _) => format!("error: {e}"),
            (None, Some(r)) => r.to_owned(),
            (None, None) => "no decision yet".into(),
        };
        out.push_str(&format!(
            "{:<7} {:>4} {:>4} {:>7} {:>7} {:>5} {:>5}  {}\n",
            role,
            t["min"],
            t["max"],
            last["current"],
            last["desired"],
            t["scaled_up"],
            t["scaled_down"],
            reason
        ));
    }
    out
}

/// `ctl shards`: the map's epoch, then one line per replica set: its
/// logical shards, rows, size and load, and its fullest logical shards.
pub fn shards_table(report: &store_postgres::ShardReport) -> String {
    let total = |f: fn(&store_postgres::SetReport) -> i64| report.sets.iter().map(f).sum::<i64>().max(1);
    let (users, photos, reads) = (total(|s| s.users), total(|s| s.photos), total(|s| s.rows_read));
    let requests = report.sets.iter().map(|s| s.requests).sum::<u64>().max(1) as i64;
    let pct = |n: i64, of: i64| format!("{:.0}%", n as f64 * 100.0 / of as f64);
    let mut out = format!(
        "shard map epoch {}, {} replica sets, requests from {} processes\n",
        report.epoch,
        report.sets.len(),
        report.processes
    );
    out += &format!(
        "{:<8} {:<16} {:>7} {:>9} {:>5} {:>9} {:>5} {:>9} {:>9} {:>9} {:>12} {:>5} {:>10} {:>5}  fullest logical shards\n",
        "SET", "LOGICAL", "SHARDS", "USERS", "", "PHOTOS", "", "FOLLOWS", "FEED", "MB", "ROWS READ", "", "REQUESTS", ""
    );
    for s in &report.sets {
        let fullest: Vec<String> = s
            .fullest
            .iter()
            .map(|(shard, n)| format!("{shard}:{n}"))
            .collect();
        out += &format!(
            "{:<8} {:<16} {:>7} {:>9} {:>5} {:>9} {:>5} {:>9} {:>9} {:>9.1} {:>12} {:>5} {:>10} {:>5}  {}\n",
            s.name,
            s.ranges.join(","),
            s.logical_shards,
            s.users,
            pct(s.users, users),
            s.photos,
            pct(s.photos, photos),
            s.follows,
            s.feed_entries,
            s.bytes as f64 / 1e6,
            s.rows_read,
            pct(s.rows_read, reads),
            s.requests,
            pct(s.requests as i64, requests),
            match &s.error {
                Some(e) => format!("error: {e}"),
                None => fullest.join(" "),
            }
        );
    }
    out += "busiest logical shards (shard:requests)\n";
    for s in &report.sets {
        let busiest: Vec<String> = s
            .busiest
            .iter()
            .map(|(shard, n)| format!("{shard}:{n}"))
            .collect();
        out += &format!("  {:<8} {}\n", s.name, busiest.join(" "));
    }
    out += "hottest users (recent requests, share of all)\n";
    for u in &report.hot_users {
        out += &format!(
            "  {:<20} {:>20} on {:<6} shard {:<5} {:>9} {:>5}\n",
            u.username.as_deref().map_or("?".to_owned(), |n| format!("@{n}")),
            u.id,
            u.set,
            u.shard,
            u.requests,
            format!("{:.0}%", u.share * 100.0)
        );
    }
    out += &format!(
        "hot reads: {} answered by the web servers' near-caches, {} read from the sets\n",
        report.near_hits, report.near_loads
    );
    out
}

/// `ctl jobs dead`: one line per dead job.
pub fn dead_table(jobs: &[domain::DeadJob]) -> String {
    if jobs.is_empty() {
        return "no dead job\n".into();
    }
    let mut out = format!(
        "{:<20} {:<14} {:>8}  {:<30} {}\n",
        "ID", "KIND", "ATTEMPTS", "PAYLOAD", "LAST ERROR"
    );
    for j in jobs {
        let mut payload: String = String::from_utf8_lossy(&j.payload).chars().take(30).collect();
        payload.retain(|c| !c.is_control());
        out.push_str(&format!(
            "{:<20} {:<14} {:>8}  {:<30} {}\n",
            j.id, j.kind, j.attempts, payload, j.last_error
        ));
    }
    out
}

/// `ps` output: one line per process.
pub fn table(ps: &[ChildStatus]) -> String {
    let mut out = format!(
        "{:<12} {:<8} {:<22} {:<11} {:>8} {:>8}  {}\n",
        "NAME", "ROLE", "ADDRESS", "STATE", "PID", "RESTARTS", "SITE"
    );
    for c in ps {
        out += &format!(
            "{:<12} {:<8} {:<22} {:<11} {:>8} {:>8}  {}\n",
            c.name,
            c.role,
            c.addr.map(|a| a.to_string()).unwrap_or_default(),
            c.state,
            c.pid.map(|p| p.to_string()).unwrap_or_default(),
            c.restarts,
            c.site
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_arguments() {
        assert_eq!(parse_scale("web=5").unwrap(), ("web".into(), 5));
        assert!(parse_scale("web").is_err());
        assert!(parse_scale("web=-1").is_err());
        assert!(parse_scale("web=many").is_err());
    }

    #[test]
    fn the_table_has_one_line_per_process() {
        let ps = [ChildStatus {
            name: "pg2".into(),
            role: crate::Role::Postgres,
            site: "local".into(),
            addr: Some("127.0.0.1:6433".parse().unwrap()),
            state: "replica".into(),
            pid: Some(42),
            restarts: 1,
            since: None,
            via: None,
        }];
        let t = table(&ps);
        let line = t.lines().nth(1).unwrap();
        assert!(line.starts_with("pg2          postgres 127.0.0.1:6433"), "{t}");
        assert!(line.contains(" replica ") && line.ends_with("1  local"), "{t}");
    }

    #[test]
    fn signals() {
        use crate::control::parse_signal;
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("kill"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("HUP"), None);
    }

    #[test]
    fn the_shards_table_shows_each_sets_share_and_its_errors() {
        use store_postgres::{SetReport, ShardReport};
        let set = |name: &str, users, error: Option<&str>| SetReport {
            name: name.into(),
            ranges: vec!["0-4095".into()],
            logical_shards: 4096,
            users,
            photos: 10,
            follows: 0,
            feed_entries: 0,
            bytes: 2_000_000,
            commits: 5,
            rows_read: 50,
            fullest: vec![(7, 3)],
            requests: users as u64,
            busiest: vec![(7, users as u64)],
            error: error.map(str::to_owned),
        };
        let report = ShardReport {
            epoch: 3,
            sets: vec![set("s1", 30, None), set("s2", 10, Some("connection refused"))],
            processes: 2,
            hot_users: vec![store_postgres::HotUser {
                id: "8796093022208".into(),
                username: Some("celeb".into()),
                set: "s1".into(),
                shard: 7,
                requests: 20,
                share: 0.5,
            }],
            near_hits: 90,
            near_loads: 3,
        };
        let t = shards_table(&report);
        assert!(
            t.starts_with("shard map epoch 3, 2 replica sets, requests from 2 processes\n"),
            "{t}"
        );
        let s1 = t.lines().nth(2).unwrap();
        assert!(
            s1.starts_with("s1 ") && s1.contains(" 75% ") && s1.ends_with("7:3"),
            "{t}"
        );
        let s2 = t.lines().nth(3).unwrap();
        assert!(
            s2.contains(" 25% ") && s2.ends_with("error: connection refused"),
            "{t}"
        );
        assert!(t.contains("  s1       7:30\n"), "{t}");
        let celeb = t.lines().find(|l| l.contains("@celeb")).unwrap();
        assert!(celeb.contains("on s1") && celeb.ends_with(" 20   50%"), "{t}");
        assert!(t.ends_with("hot reads: 90 answered by the web servers' near-caches, 3 read from the sets\n"));
    }

    #[test]
    fn a_move_draws_its_progress_and_sums_up_how_it_ended() {
        let mut m = store_postgres::MoveStatus {
            id: 4,
            first_shard: 4096,
            last_shard: 6143,
            source: "s2".into(),
            target: "s3".into(),
            phase: "copying".into(),
            rows_total: 1000,
            rows_copied: 450,
            rows_replayed: 0,
            rows_verified: 0,
            rows_deleted: 0,
            epoch_after: None,
            pause_ms: None,
            abort_requested: false,
            error: None,
            started_at: 10_000,
            updated_at: 11_000,
            finished_at: None,
        };
        let line = progress_line(&m);
        assert!(
            line.starts_with(&format!("[{}{}]  45%  copying", "#".repeat(13), ".".repeat(17))),
            "{line}"
        );
        assert!(line.ends_with("450/1000 rows"), "{line}");
        m.phase = "done".into();
        m.rows_copied = 1000;
        m.rows_replayed = 12;
        m.rows_verified = 1012;
        m.rows_deleted = 1000;
        m.pause_ms = Some(180);
        m.epoch_after = Some(3);
        m.finished_at = Some(12_500);
        assert!(progress_line(&m).starts_with(&format!("[{}] 100%", "#".repeat(30))));
        let summary = move_summary(&m);
        assert!(
            summary.contains("4096-6143 from s2 to s3 in 2500 ms"),
            "{summary}"
        );
        assert!(
            summary.contains("paused 180 ms") && summary.ends_with("epoch 3"),
            "{summary}"
        );
        m.phase = "aborted".into();
        m.error = Some("abort requested".into());
        assert!(move_summary(&m).ends_with("rolled back after 2500 ms: abort requested"));
    }
}
