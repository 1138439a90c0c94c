//! Runs the real `scalestack` binary as a user would.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_scalestack");

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `scalestack up` in its own temporary working directory.
pub struct Up {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub web: String,
    pub worker_metrics: String,
}

impl Up {
    /// Starts `up` with a topology on free ports (plus `extra` TOML lines).
    pub fn start(extra: &str) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let web_port = free_port();
        let worker_port = free_port();
        let topology = format!(
            "[web]\nlisten = \"127.0.0.1:{web_port}\"\nargon2_memory_kib = 1024\n\
             [worker]\nmetrics_listen = \"127.0.0.1:{worker_port}\"\npoll_ms = 20\n{extra}"
        );
        std::fs::write(dir.path().join("topology.toml"), topology).unwrap();
        let log = std::fs::File::create(dir.path().join("up.log")).unwrap();
        let child = Command::new(BIN)
            .args(["up", "--topology", "topology.toml"])
            .current_dir(dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Up {
            child,
            dir,
            web: format!("http://127.0.0.1:{web_port}"),
            worker_metrics: format!("http://127.0.0.1:{worker_port}"),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The pid `up` recorded for a child, once it has one.
    pub fn pid(&self, name: &str) -> Option<i32> {
        std::fs::read_to_string(self.data().join("run").join(format!("{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits until `url` answers 200 (at most `secs`).
    pub async fn wait_ok(&self, url: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(url).await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{url} not ready after {secs} s; log:\n{}", self.log());
    }

    /// Sends SIGTERM and waits (at most 30 s) for a clean exit.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        signal(self.child.id() as i32, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log());
            }
            assert!(Instant::now() < deadline, "up did not stop; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Runs the binary to completion.
pub fn run(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}
