//! Liveness of HTTP/2 client connections: an idle one is closed after
//! `server.http2_idle_timeout`, one whose client stopped answering pings after
//! `server.http2_keep_alive`, and the stream limit is announced.

mod support;

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use support::{chain_config, Mock, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CALL: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#;

#[tokio::test]
async fn an_idle_http2_connection_is_closed_gracefully() {
    let m = Mock::start("m").await;
    let p = Proxy::start(&format!(
        "[server]\nhttp2_idle_timeout = \"300ms\"\n{}",
        chain_config("", &[("m", &m.url(), "")])
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::post(p.url("/mainnet"))
        .body(Full::new(bytes::Bytes::from_static(CALL)))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"jsonrpc":"2.0","id":1,"result":"m"}"#);
    // Nothing more is sent: the server says GOAWAY and the connection ends cleanly.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the idle connection did not end: {ended:?}"
    );
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_disconnected() {
    let m = Mock::start("m").await;
    let p = Proxy::start(&format!(
        "[server]\nhttp2_keep_alive = \"200ms\"\nhttp2_idle_timeout = \"1h\"\n\
         http2_max_streams = 7\n{}",
        chain_config("", &[("m", &m.url(), "")])
    ))
    .await;
    // A client that sends the preface and an empty SETTINGS frame, then reads what comes
    // but never answers anything (no SETTINGS ack, no PING ack): as if its host vanished.
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the silent client was not disconnected");
    // The server's first frame is its SETTINGS, announcing the stream limit
    // (SETTINGS_MAX_CONCURRENT_STREAMS, id 3, = 7).
    assert!(got.len() >= 9 && got[3] == 4, "{got:?}");
    let len = u32::from_be_bytes([0, got[0], got[1], got[2]]) as usize;
    let settings = &got[9..9 + len];
    assert!(
        settings
            .chunks(6)
            .any(|e| e[..2] == [0, 3] && e[2..] == 7u32.to_be_bytes()),
        "{settings:?}"
    );
    // It pinged (a PING frame, type 6) before giving up.
    assert!(frame_types(&got).contains(&6), "{:?}", frame_types(&got));
}

fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        out.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    out
}
