//! The upstream clients: detour's own HTTP/1.1 connections and their idle pool for plain-HTTP
//! upstreams, hyper + rustls for HTTPS and HTTP/2, and the caching resolver.

pub(crate) mod conns;
pub mod dns;
pub mod endpoint;
pub mod forward;
pub(crate) mod h1;
