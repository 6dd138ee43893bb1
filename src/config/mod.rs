//! Typed configuration: serde defaults ← TOML (a file, or the built-in default) ← `DETOUR_*`
//! environment variables, then [`Config::validate`].
//!
//! Every field is documented in `config.example.toml`, which is also the built-in default
//! configuration (it is compiled into the binary). `${VAR}` inside any string value is replaced by
//! that environment variable while the file is read, so an error still names the file and the key.
//!
//! - [`model`]: the types and their defaults.
//! - [`load`]: figment layering, `${VAR}` expansion, redacted output.
//! - [`validate`]: the checks types cannot make.
//! - [`target`]: upstream URLs parsed, credentials moved to a header, secrets masked.
//! - [`tls`]: the certificate files named here, read into rustls configurations.

pub mod load;
pub mod model;
pub mod target;
pub mod tls;
pub mod validate;

pub use load::expand_env;
pub use model::*;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MINIMAL: &str = r#"
        [chains.mainnet]
        chain_id = 1
        [[chains.mainnet.upstreams]]
        name = "a"
        url = "http://127.0.0.1:1"
    "#;

    #[test]
    fn defaults_apply() {
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.client, ClientConfig::default());
        let up = &c.chains["mainnet"].upstreams[0];
        assert_eq!(
            (up.tier, up.weight, c.chains["mainnet"].max_attempts),
            (0, 1, 3)
        );
    }

    #[test]
    fn built_in_default_is_valid_and_has_five_chains_with_three_operators_each() {
        let c = Config::from_toml(DEFAULT_CONFIG_TOML).unwrap();
        let names: Vec<_> = c.chains.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["arbitrum", "base", "mainnet", "optimism", "polygon"]
        );
        for (name, chain) in &c.chains {
            let hosts: std::collections::BTreeSet<_> = chain
                .upstreams
                .iter()
                .map(|u| {
                    assert!(u.url.starts_with("https://"), "{name}: {}", u.url);
                    let host = u.url.split('/').nth(2).unwrap();
                    // The operator: the registrable domain (last two labels).
                    host.rsplit('.').take(2).collect::<Vec<_>>().join(".")
                })
                .collect();
            assert!(
                hosts.len() >= 3,
                "{name} has fewer than three operators: {hosts:?}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\ntimeout = \"1s\"\n")
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("server") && text.contains("timeout"),
            "{text}"
        );
    }

    #[test]
    fn durations_parse_and_bad_ones_say_how() {
        let c = Config::from_toml(&format!("[server]\nrequest_timeout = \"500ms\"\n{MINIMAL}"))
            .unwrap();
        assert_eq!(c.server.request_timeout, Duration::from_millis(500));
        let e = Config::from_toml(&format!("[server]\nrequest_timeout = \"soon\"\n{MINIMAL}"))
            .unwrap_err();
        assert!(e.to_string().contains("server.request_timeout"), "{e}");
        assert!(e.to_string().contains("\"10s\""), "{e}");
    }

    #[test]
    fn env_references_expand_and_missing_ones_name_the_variable() {
        std::env::set_var("DETOUR_TEST_KEY_EXPAND", "s3cr3t");
        let toml = MINIMAL.replace(
            "http://127.0.0.1:1",
            "https://x.example/v3/${DETOUR_TEST_KEY_EXPAND}",
        );
        let c = Config::from_toml(&toml).unwrap();
        assert_eq!(
            c.chains["mainnet"].upstreams[0].url,
            "https://x.example/v3/s3cr3t"
        );
        let toml = MINIMAL.replace(
            "http://127.0.0.1:1",
            "https://x.example/${DETOUR_TEST_UNSET_VAR}",
        );
        let e = Config::from_toml(&toml).unwrap_err().to_string();
        assert!(e.contains("DETOUR_TEST_UNSET_VAR is not set"), "{e}");
        assert!(e.contains("chains.mainnet.upstreams.0.url"), "{e}");
        assert!(expand_env("${oops").is_err());
        assert_eq!(expand_env("plain $ text").unwrap(), "plain $ text");
    }

    #[test]
    fn framing_and_hop_by_hop_headers_are_refused() {
        for name in [
            "Content-Length",
            "transfer-encoding",
            "Connection",
            "Host",
            "Keep-Alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Connection",
            "Proxy-Authorization",
            "Expect",
        ] {
            let toml = format!("{MINIMAL}headers = {{ \"{name}\" = \"x\" }}\n");
            let e = Config::from_toml(&toml).unwrap_err();
            assert!(
                e.problems
                    .iter()
                    .any(|(at, _)| at.ends_with(&format!(".headers.{name}"))),
                "{name}: {e}"
            );
        }
        let ok = format!(
            "{MINIMAL}headers = {{ \"x-api-key\" = \"k\", \"Authorization\" = \"Bearer k\" }}\n"
        );
        assert!(Config::from_toml(&ok).is_ok());
    }

    #[test]
    fn validation_names_each_problem() {
        let toml = r#"
            [chains.main-net]
            chain_id = 1
            [[chains.main-net.upstreams]]
            name = "a"
            url = "ftp://x"
            weight = 0
            [[chains.main-net.upstreams]]
            name = "a"
            url = "http://ok"
            [chains.other]
            chain_id = 1
            [chains.healthz]
            chain_id = 2
        "#;
        let e = Config::from_toml(toml).unwrap_err();
        let at: Vec<_> = e.problems.iter().map(|(a, _)| a.as_str()).collect();
        for want in [
            "chains.main-net.upstreams[0].url",
            "chains.main-net.upstreams[0].weight",
            "chains.main-net.upstreams[1].name",
            "chains.other.chain_id",
            "chains.other.upstreams",
            "chains.healthz",
        ] {
            assert!(
                at.iter().any(|a| a.ends_with(want)),
                "missing {want} in {e}"
            );
        }
    }

    #[test]
    fn ws_url_must_be_a_websocket_url() {
        for (url, ok) in [
            ("ws://127.0.0.1:8545", true),
            ("wss://node.example/ws/v3/KEY", true),
            ("http://127.0.0.1:8545", false),
            ("nope", false),
        ] {
            let toml = format!("{MINIMAL}ws_url = \"{url}\"\n");
            match Config::from_toml(&toml) {
                Ok(_) => assert!(ok, "{url} accepted"),
                Err(e) => {
                    assert!(!ok, "{url} refused: {e}");
                    let text = e.to_string();
                    assert!(text.contains("ws_url"), "{text}");
                    assert!(!text.contains("KEY"), "{text}");
                }
            }
        }
    }

    #[test]
    fn redacted_hides_keys_and_renders_toml() {
        let toml = MINIMAL.replace(
            "http://127.0.0.1:1",
            "https://user:pw@x.example/v3/KEY123?k=KEY456",
        ) + "headers = { \"x-api-key\" = \"KEY789\" }\n"
            + "ws_url = \"wss://x.example/ws/v3/WSKEY123\"\n";
        let c = Config::from_toml(&toml).unwrap().redacted();
        let text = c.to_toml();
        assert!(text.contains("wss://x.example/***"), "{text}");
        for secret in ["KEY123", "KEY456", "KEY789", "WSKEY123", "pw", "user"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("x.example"));
        assert!(text.contains("request_timeout = \"10s\""), "{text}");
    }
}
