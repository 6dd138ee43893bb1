//! The `detour` binary: `check`, config discovery and errors, serving, and SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::Mock;

fn detour() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_detour"));
    c.env_remove("DETOUR_CONFIG").env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("DETOUR_") {
            c.env_remove(k);
        }
    }
    c
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A scratch directory removed when the test ends.
struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("detour-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

const VALID: &str = r#"
[chains.mainnet]
chain_id = 1
[[chains.mainnet.upstreams]]
name = "infura"
url = "https://mainnet.infura.io/v3/${DETOUR_TEST_INFURA_KEY}"
headers = { "x-api-key" = "HDRSECRET" }
"#;

#[test]
fn check_prints_the_resolved_config_with_secrets_redacted() {
    let dir = tempdir("check");
    let file = write(&dir, "d.toml", VALID);
    let out = detour()
        .args(["check", "--config"])
        .arg(&file)
        .env("DETOUR_TEST_INFURA_KEY", "KEYSECRET")
        .env("DETOUR_SERVER__MAX_BATCH_LEN", "7")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("https://mainnet.infura.io/***"), "{stdout}");
    assert!(
        stdout.contains("max_batch_len = 7"),
        "env override not applied: {stdout}"
    );
    assert!(
        stdout.contains("request_timeout = \"10s\""),
        "defaults not resolved: {stdout}"
    );
    assert!(
        !stdout.contains("KEYSECRET") && !stdout.contains("HDRSECRET"),
        "{stdout}"
    );
}

#[test]
fn check_reports_file_key_and_reason_and_exits_1() {
    let dir = tempdir("bad");
    let cases = [
        ("[server]\nlisten = \"nope\"\n", "server.listen"),
        (
            "[chains.mainnet]\nchain_id = 1\ncolour = \"red\"\n",
            "colour",
        ),
        (VALID, "DETOUR_TEST_INFURA_KEY is not set"),
        (
            "[chains.mainnet]\nchain_id = 1\n",
            "chains.mainnet.upstreams",
        ),
        ("[server\n", "d.toml"),
    ];
    for (text, want) in cases {
        let file = write(&dir, "d.toml", text);
        let out = detour()
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {stderr}");
        assert!(stderr.contains(want), "{want} not in: {stderr}");
        assert!(stderr.contains("d.toml"), "file not named: {stderr}");
    }
    let out = detour()
        .args(["check", "--config", "/nonexistent/detour.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // An environment override with one underscore would be ignored silently: it is an error.
    let file = write(&dir, "ok.toml", "[chains.mainnet]\nchain_id = 1\n[[chains.mainnet.upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n");
    let out = detour()
        .args(["check", "--config"])
        .arg(&file)
        .env("DETOUR_SERVER_LISTEN", "0.0.0.0:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("DETOUR_SERVER__LISTEN"), "{stderr}");
    // A bad value in a well-formed override names the variable, not the file.
    let out = detour()
        .args(["check", "--config"])
        .arg(&file)
        .env("DETOUR_SERVER__LISTEN", "nowhere")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.starts_with("environment: DETOUR_SERVER__LISTEN: "),
        "{stderr}"
    );
}

#[test]
fn config_is_discovered_from_env_then_cwd_then_built_in() {
    let dir = tempdir("discover");
    write(&dir, "detour.toml", "[chains.localdev]\nchain_id = 31337\n[[chains.localdev.upstreams]]\nname = \"anvil\"\nurl = \"http://127.0.0.1:8546\"\n");
    let out = detour().arg("check").current_dir(&dir).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("localdev"));
    let other = write(&dir, "other.toml", "[chains.viaenv]\nchain_id = 5\n[[chains.viaenv.upstreams]]\nname = \"x\"\nurl = \"http://127.0.0.1:1\"\n");
    let out = detour()
        .arg("check")
        .current_dir(&dir)
        .env("DETOUR_CONFIG", &other)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("viaenv"));
    let out = detour()
        .arg("check")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("built-in default config: OK"), "{stdout}");
    for chain in ["mainnet", "base", "optimism", "arbitrum", "polygon"] {
        assert!(
            stdout.contains(&format!("[chains.{chain}]")),
            "{chain} missing"
        );
    }
}

