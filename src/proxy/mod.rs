//! The proxy as a service: the `tower::Service` (endpoints, responses, the access log), client
//! access control, and the admin API.

pub mod access;
pub(crate) mod accesslog;
pub mod admin;
pub(crate) mod response;
pub mod service;
pub(crate) mod ws;
pub(crate) mod wsframe;
