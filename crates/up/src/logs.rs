//! `[logs]`: every process's log lines gathered in one place by a real
//! collector, rsyslog (Debian's), which `up` runs as the component `logs`.
//!
//! The supervisor reads each child's stdout and stderr line by line; each
//! line still goes to `up`'s own output as before, and a copy, made a JSON
//! object carrying the child's `component` and `site` (a text line is
//! wrapped: `level`, `message`), goes to [`LogSink`]. Its shipper sends
//! them to rsyslog over TCP (RFC 5425 octet counting) from a bounded
//! buffer (`buffer_lines`), reconnecting, so nothing is lost while the
//! collector restarts unless the buffer fills (then the oldest lines go,
//! counted). rsyslog keeps a disk-assisted queue in front of its file,
//! `<data>/logs/scalestack.log`, rotated at `max_file_mb` with `keep_files`
//! old files kept. `ctl logs` searches them through the control API
//! ([`search`]).
//!
//! Why rsyslog: it is what a Debian machine already runs, takes TCP with
//! a disk queue, and its files are plain JSON lines that `grep` and `jq`
//! read; an OpenTelemetry collector would add a binary not packaged here.

use crate::component::{Bind, Component, Readiness, RestartPolicy};
use crate::role::Role;
use crate::supervisor::Launch;
use anyhow::Context;
use serde::Deserialize;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// `[logs]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsSection {
    /// The collector's TCP address. Default 127.0.0.1:5140.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Size at which the log file is rotated, MiB. Default 64.
    #[serde(default = "default_max_file_mb")]
    pub max_file_mb: u64,
    /// Rotated files kept. Default 5.
    #[serde(default = "default_keep_files")]
    pub keep_files: u32,
    /// Lines `up` holds while the collector is away. Default 100 000.
    #[serde(default = "default_buffer_lines")]
    pub buffer_lines: usize,
}

fn default_listen() -> SocketAddr {
    ([127, 0, 0, 1], 5140).into()
}
fn default_max_file_mb() -> u64 {
    64
}
fn default_keep_files() -> u32 {
    5
}
fn default_buffer_lines() -> usize {
    100_000
}

impl LogsSection {
    /// Refuses sizes that make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_file_mb >= 1, "logs.max_file_mb must be at least 1");
        anyhow::ensure!(
            (1..=100).contains(&self.keep_files),
            "logs.keep_files must be 1 to 100"
        );
        anyhow::ensure!(
            self.buffer_lines >= 1000,
            "logs.buffer_lines must be at least 1000"
        );
        Ok(())
    }

    /// The collector: `logs`, ready when it takes connections.
    pub fn component(&self, site: &str) -> Component {
        Component {
            name: "logs".into(),
            role: Role::Logs,
            site: site.into(),
            binds: vec![Bind::tcp(self.listen, "listen")],
            addr: Some(self.listen),
            metrics: None,
            ready: Readiness::Tcp(self.listen),
            depends_on: Vec::new(),
            restart: RestartPolicy::Always,
        }
    }

    /// rsyslogd in the foreground, its configuration, rotation script and
    /// queue under `<data>/logs/`.
    pub fn launch(&self, data_dir: &Path) -> anyhow::Result<Launch> {
        let dir = logs_dir(data_dir);
        std::fs::create_dir_all(dir.join("queue")).with_context(|| format!("creating {}", dir.display()))?;
        let rotate = dir.join("rotate.sh");
        let keep = self.keep_files;
        std::fs::write(
            &rotate,
            format!(
                "#!/bin/sh\n# Written by scalestack up: scalestack.log -> .1 -> ... -> .{keep}\ncd \"{dir}\" || exit 1\n\
                 i={keep}; while [ $i -gt 1 ]; do p=$((i-1)); [ -f scalestack.log.$p ] && mv -f scalestack.log.$p scalestack.log.$i; i=$p; done\n\
                 [ -f scalestack.log ] && mv -f scalestack.log scalestack.log.1\nexit 0\n",
                dir = dir.display()
            ),
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rotate, std::fs::Permissions::from_mode(0o755))?;
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                "# Written by scalestack up at every start: edits are lost.\n\
                 global(workDirectory=\"{queue}\")\n\
                 module(load=\"imtcp\")\n\
                 template(name=\"line\" type=\"string\" string=\"%msg%\\n\")\n\
                 ruleset(name=\"scalestack\" queue.type=\"LinkedList\" queue.filename=\"scalestack\"\n  \
                 queue.saveOnShutdown=\"on\" queue.maxDiskSpace=\"256m\") {{\n  \
                 action(type=\"omfile\" file=\"{file}\" template=\"line\"\n    \
                 rotation.sizeLimit=\"{limit}\" rotation.sizeLimitCommand=\"{rotate}\")\n}}\n\
                 input(type=\"imtcp\" address=\"{ip}\" port=\"{port}\" ruleset=\"scalestack\")\n",
                queue = dir.join("queue").display(),
                file = dir.join("scalestack.log").display(),
                limit = self.max_file_mb << 20,
                rotate = rotate.display(),
                ip = self.listen.ip(),
                port = self.listen.port(),
            ),
        )?;
        // /usr/sbin is not on every user's PATH.
        let program = Some(PathBuf::from("/usr/sbin/rsyslogd"))
            .filter(|p| p.is_file())
            .or_else(|| engines::on_path("rsyslogd"))
            .context("rsyslogd is not installed (scripts/setup.sh installs rsyslog)")?;
        Ok(Launch::Program {
            program,
            args: vec![
                "-n".into(),
                "-f".into(),
                conf.into(),
                "-i".into(),
                dir.join("rsyslogd.pid").into(),
            ],
        })
    }
}

