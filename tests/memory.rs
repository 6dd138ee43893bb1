//! Memory per request stays within a small multiple of the body: a counting allocator records
//! the peak of live heap bytes while hostile bodies are parsed and served.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use detour::rpc::jsonrpc::{parse, Parsed};
use support::{chain_config, Mock, Proxy};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                let now =
                    LIVE.fetch_add(new_size - layout.size(), Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The tests of this file measure one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Peak live heap bytes above the level when `f` started.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let out = f();
    (out, PEAK.load(Relaxed).saturating_sub(base))
}

/// `[1,1,…,1]` of about `bytes` bytes.
fn ones(bytes: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(bytes + 2);
    body.push(b'[');
    while body.len() < bytes {
        body.extend_from_slice(b"1,");
    }
    body.extend_from_slice(b"1]");
    body
}

#[test]
fn a_huge_batch_is_refused_without_building_its_members() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let body = ones(10 << 20);
    let members = (body.len() - 1) / 2;
    // The scanner's path.
    let (parsed, peak) =
        peak_during(|| matches!(parse(&body, 1000), Parsed::BatchTooLong(n) if n == members));
    assert!(parsed, "the scanner counts every member");
    assert!(peak < 1 << 20, "scanner path peaked at {peak} bytes");
    // serde_json's path (the scanner gives up on an escaped key in the first member).
    let mut slow = b"[{\"jsonr\\u0070c\":\"2.0\"},".to_vec();
    slow.extend_from_slice(&body[1..]);
    let (parsed, peak) =
        peak_during(|| matches!(parse(&slow, 1000), Parsed::BatchTooLong(n) if n == members + 1));
    assert!(parsed, "serde_json's path counts every member");
    assert!(peak < 1 << 20, "serde path peaked at {peak} bytes");
    // At the limit exactly, both paths keep the members.
    let at_limit = b"[1,1,1]";
    assert!(matches!(parse(at_limit, 3), Parsed::Batch(v) if v.len() == 3));
    let slow_at_limit = b"[{\"\\u0069d\":1},1,1]";
    assert!(matches!(parse(slow_at_limit, 3), Parsed::Batch(v) if v.len() == 3));
    assert!(matches!(parse(slow_at_limit, 2), Parsed::BatchTooLong(3)));
}

#[test]
fn four_huge_bodies_at_once_stay_within_a_small_multiple_of_their_size() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let m = Mock::start("a").await;
        let p = Proxy::start(&chain_config("", &[("a", &m.url(), "")])).await;
        let body = String::from_utf8(ones((10 << 20) - 16)).unwrap();
        let url = p.url("/mainnet");
        // Warm up connections and lazily built state outside the measurement.
        let (status, _) = p.post("/mainnet", "[1,1]").await;
        assert_eq!(status, 200);
        let base = LIVE.load(Relaxed);
        PEAK.store(base, Relaxed);
        let sends = (0..4).map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { support::http_request("POST", &url, &body).await })
        });
        // The four bodies themselves (the test's copies) count too: 40 MiB.
        for r in futures_util::future::join_all(sends).await {
            let (status, _, text) = r.unwrap();
            assert_eq!(status, 200, "{text}");
            assert!(text.contains("exceeds the limit of 1000"), "{text}");
        }
        let peak = PEAK.load(Relaxed).saturating_sub(base);
        // Test-side copies and client buffers (about 2 per body), the proxy's body buffers
        // (1 per body): a small multiple, where building members took 30 per body.
        assert!(
            peak < 4 * 4 * (10 << 20),
            "peak {} MiB for four 10 MiB bodies",
            peak >> 20
        );
        assert_eq!(m.hits(), 0);
        p.stop().await;
    });
}
