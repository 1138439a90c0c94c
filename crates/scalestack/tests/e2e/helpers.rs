//! Runs the real `scalestack` binary as a user would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_scalestack");

/// `GET url` with `c`, its body as JSON.
pub async fn get_json(c: &reqwest::Client, url: &str) -> serde_json::Value {
    c.get(url).send().await.unwrap().json().await.unwrap()
}

/// The Prometheus text page at `{base}/metrics`.
pub async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Sum over the web servers of the samples of `metric` whose labels
/// contain every one of `labels` (e.g. `result="hit"`).
pub async fn web_metric(up: &Up, metric: &str, labels: &[&str]) -> f64 {
    let mut total = 0.0;
    for web in &up.webs {
        let text = metrics_text(web).await;
        total += text
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(metric))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total
}

/// The value of the sample of `name` whose labels include every one of
/// `labels` (`role="web"`), if there is one, in a Prometheus text page.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// An HTTP client whose every request gives up after 30 s: a hung request
/// fails its test instead of hanging the suite (a guard, not a measure).
pub fn http_client(cookies: bool) -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(cookies)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub use test_support::{free_port, free_ports};

/// A running `scalestack up` in its own temporary working directory.
pub struct Up {
    pub child: Child,
    pub dir: tempfile::TempDir,
    /// The public address: the load balancer's, or the single web server's.
    pub web: String,
    pub worker_metrics: String,
    /// Metrics address of each worker copy `ctl scale` may start (8).
    pub workers: Vec<String>,
    /// The orchestrator's control API.
    pub control: String,
    /// The load balancer's admin API, when there is one.
    pub lb_admin: Option<String>,
    /// The web servers' addresses.
    pub webs: Vec<String>,
    /// The CDN edges' public addresses (`cdn-1` first), when there are any.
    pub edges: Vec<String>,
    /// The CDN edges' admin addresses (purge, `/metrics`), in the same order.
    pub edge_admins: Vec<String>,
}

impl Up {
    /// The single-server stage on free ports (plus `extra` TOML lines).
    pub fn start(extra: &str) -> Up {
        let web_port = free_port();
        let topology = format!("[web]\nlisten = \"127.0.0.1:{web_port}\"\nargon2_memory_kib = 1024\n{extra}");
        Self::launch(topology, None, vec![web_port])
    }

    /// The web tier: a load balancer in front of `webs` web servers, health
    /// checks every `interval_ms`.
    pub fn web_tier(webs: u16, interval_ms: u64, extra: &str) -> Up {
        Self::web_tier_with_log(webs, interval_ms, false, extra)
    }

    /// [`Up::web_tier`], with the LB's access log on or off.
    pub fn web_tier_with_log(webs: u16, interval_ms: u64, access_log: bool, extra: &str) -> Up {
        // Room for `ctl scale` up to 8 web servers.
        let web_port = free_ports(8);
        let (lb, admin) = (free_port(), free_port());
        let topology = format!(
            "[lb]\nlisten = \"127.0.0.1:{lb}\"\nadmin_listen = \"127.0.0.1:{admin}\"\naccess_log = {access_log}\n\
             [lb.health]\ninterval_ms = {interval_ms}\n\
             [web]\ncount = {webs}\nlisten = \"127.0.0.1:{web_port}\"\nargon2_memory_kib = 1024\n\
             list_cache_ttl_secs = 0\n{extra}"
        );
        Self::launch(topology, Some((lb, admin)), (web_port..web_port + webs).collect())
    }

    /// [`Up::web_tier`] (health checks every 300 ms) behind `edges` CDN
    /// edges in front of the load balancer; the web tier's media and assets
    /// point at the first edge. The edges' access log is on (in `up.log`).
    pub fn cdn_tier(webs: u16, edges: u16) -> Up {
        let (listen, admin) = (free_ports(edges), free_ports(edges));
        let mut up = Self::web_tier(
            webs,
            300,
            &format!(
                "[cdn]\ncount = {edges}\nlisten = \"127.0.0.1:{listen}\"\n\
                 admin_listen = \"127.0.0.1:{admin}\"\nmemory_mb = 32\naccess_log = true\n"
            ),
        );
        up.edges = (listen..listen + edges)
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        up.edge_admins = (admin..admin + edges)
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        up
    }

