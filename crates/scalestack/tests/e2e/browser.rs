//! A real browser for the e2e tests: headless Chromium (Debian's `chromium`
//! package, installed by `scripts/setup.sh`) in a temporary profile, driven
//! over the Chrome DevTools Protocol on a websocket. Just what the tests
//! need: navigate, reload, evaluate JavaScript in the page, disable the
//! browser's HTTP cache. The browser is killed by its pid when dropped.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The Debian package's launcher (a script that `exec`s the browser, so the
/// child's pid is the browser's).
const CHROMIUM: &str = "chromium";

/// A headless Chromium with one page, attached over CDP.
pub struct Browser {
    child: Child,
    /// The profile (and the browser's log), removed when dropped: after
    /// [`Drop::drop`] killed the browser.
    _profile: tempfile::TempDir,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    /// Starts the browser (window `width`×`height`, so lazily loaded images
    /// in that area load) and attaches to its page (at most 30 s).
    pub async fn launch(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                // Tests run as root (CI does), where the sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                // Port 0: the browser picks one and writes it to
                // DevToolsActivePort in the profile.
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMIUM} (run scripts/setup.sh): {e}"));
        let browser_log = || std::fs::read_to_string(profile.path().join("chromium.log")).unwrap_or_default();
        let active = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port: u16 = loop {
            // The file is written whole once the port is open; its first
            // line is the port.
            if let Some(port) = std::fs::read_to_string(&active)
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse().ok())
            {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port; log:\n{}",
                browser_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // The page target the browser opened for about:blank.
        let list_url = format!("http://127.0.0.1:{port}/json/list");
        let ws_url = loop {
            let targets: Value = match reqwest::get(&list_url).await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let page = targets.as_array().and_then(|list| {
                list.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_owned)
            });
            if let Some(url) = page {
                break url;
            }
            assert!(
                Instant::now() < deadline,
                "chromium has no page target: {targets}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str()).await.unwrap();
        let mut browser = Browser {
            child,
            _profile: profile,
            ws,
            next_id: 0,
        };
        browser.call("Page.enable", json!({})).await;
        browser.call("Runtime.enable", json!({})).await;
        browser.call("Network.enable", json!({})).await;
        browser
    }

    /// Sends a CDP command and returns its `result` (panics on a CDP error
    /// or after 30 s without an answer).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|error| panic!("{method} failed: {error}"))
    }

    /// Sends a CDP command: its `result`, or the error CDP answered (panics
    /// after 30 s without an answer). Events that come first are skipped.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} in 30 s"));
            let Some(frame) = next else {
                panic!("the browser closed the connection during {method}")
            };
            let Message::Text(text) = frame.unwrap() else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] != id {
                continue;
            }
            return match answer.get("error") {
                Some(error) => Err(error.clone()),
                None => Ok(answer["result"].clone()),
            };
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns
    /// its value as JSON; panics if it threw.
    pub async fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression)
            .await
            .unwrap_or_else(|e| panic!("{expression} failed: {e}"))
    }

    /// [`Browser::eval`], or why it failed: it threw, or the page had no
    /// context to run it in (while a navigation replaces the document).
    async fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let r = self
            .try_call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await?;
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// Polls `expression` until it is `true` (at most `secs`; an evaluation
    /// that fails, as one may during a navigation, counts as not yet);
    /// panics with `explain`'s value when it never is.
    pub async fn wait_for(&mut self, expression: &str, explain: &str, secs: u64) {
        if !self.poll_until(expression, secs).await {
            let state = self.eval(explain).await;
            panic!("{expression} not true after {secs} s: {state}");
        }
    }

    /// Polls `expression` until it is `true` (at most `secs`, as
    /// [`Browser::wait_for`]); whether it became true.
    pub async fn poll_until(&mut self, expression: &str, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.try_eval(expression).await != Ok(Value::Bool(true)) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Loads `url` in the page (the load itself is waited for with
    /// [`Browser::wait_for`] on what the test needs to see).
    pub async fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(r.get("errorText").is_none(), "navigating to {url}: {r}");
    }

    /// Reloads the page, bypassing the browser's cache.
    pub async fn reload(&mut self) {
        self.call("Page.reload", json!({"ignoreCache": true})).await;
    }

    /// Every request goes to the network: the browser's HTTP cache would
    /// otherwise answer for the year-long cacheable assets and images.
    pub async fn disable_cache(&mut self) {
        self.call("Network.setCacheDisabled", json!({"cacheDisabled": true}))
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // By pid: the browser's helpers (renderer, GPU, zygote) exit when
        // it does.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