/// Where the collector keeps its files.
pub fn logs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("logs")
}

/// The copy of every child's lines on its way to the collector.
pub struct LogSink {
    queue: Mutex<VecDeque<Vec<u8>>>,
    capacity: usize,
    wake: tokio::sync::Notify,
    /// Lines dropped because the buffer was full.
    pub dropped: AtomicU64,
}

impl LogSink {
    /// A sink holding at most `capacity` lines, and its shipper to `collector`.
    pub fn start(collector: SocketAddr, capacity: usize) -> Arc<LogSink> {
        let sink = Arc::new(LogSink {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            wake: tokio::sync::Notify::new(),
            dropped: AtomicU64::new(0),
        });
        tokio::spawn(ship(sink.clone(), collector));
        sink
    }

    /// Queues one line of child `component` in `site`.
    pub fn send(&self, component: &str, site: &str, line: &str) {
        let json = as_json(component, site, line);
        let frame = frame(component, &json);
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.capacity {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(frame);
        drop(q);
        self.wake.notify_one();
    }
}

/// Sends the queued frames, one connection at a time; a frame that could
/// not be written stays first in line for the next connection.
async fn ship(sink: Arc<LogSink>, collector: SocketAddr) {
    loop {
        let Ok(mut conn) = tokio::net::TcpStream::connect(collector).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        loop {
            let next = sink
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .front()
                .cloned();
            let Some(frame) = next else {
                let _ = tokio::time::timeout(Duration::from_millis(500), sink.wake.notified()).await;
                continue;
            };
            if conn.write_all(&frame).await.is_err() {
                break;
            }
            sink.queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A line as one JSON object with the child's `component` and `site`: a
/// JSON line gets them added, a text line (an engine's, or `--log-format
/// text`) is wrapped, its colour codes removed and its level guessed.
fn as_json(component: &str, site: &str, line: &str) -> String {
    let mut value = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(map)) => serde_json::Value::Object(map),
        _ => {
            let text = strip_ansi(line);
            let level = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .into_iter()
                .find(|l| text.split_whitespace().take(3).any(|w| w == *l))
                .unwrap_or("INFO");
            serde_json::json!({
                "timestamp": rfc3339(std::time::SystemTime::now()),
                "level": level,
                "fields": { "message": text },
            })
        }
    };
    let map = value.as_object_mut().expect("an object");
    map.entry("component").or_insert_with(|| component.into());
    map.entry("site").or_insert_with(|| site.into());
    value.to_string()
}

/// RFC 5424 with RFC 5425 octet counting: `LEN <14>1 - - APP - - - MSG`.
fn frame(component: &str, json: &str) -> Vec<u8> {
    let message = format!("<14>1 - - {component} - - - {json}");
    let mut out = format!("{} ", message.len()).into_bytes();
    out.extend_from_slice(message.as_bytes());
    out
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for n in chars.by_ref() {
                if n.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// `2026-12-04T18:40:00.123456Z` (what tracing's JSON uses, so the two sort
/// together).
fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// What `ctl logs` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LogFilter {
    /// A child's name (`web-1`) or role prefix (`web`).
    pub component: Option<String>,
    /// The least severe level shown (`warn` shows WARN and ERROR).
    pub level: Option<String>,
    /// Lines mentioning this request id.
    pub request_id: Option<String>,
    /// Lines mentioning this user (id or name).
    pub user: Option<String>,
    /// Lines at or after this RFC 3339 time.
    pub since: Option<String>,
    /// At most this many, the latest (default 1000).
    pub limit: Option<usize>,
}

fn severity(level: &str) -> u8 {
    match level.to_ascii_uppercase().as_str() {
        "ERROR" => 4,
        "WARN" | "WARNING" => 3,
        "INFO" => 2,
        "DEBUG" => 1,
        _ => 0,
    }
}

/// The collected lines that pass `filter`, oldest first, from the rotated
/// files and the current one.
pub fn search(data_dir: &Path, filter: &LogFilter) -> std::io::Result<Vec<serde_json::Value>> {
    let dir = logs_dir(data_dir);
    let mut files: Vec<PathBuf> = (1..=100)
        .map(|i| dir.join(format!("scalestack.log.{i}")))
        .filter(|p| p.is_file())
        .collect();
    files.reverse();
    files.push(dir.join("scalestack.log"));
    let least = filter.level.as_deref().map(severity).unwrap_or(0);
    let mut out = VecDeque::new();
    let limit = filter.limit.unwrap_or(1000).max(1);
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            if let Some(id) = &filter.request_id {
                if !line.contains(id.as_str()) {
                    continue;
                }
            }
            if let Some(user) = &filter.user {
                if !line.contains(user.as_str()) {
                    continue;
                }
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(c) = &filter.component {
                let name = v["component"].as_str().unwrap_or("");
                if name != c && !name.starts_with(&format!("{c}-")) {
                    continue;
                }
            }
            if severity(v["level"].as_str().unwrap_or("")) < least {
                continue;
            }
            if let Some(since) = &filter.since {
                if v["timestamp"].as_str().unwrap_or("") < since.as_str() {
                    continue;
                }
            }
            if out.len() == limit {
                out.pop_front();
            }
            out.push_back(v);
        }
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_json_with_their_component() {
        let v: serde_json::Value = serde_json::from_str(&as_json(
            "web-1",
            "dc1",
            r#"{"level":"WARN","fields":{"message":"x"}}"#,
        ))
        .unwrap();
        assert_eq!(
            (v["component"].as_str(), v["site"].as_str(), v["level"].as_str()),
            (Some("web-1"), Some("dc1"), Some("WARN"))
        );
        let v: serde_json::Value =
            serde_json::from_str(&as_json("redis", "local", "\u{1b}[2m2026\u{1b}[0m ERROR boom")).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["fields"]["message"], "2026 ERROR boom");
        let f = frame("lb", "{}");
        assert_eq!(String::from_utf8(f).unwrap(), "21 <14>1 - - lb - - - {}");
        assert_eq!(
            rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(1_796_404_549)).len(),
            27
        );
        assert!(
            rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(1_796_404_549)).starts_with("2026-12-04T")
        );
    }