    fn launch(web_section: String, lb: Option<(u16, u16)>, web_ports: Vec<u16>) -> Up {
        let dir = tempfile::tempdir().unwrap();
        // Room for `ctl scale` up to 8 workers.
        let worker_port = free_ports(8);
        let control_port = free_port();
        let topology = format!(
            "[control]\nlisten = \"127.0.0.1:{control_port}\"\n\
             [worker]\nmetrics_listen = \"127.0.0.1:{worker_port}\"\npoll_ms = 20\n{web_section}"
        );
        std::fs::write(dir.path().join("topology.toml"), topology).unwrap();
        let child = Self::spawn(dir.path());
        let public = lb.map_or(web_ports[0], |(l, _)| l);
        Up {
            child,
            dir,
            web: format!("http://127.0.0.1:{public}"),
            worker_metrics: format!("http://127.0.0.1:{worker_port}"),
            workers: (worker_port..worker_port + 8)
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect(),
            control: format!("http://127.0.0.1:{control_port}"),
            lb_admin: lb.map(|(_, a)| format!("http://127.0.0.1:{a}")),
            webs: web_ports
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect(),
            edges: Vec::new(),
            edge_admins: Vec::new(),
        }
    }

    /// `up` on a topology written whole by the test; only `control` (and
    /// the log, the data) of the fields is known.
    pub fn with_topology(topology: &str, control: String) -> Up {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("topology.toml"), topology).unwrap();
        let child = Self::spawn(dir.path());
        Up {
            child,
            dir,
            web: String::new(),
            worker_metrics: String::new(),
            workers: Vec::new(),
            control,
            lb_admin: None,
            webs: Vec::new(),
            edges: Vec::new(),
            edge_admins: Vec::new(),
        }
    }

    /// `scalestack up` in `dir` (its `topology.toml`), logging to a new
    /// `up.log`.
    fn spawn(dir: &Path) -> Child {
        let log = std::fs::File::create(dir.join("up.log")).unwrap();
        Command::new(BIN)
            .args(["up", "--topology", "topology.toml"])
            .current_dir(dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// `kill -9` of `up` (its children die with it), then `up` started
    /// again on the same topology and data (its log starts anew).
    pub fn crash_and_restart(&mut self) {
        let children: Vec<i32> = std::fs::read_dir(self.data().join("run"))
            .map(|dir| {
                dir.flatten()
                    .filter_map(|f| std::fs::read_to_string(f.path()).ok()?.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        // Their ports are free once they are gone.
        let deadline = Instant::now() + Duration::from_secs(30);
        while children.iter().any(|&pid| alive(pid)) {
            assert!(Instant::now() < deadline, "children of the killed `up` live on");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Self::spawn(self.dir.path());
    }

    /// Runs `scalestack ctl ARGS` against this orchestrator.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["ctl", "--url", &self.control];
        all.extend_from_slice(args);
        run(&all, self.dir.path())
    }

    /// [`Up::ctl`], which must succeed; its standard output.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "ctl {args:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Waits (30 s at most) until worker-1's metrics show one job in
    /// flight: it has taken the job and is working on it.
    pub async fn wait_worker_busy(&self) {
        let metrics = format!("{}/metrics", self.worker_metrics);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
            if m.contains("scalestack_queue_depth{state=\"in_flight\"} 1") {
                return;
            }
            assert!(Instant::now() < deadline, "the worker never took the job: {m}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `up` printed that everything is ready.
    pub async fn wait_up(&self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.log().contains("scalestack is up") {
            let log = self.log();
            assert!(!log.contains("Error: "), "up failed:\n{log}");
            assert!(Instant::now() < deadline, "not up after {secs} s; log:\n{log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
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
    pub fn stop(self) -> (std::process::ExitStatus, String) {
        self.stop_with(nix::sys::signal::Signal::SIGTERM)
    }

    /// Sends `sig` (SIGINT is Ctrl-C) and waits (at most 30 s) for an exit.
    pub fn stop_with(mut self, sig: nix::sys::signal::Signal) -> (std::process::ExitStatus, String) {
        signal(self.child.id() as i32, sig);
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
