//! Live reconfiguration: reloads under continuous traffic lose no request; the admin API
//! reloads, cordons and shows the redacted config behind a token; invalid configurations change
//! nothing.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::{chain_config, Mock, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_traffic_lose_no_request() {
    let mocks: Vec<Mock> = start_mocks(["a", "b", "c", "d"]).await;
    // Each config keeps "a" and varies the rest: added, removed, re-weighted, re-tiered.
    let configs: Vec<String> = (0..4)
        .map(|k| {
            let mut ups = vec![("a", mocks[0].url(), format!("weight = {}", 1 + k))];
            if k % 2 == 0 {
                ups.push(("b", mocks[1].url(), "tier = 1".to_string()));
            }
            if k != 1 {
                ups.push(("c", mocks[2].url(), format!("weight = {}", 4 - k)));
            }
            if k == 3 {
                ups.push(("d", mocks[3].url(), String::new()));
            }
            let refs: Vec<(&str, &str, &str)> = ups
                .iter()
                .map(|(n, u, e)| (*n, u.as_str(), e.as_str()))
                .collect();
            chain_config("", &refs)
        })
        .collect();
    let p = Proxy::start(&configs[0]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (url, stop, ok, failed) = (p.url("/mainnet"), stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            let mut i = 0u64;
            while !stop.load(Relaxed) {
                i += 1;
                let body = format!(
                    r#"{{"jsonrpc":"2.0","id":{i},"method":"eth_getBalance","params":["0x{c}"]}}"#
                );
                let req = http::Request::post(&url)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let good = match client.request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        let b = resp.into_body().collect().await.unwrap().to_bytes();
                        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                        v.get("result").is_some() && v["id"] == i
                    }
                    _ => false,
                };
                if good {
                    ok.fetch_add(1, Relaxed)
                } else {
                    failed.fetch_add(1, Relaxed)
                };
            }
        }));
    }
    let started = Instant::now();
    let mut reload_times = Vec::new();
    for r in 0..100 {
        let config = detour::Config::from_toml(&configs[(r + 1) % 4]).unwrap();
        let t = Instant::now();
        p.detour.reload(config).unwrap();
        reload_times.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    stop.store(true, Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Relaxed), failed.load(Relaxed));
    reload_times.sort();
    eprintln!(
        "100 reloads in {took:?} (median reload {:?}, max {:?}): {ok} requests answered, {failed} failed",
        reload_times[50], reload_times[99]
    );
    assert_eq!(failed, 0);
    assert!(ok > 100, "traffic kept flowing: {ok}");
    let text = p.detour.metrics();
    assert!(
        text.contains("detour_config_reloads_total{result=\"ok\"} 100"),
        "{text}"
    );
}

async fn start_mocks<const N: usize>(names: [&str; N]) -> Vec<Mock> {
    let mut out = Vec::new();
    for n in names {
        out.push(Mock::start(n).await);
    }
    out
}

/// An admin service over a config file the test rewrites.
struct AdminSetup {
    _dir: tempdir::Dir,
    file: std::path::PathBuf,
    admin: detour::proxy::admin::Admin,
    proxy: Proxy,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn admin_setup(toml: &str, token: Option<&str>) -> AdminSetup {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "detour-admin-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("detour.toml");
    std::fs::write(&file, toml).unwrap();
    let proxy = Proxy::start(toml).await;
    let source = detour::Source::File(file.clone());
    let loader: detour::proxy::admin::Loader = Arc::new(move || detour::Config::load(&source));
    let admin =
        detour::proxy::admin::Admin::new(proxy.detour.clone(), loader, token.map(String::from));
    AdminSetup {
        _dir: tempdir::Dir(dir),
        file,
        admin,
        proxy,
    }
}

async fn call(
    admin: &detour::proxy::admin::Admin,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut req = http::Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = admin.handle(req.body(()).unwrap()).await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_admin_api_needs_its_token_reloads_cordons_and_shows_the_config() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    let keyed = format!("{}/v3/SECRETKEY123456", b.url());
    let toml = chain_config("", &[("a", &a.url(), ""), ("b", &keyed, "")]);
    let s = admin_setup(&toml, Some("tok-123")).await;

    // No token, a wrong one: 401. Health endpoints stay open.
    assert_eq!(call(&s.admin, "POST", "/admin/reload", None).await.0, 401);
    assert_eq!(
        call(&s.admin, "POST", "/admin/reload", Some("tok-124"))
            .await
            .0,
        401
    );
    assert_eq!(call(&s.admin, "GET", "/healthz", None).await.0, 200);

    // The resolved config, redacted.
    let (status, text) = call(&s.admin, "GET", "/admin/config", Some("tok-123")).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("name = \"b\"") && !text.contains("SECRETKEY"),
        "{text}"
    );

