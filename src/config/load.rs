//! Loading: serde defaults ← TOML (a file, or the built-in default) ← `DETOUR_*` environment
//! variables, `${VAR}` expansion, errors that name the file and the key; and writing the
//! configuration back out with its secrets redacted.

use std::collections::BTreeMap;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer};

use super::*;

/// Top-level sections that `DETOUR_<SECTION>__<KEY>` environment variables may set. Other
/// `DETOUR_*` variables (`DETOUR_CONFIG`, or a secret like `DETOUR_INFURA_KEY` referenced as
/// `${DETOUR_INFURA_KEY}`) are not configuration keys.
const ENV_SECTIONS: &[&str] = &[
    "server",
    "client",
    "admin",
    "tracker",
    "filters",
    "websocket",
    "chains",
];

impl Config {
    /// Loads from `source`, applies `DETOUR_*` environment overrides, and validates.
    pub fn load(source: &Source) -> Result<Config, ConfigError> {
        let figment = match source {
            Source::File(path) => {
                if !path.is_file() {
                    return Err(ConfigError::one(
                        path.display().to_string(),
                        "no such file (or not a regular file)",
                    ));
                }
                Figment::from(Toml::file_exact(path))
            }
            Source::BuiltIn => Figment::from(Toml::string(DEFAULT_CONFIG_TOML)),
        };
        env_typos()?;
        let env = Env::prefixed("DETOUR_")
            .filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                ENV_SECTIONS
                    .iter()
                    .any(|s| key.strip_prefix(s).is_some_and(|r| r.starts_with("__")))
            })
            .split("__");
        Self::extract(figment.merge(env), source)
    }

    /// Parses TOML text without environment overrides (for tests and embedding), and validates.
    pub fn from_toml(toml: &str) -> Result<Config, ConfigError> {
        Self::extract(Figment::from(Toml::string(toml)), &Source::BuiltIn)
    }

    fn extract(figment: Figment, source: &Source) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(|e| from_figment(e, source))?;
        config.validate().map_err(|mut e| {
            for (at, _) in &mut e.problems {
                *at = format!("{source}: {at}");
            }
            e
        })?;
        Ok(config)
    }

    /// A copy with every secret-bearing value (upstream URLs' paths, queries and credentials,
    /// header values) replaced by `***`, for `detour check` and any other display.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if let Some(t) = &mut c.admin.token {
            *t = "***".into();
        }
        for k in &mut c.api_keys {
            k.key = "***".into();
        }
        for chain in c.chains.values_mut() {
            for up in &mut chain.upstreams {
                up.url = target::redact_url(&up.url);
                if let Some(ws) = &mut up.ws_url {
                    *ws = target::redact_url(ws);
                }
                for v in up.headers.values_mut() {
                    *v = "***".into();
                }
            }
        }
        c
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// `DETOUR_SERVER_LISTEN` (one underscore) would be silently ignored: say how to write it.
fn env_typos() -> Result<(), ConfigError> {
    let problems: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, _)| {
            let k = k.into_string().ok()?;
            let rest = k.strip_prefix("DETOUR_")?.to_ascii_lowercase();
            let section = ENV_SECTIONS.iter().find(|s| {
                rest.strip_prefix(*s)
                    .is_some_and(|r| r.starts_with('_') && !r.starts_with("__"))
            })?;
            Some((
                format!("environment: {k}"),
                format!(
                    "nested keys are separated by \"__\", e.g. DETOUR_{}__{}",
                    section.to_ascii_uppercase(),
                    &k["DETOUR_".len() + section.len() + 1..]
                ),
            ))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

fn from_figment(err: figment::Error, source: &Source) -> ConfigError {
    let problems = err
        .into_iter()
        .map(|e| {
            let from_env = e
                .metadata
                .as_ref()
                .is_some_and(|md| md.name.contains("environment"));
            let at = if from_env {
                // Name the variable exactly as the operator set it.
                format!(
                    "environment: DETOUR_{}",
                    e.path.join("__").to_ascii_uppercase()
                )
            } else {
                let origin = match e.metadata.as_ref().and_then(|md| md.source.as_ref()) {
                    Some(figment::Source::File(p)) => p.display().to_string(),
                    _ => source.to_string(),
                };
                match e.path.is_empty() {
                    true => origin,
                    false => format!("{origin}: {}", e.path.join(".")),
                }
            };
            (at, e.kind.to_string())
        })
        .collect();
    ConfigError { problems }
}

// === ${VAR} expansion ===

/// Replaces each `${NAME}` in `s` with the environment variable `NAME`.
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated \"${\" (expected \"${NAME}\")".to_string())?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "\"${{{name}}}\" is not a valid environment variable reference"
            ));
        }
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(std::env::VarError::NotPresent) => {
                return Err(format!("environment variable {name} is not set"))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(format!("environment variable {name} is not valid UTF-8"))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub(super) fn expand<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    expand_env(&s).map_err(serde::de::Error::custom)
}

pub(super) fn expand_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| expand_env(&s).map_err(serde::de::Error::custom))
        .transpose()
}

pub(super) fn expand_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    BTreeMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| match expand_env(&v) {
            Ok(v) => Ok((k, v)),
            Err(e) => Err(serde::de::Error::custom(format!("header {k}: {e}"))),
        })
        .collect()
}
