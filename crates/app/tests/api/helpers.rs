//! `spawn_app()`: a web server on port 0 and an in-process worker over fresh
//! embedded backends in a temporary directory.

use backends::{Backends, BackendsConfig, QueueConfig, QueueTier};
use reqwest::multipart::{Form, Part};
use reqwest::{Client, Response};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

pub struct TestApp {
    pub addr: String,
    pub backends: Backends,
    pub data_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// Upload limit used by the tests (the default is 20 MiB).
pub const TEST_MAX_BODY: usize = 2 << 20;

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// [`spawn_app`] with the test settings changed by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut app::WebSettings)) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter("info").try_init();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = BackendsConfig {
        data_dir: dir.path().join("data"),
        queue: QueueTier::Embedded {
            config: QueueConfig {
                max_attempts: 3,
                backoff_ms: 20,
                max_backoff_ms: 200,
                ..QueueConfig::default()
            },
        },
        ..Default::default()
    };
    let backends = Backends::connect(&config).await.unwrap();
    let mut settings = app::WebSettings {
        max_body_bytes: TEST_MAX_BODY,
        argon2_memory_kib: 1024,
        ..Default::default()
    };
    tweak(&mut settings);
    let web = app::Application::build_with("127.0.0.1:0".parse().unwrap(), backends.clone(), settings)
        .await
        .unwrap();
    let addr = format!("http://127.0.0.1:{}", web.port());
    tokio::spawn(web.run_until_stopped(std::future::pending()));
    let worker = worker::Worker::new(
        backends.clone(),
        worker::WorkerSettings {
            poll_ms: 10,
            ..Default::default()
        },
    );
    tokio::spawn(worker.run_until_stopped(std::future::pending()));
    TestApp {
        addr,
        backends,
        data_dir: dir.path().join("data"),
        _dir: dir,
    }
}

/// The body of `GET url` as text.
pub async fn get_text(c: &Client, url: &str) -> String {
    c.get(url).send().await.unwrap().text().await.unwrap()
}

pub fn new_client() -> Client {
    Client::builder().cookie_store(true).build().unwrap()
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.addr, path)
    }

    /// A client with its own cookie jar, signed up as `name`.
    pub async fn user(&self, name: &str) -> Client {
        let c = new_client();
        let r = self.signup_with(&c, name, "password123").await;
        assert_eq!(r.status(), 201, "signup {name}: {}", r.text().await.unwrap());
        c
    }

    pub async fn signup_with(&self, c: &Client, name: &str, password: &str) -> Response {
        c.post(self.url("/api/signup"))
            .json(&serde_json::json!({"username": name, "password": password}))
            .send()
            .await
            .unwrap()
    }

    pub async fn login_with(&self, c: &Client, name: &str, password: &str) -> Response {
        c.post(self.url("/api/login"))
            .json(&serde_json::json!({"username": name, "password": password}))
            .send()
            .await
            .unwrap()
    }

    pub async fn upload(
        &self,
        c: &Client,
        bytes: Vec<u8>,
        file_name: &str,
        caption: Option<&str>,
    ) -> Response {
        let mut form = Form::new().part("file", Part::bytes(bytes).file_name(file_name.to_owned()));
        if let Some(caption) = caption {
            form = form.text("caption", caption.to_owned());
        }
        c.post(self.url("/api/photos"))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, c: &Client, path: &str) -> (u16, Value) {
        let r = c.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls a photo until it leaves `processing` (at most 30 s).
    pub async fn wait_processed(&self, c: &Client, id: i64) -> Value {
        for _ in 0..600 {
            let (s, photo) = self.get_json(c, &format!("/api/photos/{id}")).await;
            assert_eq!(s, 200);
            if photo["status"] != "processing" {
                return photo;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("photo {id} still processing after 30 s");
    }

    /// The value of the sample `name` (with its labels, as exported:
    /// `scalestack_cdn_purges_total{outcome="ok"}`) on `/metrics`; 0 if
    /// absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = get_text(&new_client(), &self.url("/metrics")).await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Uploads a photo as `c` and waits until it is processed; its JSON.
    pub async fn ready_photo(&self, c: &Client) -> Value {
        let r = self
            .upload(c, imaging::samples::jpeg(120, 80), "p.jpg", None)
            .await;
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        let photo = self
            .wait_processed(c, body["id"].as_str().unwrap().parse().unwrap())
            .await;
        assert_eq!(photo["status"], "ready", "{photo}");
        photo
    }

    /// Files in the blob store.
    pub fn blob_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            let Ok(rd) = std::fs::read_dir(dir) else { return };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out)
                } else {
                    out.push(p)
                }
            }
        }
        let mut out = vec![];
        walk(&self.data_dir.join("blobs"), &mut out);
        out
    }

    /// Asserts that `user` has no photos, no job waits and no blob exists.
    pub async fn assert_nothing_stored(&self, user: &str) {
        // Straight from the store: the API's list may be a cached page.
        let store = &self.backends.store;
        let owner = store
            .user_by_name(&domain::Username::parse(user).unwrap())
            .await
            .unwrap()
            .expect("the user exists");
        let page = domain::Page {
            before: None,
            limit: 100,
        };
        let left = store.user_photo_ids(owner.id, page).await.unwrap();
        assert!(left.is_empty(), "photo rows left: {left:?}");
        let depth = self.backends.queue.depth().await.unwrap();
        assert_eq!(depth, Default::default(), "jobs left");
        assert!(
            self.blob_files().is_empty(),
            "blobs left: {:?}",
            self.blob_files()
        );
    }
}

/// Polls `check` every 10 ms until it holds, failing after 30 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
