//! Client access: API keys (a bearer token, or a path segment for wallets that can only set a
//! URL) compared in constant time, and CORS for browser dApps.

use http::header::HeaderValue;
use http::HeaderMap;

use crate::config::{ApiKey, ServerConfig};

/// Who a request is from, for rate limits and filter limits: the API key's name, else the
/// client's IP address, else `in-process` (a library caller).
pub fn client_id(key: Option<&str>, ip: Option<std::net::IpAddr>) -> String {
    match (key, ip) {
        (Some(name), _) => format!("key:{name}"),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => "in-process".to_string(),
    }
}

/// Splits `/mainnet/KEY/` into the chain part (`mainnet`) and the key segment (`KEY`).
pub fn split_path(path: &str) -> (&str, Option<&str>) {
    let p = path.strip_prefix('/').unwrap_or(path);
    let p = p.strip_suffix('/').unwrap_or(p);
    match p.split_once('/') {
        Some((chain, rest)) if !rest.is_empty() => (chain, Some(rest)),
        Some((chain, _)) => (chain, None),
        None => (p, None),
    }
}

/// The key a request carries: `Authorization: Bearer <key>`, else the path segment.
pub fn presented<'a>(headers: &'a HeaderMap, path_key: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or(path_key)
}

/// Compares without an early exit (`subtle`), so the time taken says nothing about where they
/// differ. Lengths are not secret.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// Who the request is from: `Ok(None)` when no keys are configured, `Ok(Some(name))` for a
/// valid key, `Err(())` for a missing or wrong one. Every configured key is compared, so the
/// time taken does not say which one came close.
#[allow(clippy::result_unit_err)]
pub fn authenticate<'k>(
    keys: &'k [ApiKey],
    presented: Option<&str>,
) -> Result<Option<&'k str>, ()> {
    if keys.is_empty() {
        return Ok(None);
    }
    let Some(given) = presented else {
        return Err(());
    };
    let mut found = None;
    for k in keys {
        if constant_time_eq(k.key.as_bytes(), given.as_bytes()) {
            found = Some(k.name.as_str());
        }
    }
    found.map(Some).ok_or(())
}

/// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed:
/// `server.cors_origins`, or by default any origin on a loopback listener and none otherwise.
pub fn allowed_origin(server: &ServerConfig, origin: &HeaderValue) -> Option<HeaderValue> {
    let allowed = match &server.cors_origins {
        Some(list) => list
            .iter()
            .any(|o| o == "*" || o.as_bytes() == origin.as_bytes()),
        None => server.listen.ip().is_loopback(),
    };
    allowed.then(|| origin.clone())
}

/// Adds the CORS headers of an allowed origin to a response.
pub fn add_cors(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(http::header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(
        http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("x-detour-upstream"),
    );
}

/// Adds what a preflight (`OPTIONS`) answer needs on top of [`add_cors`].
pub fn add_preflight(headers: &mut HeaderMap) {
    headers.insert(
        http::header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS"),
    );
    headers.insert(
        http::header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, authorization"),
    );
    headers.insert(
        http::header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<ApiKey> {
        vec![
            ApiKey {
                name: "backend".into(),
                key: "k-backend-0123456789".into(),
            },
            ApiKey {
                name: "wallet".into(),
                key: "k-wallet-0123456789a".into(),
            },
        ]
    }

    #[test]
    fn paths_split_into_chain_and_key() {
        assert_eq!(split_path("/mainnet"), ("mainnet", None));
        assert_eq!(split_path("/mainnet/"), ("mainnet", None));
        assert_eq!(split_path("/mainnet/KEY"), ("mainnet", Some("KEY")));
        assert_eq!(split_path("/mainnet/KEY/"), ("mainnet", Some("KEY")));
        assert_eq!(split_path("/"), ("", None));
    }

    #[test]
    fn keys_identify_clients() {
        let k = keys();
        assert_eq!(authenticate(&[], None), Ok(None));
        assert_eq!(
            authenticate(&k, Some("k-wallet-0123456789a")),
            Ok(Some("wallet"))
        );
        assert_eq!(authenticate(&k, Some("k-wallet-0123456789b")), Err(()));
        assert_eq!(authenticate(&k, Some("")), Err(()));
        assert_eq!(authenticate(&k, None), Err(()));
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            "Bearer k-backend-0123456789".parse().unwrap(),
        );
        assert_eq!(presented(&h, Some("other")), Some("k-backend-0123456789"));
        assert_eq!(presented(&HeaderMap::new(), Some("p")), Some("p"));
    }

    #[test]
    fn cors_defaults_follow_the_listener() {
        let o: HeaderValue = "https://app.example".parse().unwrap();
        let mut s = ServerConfig::default();
        assert!(allowed_origin(&s, &o).is_some(), "loopback: any origin");
        s.listen = "0.0.0.0:8545".parse().unwrap();
        assert!(allowed_origin(&s, &o).is_none(), "public: none by default");
        s.cors_origins = Some(vec!["https://app.example".into()]);
        assert_eq!(allowed_origin(&s, &o), Some(o.clone()));
        assert!(allowed_origin(&s, &"https://evil.example".parse().unwrap()).is_none());
    }
}