#[tokio::test]
async fn binary_serves_logs_one_line_per_chain_and_exits_0_on_sigterm() {
    serves_logs_and_exits_0("serve", "").await;
}

#[tokio::test]
async fn binary_on_one_worker_thread_runs_tokios_current_thread_scheduler() {
    let listening = serves_logs_and_exits_0("serve-1", "[server]\nworker_threads = 1\n").await;
    assert!(
        listening.contains("scheduler=\"current-thread\"") && listening.contains("workers=1"),
        "{listening}"
    );
    let listening = serves_logs_and_exits_0("serve-2", "[server]\nworker_threads = 2\n").await;
    assert!(
        listening.contains("scheduler=\"multi-thread\"") && listening.contains("workers=2"),
        "{listening}"
    );
}

/// Serves one request through the binary (with `server_toml` prepended to its config, written
/// to a temporary directory named after `tag`: tests run in parallel), checks
/// the start-up and access log lines, stops it with SIGTERM and expects exit code 0. Returns
/// the "listening" log line (it names the runtime's scheduler, as the runtime reports it).
async fn serves_logs_and_exits_0(tag: &str, server_toml: &str) -> String {
    let m = Mock::start("up").await;
    let dir = tempdir(tag);
    let file = write(
        &dir,
        "d.toml",
        &format!("{server_toml}[chains.mainnet]\nchain_id = 1\n[[chains.mainnet.upstreams]]\nname = \"local\"\nurl = \"{}/KEYPATHSECRET\"\n", m.url()),
    );
    let (mut child, addr, rx, listening) = spawn_serving(&file, "pretty");
    let line = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        line.contains("chain mainnet (id 1) at /mainnet /1 /") && line.contains("local"),
        "{line}"
    );
    assert!(!line.contains("KEYPATHSECRET"), "{line}");
    let (status, _, body) = support::http_request(
        "POST",
        &format!("http://{addr}/mainnet"),
        r#"{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}"#,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"jsonrpc":"2.0","id":1,"result":"up"}"#)
    );
    // One access-log line for that request: chain, method, upstream, status; no secret.
    let access = access_line(&rx);
    for want in [
        "mainnet",
        "eth_blockNumber",
        "local",
        "status=200",
        "peer=127.0.0.1:",
    ] {
        assert!(access.contains(want), "{want} not in {access}");
    }
    assert!(!access.contains("Some("), "{access}");
    // The duration in milliseconds, to the microsecond: at most 3 decimals.
    let ms = access
        .split_whitespace()
        .find_map(|f| f.strip_prefix("ms="))
        .unwrap_or_else(|| panic!("no ms in {access}"));
    let decimals = ms.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(ms.parse::<f64>().is_ok() && decimals <= 3, "{access}");
    assert!(!access.contains("KEYPATHSECRET"), "{access}");
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut waited = Duration::ZERO;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if waited > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("detour did not exit within 15s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    };
    assert_eq!(status.code(), Some(0));
    listening
}

/// The next access-log line the binary writes (other lines are skipped).
fn access_line(rx: &std::sync::mpsc::Receiver<String>) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("no access log line");
        if line.contains("detour::access") {
            return line;
        }
    }
}

/// A running binary, killed when dropped: a test that fails half-way leaves no process behind
/// (one would hold the test harness's output open).
struct Running(std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the binary on `file` with this log format; returns it, its address, the log lines
/// after the "listening" one, and that line.
fn spawn_serving(
    file: &std::path::Path,
    log_format: &str,
) -> (Running, String, std::sync::mpsc::Receiver<String>, String) {
    let mut child = Running(
        detour()
            .args(["--config"])
            .arg(file)
            .args(["--listen", "127.0.0.1:0", "--log-format", log_format])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (addr, listening) = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("no listening line");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            // Pretty logs end the address at a space, JSON logs at a quote.
            let addr = rest
                .split(|c: char| c == '"' || c.is_whitespace())
                .next()
                .unwrap()
                .to_string();
            break (addr, line);
        }
    };
    (child, addr, rx, listening)
}

