//! JSON-RPC envelope parsing: a single `eth_call` and a batch of 100, plus the upstream-answer
//! parse (a 500-byte result and a 14 KB block) and the client-response write that each request
//! also pays.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use detour::rpc::jsonrpc::{self, Entry, Parsed};

/// The compare benchmark's mainnet-shaped answers (issue 19).
#[path = "compare/shapes.rs"]
mod shapes;

const CALL: &str = r#"{"jsonrpc":"2.0","id":42,"method":"eth_call","params":[{"from":"0x0000000000000000000000000000000000000000","to":"0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48","data":"0x70a08231000000000000000000000000f39fd6e51aad88f6f4ce6ab8827279cfffb92266"},"latest"]}"#;

fn batch(n: usize) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| CALL.replace("\"id\":42", &format!("\"id\":{i}")))
        .collect();
    format!("[{}]", items.join(","))
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("single eth_call", |b| {
        b.iter(|| match jsonrpc::parse(black_box(CALL.as_bytes()), 1000) {
            Parsed::Single(Entry::Call(c)) => black_box(c.method.len()),
            _ => unreachable!(),
        })
    });
    let body = batch(100);
    g.throughput(Throughput::Elements(100));
    g.bench_function("batch of 100 eth_call", |b| {
        b.iter(|| match jsonrpc::parse(black_box(body.as_bytes()), 1000) {
            Parsed::Batch(v) => black_box(v.len()),
            _ => unreachable!(),
        })
    });
    g.finish();

    let mut g = c.benchmark_group("upstream");
    let result = format!("\"0x{}\"", "00".repeat(250));
    let answer = format!(r#"{{"jsonrpc":"2.0","id":0,"result":{result}}}"#);
    g.bench_function("parse answer (500-byte result)", |b| {
        b.iter(|| black_box(jsonrpc::parse_upstream(black_box(answer.as_bytes())).map(|v| v.len())))
    });
    // A block-sized answer: ~14 KB, mostly 32-byte hashes (as `eth_getBlockByNumber` returns).
    let hash = |i: usize| format!("\"0x{:064x}\"", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let txs: Vec<String> = (0..190).map(hash).collect();
    let block = format!(
        r#"{{"jsonrpc":"2.0","id":0,"result":{{"number":"0x1500000","hash":{},"parentHash":{},"logsBloom":"0x{}","transactions":[{}],"uncles":[]}}}}"#,
        hash(1),
        hash(2),
        "0".repeat(512),
        txs.join(",")
    );
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("parse answer (14 KB block)", |b| {
        b.iter(|| black_box(jsonrpc::parse_upstream(black_box(block.as_bytes())).map(|v| v.len())))
    });
    g.bench_function("UTF-8 check alone (14 KB block)", |b| {
        b.iter(|| black_box(simdutf8::basic::from_utf8(black_box(block.as_bytes())).is_ok()))
    });
    // The large mainnet-shaped answers: the scanner validates every byte of each result.
    for (name, result) in [
        ("header 17 KB", shapes::header()),
        ("full block 200 KB", shapes::full_block()),
        ("receipts 585 KB", shapes::receipts()),
        ("logs 1.2 MB", shapes::logs()),
    ] {
        let answer = format!(r#"{{"jsonrpc":"2.0","id":0,"result":{result}}}"#);
        g.throughput(Throughput::Bytes(answer.len() as u64));
        g.bench_function(format!("parse answer ({name})"), |b| {
            b.iter(|| {
                black_box(jsonrpc::parse_upstream(black_box(answer.as_bytes())).map(|v| v.len()))
            })
        });
    }
    g.throughput(Throughput::Elements(1));
    let Parsed::Single(Entry::Call(call)) = jsonrpc::parse(CALL.as_bytes(), 10) else {
        unreachable!()
    };
    g.bench_function("write request + response", |b| {
        let mut up = Vec::with_capacity(512);
        let mut out = Vec::with_capacity(1024);
        b.iter(|| {
            up.clear();
            out.clear();
            jsonrpc::write_upstream_call(&mut up, 0, &call);
            jsonrpc::write_result(&mut out, call.id, result.as_bytes());
            black_box((up.len(), out.len()))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
