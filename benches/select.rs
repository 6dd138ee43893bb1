//! Upstream selection cost as the pool grows: it should stay flat from 3 to 1000 upstreams
//! (power of two choices samples two candidates; it never scans the tier when most are usable).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use detour::select::balance::{select, Want};
use detour::state::pool::Pool;
use detour::state::upstream::now_us;
use detour::Config;

fn pool(n: usize, weighted: bool) -> Pool {
    let mut toml = String::from("[chains.c]\nchain_id = 1\n");
    for i in 0..n {
        let weight = if weighted { 1 + i % 3 } else { 1 };
        toml += &format!(
            "[[chains.c.upstreams]]\nname = \"u{i}\"\nurl = \"http://127.0.0.1:{}\"\nweight = {weight}\n",
            1000 + i
        );
    }
    Pool::new(Config::from_toml(&toml).unwrap(), None).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("select");
    for n in [3usize, 10, 100, 1000] {
        let p = pool(n, false);
        let chain = &p.chains[0];
        let now = now_us();
        // A read of the latest state: freshness and region checks included.
        let first = Want {
            latest: true,
            ..Want::default()
        };
        g.bench_with_input(BenchmarkId::new("first attempt", n), &n, |b, _| {
            b.iter(|| black_box(select(chain, now, black_box(&first))))
        });
        let third = Want {
            exclude: &[0, 1],
            latest: true,
            avoid_regions: &[0, 1],
            ..Want::default()
        };
        g.bench_with_input(BenchmarkId::new("third attempt", n), &n, |b, _| {
            b.iter(|| black_box(select(chain, now, black_box(&third))))
        });
        let p = pool(n, true);
        let chain = &p.chains[0];
        g.bench_with_input(BenchmarkId::new("weighted", n), &n, |b, _| {
            b.iter(|| black_box(select(chain, now, black_box(&first))))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