async fn upstream_names(addr: &str) -> Vec<String> {
    let (_, _, body) = support::http_request("GET", &format!("http://{addr}/status"), "").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["chains"][0]["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_binary_reloads_on_a_file_change_and_on_sighup() {
    let a = Mock::start("a").await;
    let b = Mock::start("b").await;
    let dir = tempdir("reload");
    let one = format!("[chains.mainnet]\nchain_id = 1\n[[chains.mainnet.upstreams]]\nname = \"a\"\nurl = \"{}\"\n", a.url());
    let two = format!(
        "{one}[[chains.mainnet.upstreams]]\nname = \"b\"\nurl = \"{}\"\n",
        b.url()
    );
    let file = write(&dir, "d.toml", &one);
    let (mut child, addr, rx, _) = spawn_serving(&file, "json");
    assert_eq!(upstream_names(&addr).await, ["a"]);

    // The file changes: picked up without a signal (polled every second, debounced).
    std::fs::write(&file, &two).unwrap();
    let started = std::time::Instant::now();
    while upstream_names(&addr).await.len() != 2 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the file change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An invalid file: logged, nothing changes.
    std::fs::write(&file, "[chains.mainnet\nbroken").unwrap();
    let started = std::time::Instant::now();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("no reload error logged");
        if line.contains("configuration not reloaded") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15));
    }
    assert_eq!(upstream_names(&addr).await, ["a", "b"]);

    // SIGHUP reloads at once (here: back to one upstream).
    std::fs::write(&file, &one).unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("SIGHUP did not reload");
        if line.contains("configuration reloaded") && line.contains("SIGHUP") {
            break;
        }
    }
    assert_eq!(upstream_names(&addr).await, ["a"]);
    let _ = child.kill();
    let _ = child.wait();
}

/// With JSON logs, the access line is one JSON object with the documented members and types
/// (the binary writes it itself, not through tracing-subscriber's JSON format).
#[tokio::test]
async fn the_json_access_line_is_one_object_with_typed_members() {
    let m = Mock::start("up").await;
    let dir = tempdir("json-access");
    let file = write(
        &dir,
        "d.toml",
        &format!("[chains.mainnet]\nchain_id = 1\n[[chains.mainnet.upstreams]]\nname = \"local\"\nurl = \"{}/KEYPATHSECRET\"\n", m.url()),
    );
    let (_child, addr, rx, _) = spawn_serving(&file, "json");
    let (status, _, _) = support::http_request(
        "POST",
        &format!("http://{addr}/mainnet"),
        r#"[{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"},{"jsonrpc":"2.0","id":2,"method":"eth_blockNumber"},{"jsonrpc":"2.0","id":3,"method":"a\"b\n"}]"#,
    )
    .await;
    assert_eq!(status, 200);
    let line = access_line(&rx);
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let ts = v["timestamp"].as_str().unwrap();
    // 2026-12-04T15:47:36.475173Z
    assert!(
        ts.len() == 27 && &ts[4..5] == "-" && &ts[10..11] == "T" && &ts[19..20] == ".",
        "{ts}"
    );
    assert!(ts.ends_with('Z'), "{ts}");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["target"], "detour::access");
    let f = &v["fields"];
    assert_eq!(f["message"], "request");
    assert_eq!(f["chain"], "mainnet");
    // The method name the client sent is written escaped, newline dropped.
    assert_eq!(f["methods"], "eth_blockNumber×2,a\"b", "{line}");
    assert_eq!(f["calls"], 3);
    assert_eq!(f["status"], 200);
    assert_eq!(f["upstreams"], "local");
    assert!(f["attempts"].as_u64().unwrap() >= 1, "{line}");
    assert!(f["errors"].is_u64() && f["failed"].is_u64(), "{line}");
    assert!(f["ms"].as_f64().unwrap() >= 0.0, "{line}");
    assert!(
        f["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    assert_eq!(f["client"], "-");
    assert!(!line.contains("KEYPATHSECRET"), "{line}");
}
