//! Upstream URLs: parsed and checked, credentials in the URL turned into a `Basic` header, and
//! shown with every secret masked.

use base64::Engine as _;
use http::header::HeaderValue;
use http::Uri;

/// A parsed upstream URL: where to connect, which headers carry its credentials, and how to
/// show it without secrets.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URI requests go to, without userinfo.
    pub uri: Uri,
    /// `Authorization: Basic …` built from userinfo in the URL, if any.
    pub authorization: Option<HeaderValue>,
    /// The URL with path, query and credentials masked.
    pub display: String,
    /// Substrings that must never be shown (path, query, credentials, long path segments).
    pub secrets: Vec<String>,
}

impl Target {
    /// Parses and checks an upstream URL (`http` or `https`, with a host).
    pub fn parse(url: &str) -> Result<Target, String> {
        Self::parse_for(url, ["http", "https"])
    }

    /// Parses and checks an upstream WebSocket URL (`ws` or `wss`, with a host).
    pub fn parse_ws(url: &str) -> Result<Target, String> {
        Self::parse_for(url, ["ws", "wss"])
    }

    fn parse_for(url: &str, schemes: [&str; 2]) -> Result<Target, String> {
        // Never echo the URL itself in an error: it may carry a key.
        let uri: Uri = url.parse().map_err(|_| "is not a valid URL".to_string())?;
        let scheme = uri.scheme_str().unwrap_or_default();
        if !schemes.contains(&scheme) {
            return Err(format!(
                "must start with {}:// or {}://",
                schemes[0], schemes[1]
            ));
        }
        let authority = uri.authority().ok_or("has no host")?;
        if authority.host().is_empty() {
            return Err("has no host".into());
        }
        let mut secrets = Vec::new();
        let (userinfo, hostport) = match authority.as_str().rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority.as_str()),
        };
        let authorization = match userinfo {
            Some(userinfo) => {
                secrets.push(userinfo.to_owned());
                let decoded = percent_encoding::percent_decode_str(userinfo)
                    .decode_utf8_lossy()
                    .into_owned();
                secrets.extend(
                    decoded
                        .split(':')
                        .filter(|s| s.len() >= 4)
                        .map(str::to_owned),
                );
                let token = base64::engine::general_purpose::STANDARD.encode(decoded.as_bytes());
                let value = HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|_| "has credentials that cannot be sent in a header".to_string())?;
                Some(value)
            }
            None => None,
        };
        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let clean: Uri = Uri::builder()
            .scheme(scheme)
            .authority(hostport)
            .path_and_query(pq)
            .build()
            .map_err(|_| "is not a valid URL".to_string())?;
        let path = uri.path();
        if path.len() > 1 {
            secrets.push(path.to_owned());
            secrets.extend(path.split('/').filter(|s| s.len() >= 8).map(str::to_owned));
        }
        if let Some(q) = uri.query() {
            secrets.push(q.to_owned());
            secrets.extend(
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(_, v)| v)
                    .filter(|v| v.len() >= 4)
                    .map(str::to_owned),
            );
        }
        secrets.push(url.to_owned());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Ok(Target {
            uri: clean,
            authorization,
            display: redact_url(url),
            secrets,
        })
    }
}

/// Shows a URL as `scheme://host[:port]`, with `/***` for a path, `?***` for a query and `***@`
/// for credentials: enough to recognise the provider, never the key.
pub fn redact_url(url: &str) -> String {
    let Ok(uri) = url.parse::<Uri>() else {
        return "<invalid url>".into();
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return "<invalid url>".into();
    };
    let (creds, hostport) = match authority.as_str().rsplit_once('@') {
        Some((_, h)) => ("***@", h),
        None => ("", authority.as_str()),
    };
    let path = if uri.path().len() > 1 { "/***" } else { "" };
    let query = if uri.query().is_some() { "?***" } else { "" };
    format!("{scheme}://{creds}{hostport}{path}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_strips_credentials_into_basic_auth() {
        let t = Target::parse(
            "https://us%40er:p%3Ass@node.example:8443/rpc/ABCDEFGH12345678?key=QWERTY",
        )
        .unwrap();
        assert_eq!(
            t.uri.to_string(),
            "https://node.example:8443/rpc/ABCDEFGH12345678?key=QWERTY"
        );
        let auth = t.authorization.unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode("us@er:p:ss");
        assert_eq!(auth.to_str().unwrap(), format!("Basic {expected}"));
        assert_eq!(t.display, "https://***@node.example:8443/***?***");
        for s in ["ABCDEFGH12345678", "QWERTY", "us%40er:p%3Ass"] {
            assert!(
                t.secrets.iter().any(|x| x == s),
                "{s} not a secret: {:?}",
                t.secrets
            );
        }
    }

    #[test]
    fn target_rejects_bad_urls_without_echoing_them() {
        for bad in ["ftp://x/KEY", "not a url KEY", "http:///KEY", "/path/KEY"] {
            let e = Target::parse(bad).unwrap_err();
            assert!(!e.contains("KEY"), "{e}");
        }
        assert_eq!(redact_url("http://localhost:8545"), "http://localhost:8545");
        assert_eq!(
            redact_url("http://localhost:8545/"),
            "http://localhost:8545"
        );
    }
}
