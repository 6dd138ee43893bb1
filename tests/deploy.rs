//! The shipped deployment files stay true: the Kubernetes example's config is valid, and every
//! metric the Grafana dashboard queries is one detour exports.

mod support;

use support::{chain_config, refused_url, Mock, Proxy};

fn repo(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The detour.toml embedded in a Kubernetes example, as the pod reads it.
fn embedded_config(yaml: &str) -> detour::Config {
    let start = yaml.find("# --- detour.toml (begin) ---").unwrap();
    let end = yaml.find("# --- detour.toml (end) ---").unwrap();
    let toml: String = yaml[start..end]
        .lines()
        .skip(1)
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    // The Secret's values, as the pod would have them (this test binary's tests set the same).
    for k in [
        "INFURA_KEY",
        "ALCHEMY_KEY",
        "DETOUR_ADMIN_TOKEN",
        "REDIS_PASSWORD",
    ] {
        std::env::set_var(k, "test-value-1234");
    }
    detour::Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

#[test]
fn the_replicas_example_shares_state_through_its_redis() {
    let yaml = repo("deploy/kubernetes/replicas.yaml");
    let config = embedded_config(&yaml);
    let url = config.shared.redis_url.as_deref().unwrap();
    assert_eq!(url, "redis://:test-value-1234@detour-redis:6379/0");
    assert_eq!(config.chains["mainnet"].upstreams.len(), 3);
    // Three replicas of detour, a Redis, and the Services naming them.
    assert!(yaml.contains("name: detour\nspec:\n  replicas: 3"));
    assert!(yaml.contains("name: detour-redis\nspec:\n  replicas: 1"));
    assert!(yaml.contains("kind: Service\nmetadata:\n  name: detour-redis"));
    // The password stays a secret: the proxy built from it never shows it.
    let proxy = detour::Detour::new(config).unwrap();
    let status = proxy.status().to_string();
    assert!(
        status.contains("redis://***@detour-redis:6379/0"),
        "{status}"
    );
    assert!(!status.contains("test-value-1234"));
}

#[test]
fn the_kubernetes_example_config_is_valid() {
    let yaml = repo("deploy/kubernetes/sidecar.yaml");
    let config = embedded_config(&yaml);
    assert_eq!(config.chains["mainnet"].upstreams.len(), 3);
    assert!(config.admin.listen.unwrap().ip().is_loopback());
    assert!(!config.server.shutdown_delay.is_zero());
}

#[tokio::test]
async fn every_dashboard_metric_is_exported() {
    // One request that is hedged (hung), fails over (dead) and is answered (good).
    let hung = Mock::start("hung").await;
    hung.always(support::Reply::Hang);
    let good = Mock::start("good").await;
    let dead = refused_url().await;
    let p = Proxy::start(&chain_config(
        "[chains.mainnet.hedge]\nmin_delay = \"20ms\"\nmax_delay = \"20ms\"\n",
        &[
            ("hung", &hung.url(), "tier = 0\ntimeout = \"30s\""),
            ("dead", &dead, "tier = 1"),
            ("good", &good.url(), "tier = 2"),
        ],
    ))
    .await;
    support::eventually("heads known", || p.upstream_status("good")["head"] == 100).await;
    p.call("/mainnet", "eth_getBalance", "[]").await;
    p.detour
        .reload(detour::Config::from_toml(&chain_config("", &[("good", &good.url(), "")])).unwrap())
        .unwrap();
    support::eventually("the reloaded upstream is probed", || {
        p.upstream_status("good")["head"] == 100
    })
    .await;
    let exported = p.detour.metrics();
    let dashboard = repo("deploy/grafana/detour-dashboard.json");
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let mut names: Vec<&str> = dashboard
        .match_indices("detour_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| *n != "detour_")
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let found = exported.lines().any(|l| {
            !l.starts_with('#') && l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])
        });
        assert!(
            found,
            "the dashboard queries {name}, which detour does not export:\n{exported}"
        );
    }
}
