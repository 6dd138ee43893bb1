//! Method policy: which methods a chain serves at all, and which methods an upstream cannot
//! serve (so they are routed elsewhere).
//!
//! A chain serves a method when it matches an `allow` pattern and no `deny` pattern, except that
//! a method named exactly (no `*`) in `allow` is always served: that is how one method of a
//! denied family is opened up (`allow = ["*", "debug_traceTransaction"]`). A denied method is
//! answered by detour with `-32601` naming the method and the rule; it never reaches an
//! upstream. Patterns are globs where `*` matches any run of characters.

pub use crate::config::DEFAULT_DENY;

use bytes::Bytes;

use crate::rpc::jsonrpc;

/// Whether `name` matches `pattern` (`*` matches any run of characters, including none).
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and where in `name` its match currently ends.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` swallow one more character and retry.
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A chain's compiled method policy.
#[derive(Debug, Clone)]
pub struct MethodPolicy {
    /// Methods named exactly in `allow`: always served.
    exact_allow: Vec<String>,
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
    /// `deny` indexed by a rule's first character, so a check compares a method with the few
    /// rules that can match it (the default list has 20): `deny_at[b]..deny_at[b + 1]` are the
    /// positions in `deny_sorted` of rules starting with byte `b`, and `deny_at[256]..` those
    /// starting with `*`.
    deny_sorted: Vec<u32>,
    deny_at: Box<[u32; 258]>,
    /// The default policy (allow everything but [`DEFAULT_DENY`]) with no exceptions: checks
    /// can skip the allow list.
    allow_all: bool,
}

/// A glob compiled for the common shapes: most rules are a name or a `prefix_*` family, which
/// are checked with one comparison instead of the general matcher.
#[derive(Debug, Clone)]
struct Pattern {
    rule: String,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// No `*`: the name itself.
    Exact,
    /// One `*`, at the end: names starting with the rest.
    Prefix,
    /// Anything else: [`glob`].
    Glob,
}

impl Pattern {
    fn new(rule: &str) -> Pattern {
        let kind = match rule.find('*') {
            None => Kind::Exact,
            Some(i) if i + 1 == rule.len() => Kind::Prefix,
            Some(_) => Kind::Glob,
        };
        Pattern {
            rule: rule.to_owned(),
            kind,
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self.kind {
            Kind::Exact => self.rule == name,
            Kind::Prefix => name.starts_with(&self.rule[..self.rule.len() - 1]),
            Kind::Glob => glob(&self.rule, name),
        }
    }
}

/// Why a method is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It matches this `deny` pattern.
    Denied(String),
    /// It matches no `allow` pattern.
    NotAllowed,
}

impl MethodPolicy {
    /// Builds the policy from the configured lists.
    pub fn new(allow: &[String], deny: &[String]) -> MethodPolicy {
        let deny: Vec<Pattern> = deny.iter().map(|d| Pattern::new(d)).collect();
        // A rule's bucket: its first byte, or 256 when it starts with `*` (or is empty, which
        // matches only the empty name) and so may match a name starting with anything.
        let bucket = |p: &Pattern| match p.rule.as_bytes().first() {
            Some(&b) if b != b'*' => usize::from(b),
            _ => 256,
        };
        let mut deny_sorted: Vec<u32> = (0..deny.len() as u32).collect();
        // Stable: within a bucket, rules keep their configured order.
        deny_sorted.sort_by_key(|&i| bucket(&deny[i as usize]));
        let mut deny_at = Box::new([0u32; 258]);
        for &i in &deny_sorted {
            deny_at[bucket(&deny[i as usize]) + 1] += 1;
        }
        for b in 1..deny_at.len() {
            deny_at[b] += deny_at[b - 1];
        }
        MethodPolicy {
            allow_all: allow.iter().any(|a| a == "*")
                && allow.iter().all(|a| a == "*" || !a.contains('*')),
            exact_allow: allow.iter().filter(|a| !a.contains('*')).cloned().collect(),
            allow: allow.iter().map(|a| Pattern::new(a)).collect(),
            deny,
            deny_sorted,
            deny_at,
        }
    }

    /// The first `deny` rule, in configured order, that matches `method`.
    fn denied_by(&self, method: &str) -> Option<&Pattern> {
        let rules = |bucket: usize| {
            let (from, to) = (self.deny_at[bucket], self.deny_at[bucket + 1]);
            self.deny_sorted[from as usize..to as usize]
                .iter()
                .copied()
                .filter(|&i| self.deny[i as usize].matches(method))
        };
        let first = method.as_bytes().first().map_or(256, |&b| usize::from(b));
        let hit = match first {
            256 => rules(256).next(),
            b => rules(b).next().into_iter().chain(rules(256).next()).min(),
        };
        hit.map(|i| &self.deny[i as usize])
    }

    /// `Ok` when the chain serves `method`, else why not.
    pub fn check(&self, method: &str) -> Result<(), Refusal> {
        if self.exact_allow.iter().any(|a| a == method) {
            return Ok(());
        }
        if let Some(rule) = self.denied_by(method) {
            return Err(Refusal::Denied(rule.rule.clone()));
        }
        if self.allow_all || self.allow.iter().any(|a| a.matches(method)) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }
}

/// The error object for a method the chain's policy refuses: `-32601`, naming the method, the
/// rule and how to open it up.
pub fn method_refused(chain: &str, method: &str, refusal: &Refusal) -> Bytes {
    let (why, rule) = match refusal {
        Refusal::Denied(rule) => (
            format!("denied by chains.{chain}.methods.deny pattern {rule:?}"),
            rule.as_str(),
        ),
        Refusal::NotAllowed => (format!("not in chains.{chain}.methods.allow"), ""),
    };
    // The method name comes from the client: shown escaped and cut short.
    let shown: String = method.chars().take(100).collect();
    let message = format!(
        "method {shown:?} is not available here: {why} (to open it up, list it by name in chains.{chain}.methods.allow)"
    );
    let data = format!(
        "{{\"method\":{},\"policy\":{},\"rule\":{}}}",
        jsonrpc::json_string(&shown),
        jsonrpc::json_string(match refusal {
            Refusal::Denied(_) => "deny",
            Refusal::NotAllowed => "allow",
        }),
        jsonrpc::json_string(rule)
    );
    Bytes::from(jsonrpc::error_object(
        jsonrpc::METHOD_NOT_FOUND,
        &message,
        Some(&data),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("*", "anything", true),
            ("*", "", true),
            ("debug_*", "debug_traceTransaction", true),
            ("debug_*", "debug_", true),
            ("debug_*", "eth_debug_x", false),
            ("*_sign*", "eth_signTypedData_v4", true),
            ("eth_sign", "eth_signTransaction", false),
            ("eth_sign", "eth_sign", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("a**c", "abc", true),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob(p, n), want, "{p} ~ {n}");
        }
    }

    #[test]
    fn default_policy_denies_the_documented_families_only() {
        let p = MethodPolicy::new(&strings(&["*"]), &strings(DEFAULT_DENY));
        for m in [
            "admin_addPeer",
            "personal_unlockAccount",
            "debug_traceTransaction",
            "miner_start",
            "engine_forkchoiceUpdatedV3",
            "txpool_content",
            "eth_sign",
            "eth_sendTransaction",
            "eth_signTransaction",
            "anvil_setBalance",
        ] {
            assert!(
                matches!(p.check(m), Err(Refusal::Denied(_))),
                "{m} should be denied"
            );
        }
        for m in [
            "eth_call",
            "eth_sendRawTransaction",
            "eth_getLogs",
            "trace_block",
            "net_version",
            "eth_signer_fake_but_not_matching",
        ] {
            assert_eq!(p.check(m), Ok(()), "{m} should be served");
        }
        assert_eq!(
            p.check("debug_traceCall"),
            Err(Refusal::Denied("debug_*".into()))
        );
    }

    #[test]
    fn an_exact_allow_opens_one_method_of_a_denied_family() {
        let p = MethodPolicy::new(
            &strings(&["*", "debug_traceTransaction"]),
            &strings(DEFAULT_DENY),
        );
        assert_eq!(p.check("debug_traceTransaction"), Ok(()));
        assert!(p.check("debug_traceCall").is_err());
    }

    #[test]
    fn an_allow_list_limits_what_is_served() {
        let p = MethodPolicy::new(&strings(&["eth_*", "net_version"]), &strings(&["eth_sign"]));
        assert_eq!(p.check("eth_call"), Ok(()));
        assert_eq!(p.check("net_version"), Ok(()));
        assert_eq!(p.check("web3_clientVersion"), Err(Refusal::NotAllowed));
        assert_eq!(p.check("eth_sign"), Err(Refusal::Denied("eth_sign".into())));
    }

    #[test]
    fn compiled_patterns_match_exactly_what_the_glob_matches() {
        let patterns = [
            "*", "", "eth_sign", "debug_*", "*_sign*", "a*b*c", "a**", "*x", "eth_*_v4", "e*",
        ];
        let names = [
            "",
            "eth_sign",
            "eth_signTransaction",
            "debug_",
            "debug_x",
            "xdebug_",
            "a",
            "abc",
            "aXbYc",
            "ab",
            "x",
            "yx",
            "eth_signTypedData_v4",
            "eth_call",
            "e",
        ];
        for p in patterns {
            let compiled = Pattern::new(p);
            for n in names {
                assert_eq!(compiled.matches(n), glob(p, n), "{p} ~ {n} ({compiled:?})");
            }
        }
    }

    #[test]
    fn the_deny_index_names_the_first_matching_rule_in_configured_order() {
        let names = [
            "",
            "eth_sign",
            "eth_call",
            "debug_x",
            "xdebug_",
            "abc",
            "aXbYc",
            "x",
            "yx",
            "e",
            "é",
            "eth_signTypedData_v4",
            "zz",
        ];
        let rules = [
            "*", "", "eth_sign", "debug_*", "*_sign*", "a*b*c", "a**", "*x", "eth_*_v4", "e*",
            "é*", "z",
        ];
        // Every rotation, so each rule comes first once (and the `*` rules sit before and after
        // the ones they overlap).
        for k in 0..rules.len() {
            let deny: Vec<String> = rules[k..]
                .iter()
                .chain(&rules[..k])
                .map(|r| r.to_string())
                .collect();
            let p = MethodPolicy::new(&strings(&["*"]), &deny);
            for n in names {
                let want = deny.iter().find(|r| glob(r, n)).cloned();
                let got = match p.check(n) {
                    Err(Refusal::Denied(rule)) => Some(rule),
                    _ => None,
                };
                assert_eq!(got, want, "{n} against {deny:?}");
            }
        }
        for n in ["eth_call", "eth_getBalance", "net_version", ""] {
            let p = MethodPolicy::new(&strings(&["*"]), &strings(DEFAULT_DENY));
            let want = DEFAULT_DENY
                .iter()
                .find(|r| glob(r, n))
                .map(|r| r.to_string());
            let got = match p.check(n) {
                Err(Refusal::Denied(rule)) => Some(rule),
                _ => None,
            };
            assert_eq!(got, want, "{n}");
        }
    }
}
