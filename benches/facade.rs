//! `cargo bench --bench facade`: criterion micro-benches, each facade figure
//! beside its raw baseline in the same run (raw ping-pong vs submit → wait,
//! raw bincode stream vs process_task × N + collect_tasks), plus the codec
//! cost of one tiny task. The full table with targets is
//! `cargo bench --bench report`.
//!
//! Criterion over divan: criterion's `iter_custom` lets a benchmark return
//! the time of exactly the span it measured (the library and raw figures
//! exclude process start-up), its statistics and saved baselines compare
//! runs, and it builds on our MSRV; divan's strength (many tiny generic
//! benches, allocation counting) is not what process round trips need.

// Each bench binary uses a different part of the shared code.
#[allow(dead_code)]
mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};

use common::tasks::Tiny;
use common::{library, raw};

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_pingpong_32B", |b| {
        b.iter_custom(|iters| raw::pingpong(iters as usize).into_iter().sum())
    });
    g.bench_function("facade_submit_wait", |b| {
        b.iter_custom(|iters| library::round_trip(iters as usize).into_iter().sum())
    });
    g.finish();
}

fn streaming(c: &mut Criterion) {
    const N: usize = 10_000;
    let tasks: Vec<Tiny> = (0..N as u64).map(Tiny::new).collect();
    let mut g = c.benchmark_group("streaming_10k_tiny");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("raw_bincode_frames", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| raw::stream("stream-tiny", &tasks)).sum())
    });
    g.bench_function("facade_process_task_collect", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| library::streaming(N)).sum())
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let cfg = bincode::config::standard();
    let task = Tiny::new(123_456);
    let bytes = bincode::serde::encode_to_vec(&task, cfg).expect("encode");
    let mut g = c.benchmark_group("codec_tiny");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_into_vec", |b| {
        let mut out = Vec::with_capacity(64);
        b.iter(|| {
            out.clear();
            bincode::serde::encode_into_std_write(black_box(&task), &mut out, cfg).expect("encode");
            black_box(out.len())
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| {
            let (t, _): (Tiny, usize) =
                bincode::serde::decode_from_slice(black_box(&bytes), cfg).expect("decode");
            black_box(t)
        })
    });
    g.finish();
}

fn main() {
    // A facade worker or raw child does its job here and exits.
    common::dispatch_child();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    round_trip(&mut c);
    streaming(&mut c);
    codec(&mut c);
    c.final_summary();
}
