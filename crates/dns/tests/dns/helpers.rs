//! A server on ephemeral ports, and the clients that ask it.

use dns::config::{RegionSpec, SiteSpec};
use dns::{DnsConfig, DnsServer};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RecordType};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

pub const ZONE: &str = "photos.test";

pub struct TestDns {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestDns {
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// Two sites (dc1 on 127.0.1.x, dc2 on 127.0.2.x), two regions (east:
/// 127.0.1.0/24 and 10.0.0.0/8; west: 127.0.2.0/24 and 10.9.0.0/16), and
/// dc1's load balancer health address `health1` when given.
pub fn two_sites(health1: Option<SocketAddr>, health2: Option<SocketAddr>) -> DnsConfig {
    DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        zone: ZONE.into(),
        sites: vec![
            SiteSpec {
                name: "dc1".into(),
                www: vec!["127.0.1.1".parse().unwrap()],
                cdn: vec!["127.0.1.2".parse().unwrap()],
                health: health1,
            },
            SiteSpec {
                name: "dc2".into(),
                www: vec!["127.0.2.1".parse().unwrap()],
                cdn: vec!["127.0.2.2".parse().unwrap()],
                health: health2,
            },
        ],
        regions: vec![
            RegionSpec {
                name: "east".into(),
                networks: vec!["127.0.1.0/24".into(), "10.0.0.0/8".into()],
                sites: vec!["dc1".into(), "dc2".into()],
            },
            RegionSpec {
                name: "west".into(),
                networks: vec!["127.0.2.0/24".into(), "10.9.0.0/16".into()],
                sites: vec!["dc2".into(), "dc1".into()],
            },
        ],
        ..DnsConfig::default()
    }
}

pub async fn spawn(config: DnsConfig) -> TestDns {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "off".into()))
        .try_init();
    let server = DnsServer::build(config).await.expect("server builds");
    let addr = SocketAddr::from(([127, 0, 0, 1], server.port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], server.admin_port()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(server.run_until_stopped(async {
        let _ = rx.await;
    }));
    TestDns {
        addr,
        admin,
        stop: Some(tx),
        task: Some(task),
    }
}

/// What `dig` printed, with the parts the tests look at.
pub struct Dig {
    pub out: String,
}

impl Dig {
    pub fn status(&self) -> &str {
        let i = self.out.find("status: ").expect("dig printed a header") + 8;
        self.out[i..].split(',').next().unwrap()
    }

    pub fn flags(&self) -> Vec<&str> {
        let i = self.out.find("flags: ").expect("dig printed flags") + 7;
        self.out[i..]
            .split(';')
            .next()
            .unwrap()
            .split_whitespace()
            .collect()
    }

    /// The data of the answer section's records of `rtype`.
    pub fn answers(&self, rtype: &str) -> Vec<String> {
        section(&self.out, "ANSWER")
            .into_iter()
            .filter(|f| f.get(3).map(String::as_str) == Some(rtype))
            .map(|f| f[4..].join(" "))
            .collect()
    }

    pub fn authority(&self) -> Vec<Vec<String>> {
        section(&self.out, "AUTHORITY")
    }

    /// dig's `; CLIENT-SUBNET: 10.9.0.0/16/16` line.
    pub fn client_subnet(&self) -> Option<String> {
        self.out
            .lines()
            .find_map(|l| l.strip_prefix("; CLIENT-SUBNET: ").map(str::to_owned))
    }
}

fn section(out: &str, name: &str) -> Vec<Vec<String>> {
    let header = format!(";; {name} SECTION:");
    let Some(start) = out.find(&header) else {
        return Vec::new();
    };
    out[start + header.len()..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// Runs `dig @server -p PORT -b SOURCE ARGS...`, one try, a short timeout.
pub fn dig(server: SocketAddr, source: &str, args: &[&str]) -> Dig {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            "-b",
            source,
            "+tries=1",
            "+time=2",
        ])
        .args(args)
        .output()
        .expect("dig runs (Debian's bind9-dnsutils; scripts/setup.sh installs it)");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    Dig { out }
}

/// A query for `name`/`rtype`, with EDNS (and a client subnet) when asked.
pub fn query(name: &str, rtype: RecordType, edns: Option<u16>, ecs: Option<ClientSubnet>) -> Message {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        if let Some(s) = ecs {
            e.options_mut().insert(EdnsOption::Subnet(s));
        }
        m.set_edns(e);
    }
    m
}

/// Sends raw bytes over UDP from `source` and returns the answer's bytes,
/// or None when none came within `wait`.
pub fn udp_raw(server: SocketAddr, source: IpAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind((source, 0)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(bytes, server).unwrap();
    let mut buf = [0u8; 65_535];
    s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

pub fn udp(server: SocketAddr, source: IpAddr, m: &Message) -> Message {
    let bytes = udp_raw(server, source, &m.to_vec().unwrap(), Duration::from_secs(2)).expect("an answer");
    Message::from_vec(&bytes).expect("a well-formed answer")
}

/// One query over TCP (length-prefixed), answered on the same connection.
pub fn tcp(server: SocketAddr, m: &Message) -> Message {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let bytes = m.to_vec().unwrap();
    s.write_all(&(bytes.len() as u16).to_be_bytes()).unwrap();
    s.write_all(&bytes).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    Message::from_vec(&body).unwrap()
}

pub async fn metrics(admin: SocketAddr) -> String {
    reqwest_get(admin, "/metrics").await
}

/// A plain HTTP GET of the admin API (no client library needed).
pub async fn reqwest_get(admin: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Waits for `f` to hold, checking every 50 ms, at most `limit`.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}