    #[test]
    fn search_filters_across_rotated_files() {
        let data = tempfile::tempdir().unwrap();
        let dir = logs_dir(data.path());
        std::fs::create_dir_all(&dir).unwrap();
        let line = |t: &str, c: &str, l: &str, m: &str| {
            format!(r#"{{"timestamp":"{t}","component":"{c}","level":"{l}","fields":{{"message":"{m}"}}}}"#)
        };
        std::fs::write(
            dir.join("scalestack.log.1"),
            line("2026-12-04T10:00:00Z", "lb", "INFO", "req abc") + "\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("scalestack.log"),
            [
                line("2026-12-04T10:00:01Z", "web-1", "INFO", "req abc"),
                line("2026-12-04T10:00:02Z", "web-2", "WARN", "req xyz"),
                "not json".into(),
            ]
            .join("\n"),
        )
        .unwrap();
        let find = |f: LogFilter| -> Vec<String> {
            search(data.path(), &f)
                .unwrap()
                .iter()
                .map(|v| v["component"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            find(LogFilter {
                request_id: Some("abc".into()),
                ..Default::default()
            }),
            ["lb", "web-1"]
        );
        assert_eq!(
            find(LogFilter {
                component: Some("web".into()),
                ..Default::default()
            }),
            ["web-1", "web-2"]
        );
        assert_eq!(
            find(LogFilter {
                level: Some("warn".into()),
                ..Default::default()
            }),
            ["web-2"]
        );
        assert_eq!(
            find(LogFilter {
                since: Some("2026-12-04T10:00:01Z".into()),
                ..Default::default()
            }),
            ["web-1", "web-2"]
        );
        assert_eq!(
            find(LogFilter {
                limit: Some(1),
                ..Default::default()
            }),
            ["web-2"]
        );
    }
}