    // Cordon "a": all traffic to "b", and /status says so; uncordon: "a" serves again.
    let (status, _) = call(
        &s.admin,
        "POST",
        "/admin/upstreams/mainnet/a/cordon",
        Some("tok-123"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(s.proxy.states("a"), ["cordoned"]);
    for _ in 0..20 {
        let (_, by) = s.proxy.call_via("/mainnet", "eth_getBalance", "[]").await;
        assert_eq!(by, "b");
    }
    assert_eq!(
        call(
            &s.admin,
            "POST",
            "/admin/upstreams/mainnet/nope/cordon",
            Some("tok-123")
        )
        .await
        .0,
        404
    );
    call(
        &s.admin,
        "POST",
        "/admin/upstreams/mainnet/a/uncordon",
        Some("tok-123"),
    )
    .await;
    assert!(s.proxy.states("a").is_empty());

    // Reload from the file: a third upstream appears; a cordon would end here.
    let c = Mock::start("c").await;
    let toml2 = chain_config(
        "",
        &[("a", &a.url(), ""), ("b", &keyed, ""), ("c", &c.url(), "")],
    );
    std::fs::write(&s.file, &toml2).unwrap();
    let (status, text) = call(&s.admin, "POST", "/admin/reload", Some("tok-123")).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"reloaded\": true"), "{text}");
    assert_eq!(s.proxy.detour.pool().chains[0].upstreams.len(), 3);

    // An invalid file: 400 naming the problem, nothing changes, /status shows the error.
    std::fs::write(&s.file, toml2.replace("chain_id = 1", "chain_id = 0")).unwrap();
    let (status, text) = call(&s.admin, "POST", "/admin/reload", Some("tok-123")).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("chain_id") && text.contains("previous configuration"),
        "{text}"
    );
    assert_eq!(s.proxy.detour.pool().chains[0].upstreams.len(), 3);
    let st = s.proxy.detour.status();
    assert_eq!(st["last_reload"]["ok"], false);
    assert!(st["last_reload"]["error"]
        .as_str()
        .unwrap()
        .contains("chain_id"));

    // A restart-only setting is reported, not silently ignored.
    std::fs::write(
        &s.file,
        format!("[server]\nlisten = \"127.0.0.1:1\"\n{toml2}"),
    )
    .unwrap();
    let (status, text) = call(&s.admin, "POST", "/admin/reload", Some("tok-123")).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("server.listen"), "{text}");

    // Status and metrics are served here too (behind the token).
    assert_eq!(
        call(&s.admin, "GET", "/metrics", Some("tok-123")).await.0,
        200
    );
    assert_eq!(call(&s.admin, "GET", "/status", None).await.0, 401);
}

#[tokio::test]
async fn admin_status_and_metrics_work_when_clients_need_api_keys() {
    let a = Mock::start("a").await;
    let toml = format!(
        "[[api_keys]]\nname = \"app\"\nkey = \"app-key-0123456789ab\"\n{}",
        chain_config("", &[("a", &a.url(), "")])
    );
    let s = admin_setup(&toml, Some("tok-123")).await;
    // The admin token is not a client key; the admin listener answers these itself.
    let (status, body) = call(&s.admin, "GET", "/status", Some("tok-123")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"chains\""));
    assert_eq!(
        call(&s.admin, "GET", "/metrics", Some("tok-123")).await.0,
        200
    );
    // Through the main listener, the same request needs a client key.
    let (status, _, _) = support::http_request("GET", &s.proxy.url("/status"), "").await;
    assert_eq!(status, 401);
}
