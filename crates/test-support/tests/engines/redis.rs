//! A private Redis: PING over raw TCP, a SIGKILL closes its port, a restart
//! brings it back.

use std::time::Duration;
use test_support::TestRedis;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends an inline PING and returns the reply line.
async fn ping(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(b"PING\r\n").await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned())
}

#[tokio::test]
async fn redis_answers_dies_on_sigkill_and_restarts() {
    let redis = TestRedis::start().await;
    let node = &redis.node;
    let port = node.port();
    assert_eq!(node.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(ping(port).await.unwrap(), "+PONG");
    let pid = node.pid().expect("redis runs");

    node.kill9().unwrap();
    assert_eq!(node.pid(), None, "redis {pid} survived SIGKILL");
    let refused = ping(port).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");

    node.restart().await.unwrap();
    assert_eq!(ping(port).await.unwrap(), "+PONG");
    assert_ne!(node.pid(), Some(pid));

    node.stop().await.unwrap();
    assert_eq!(node.pid(), None);
    assert!(ping(port).await.is_err());
}
