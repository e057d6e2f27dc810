//! Percentiles from our own sample vectors, medians of runs, RSS.

use std::time::Duration;

/// The `p`-th percentile (0..=100) of `samples`, nearest rank. Sorts in place.
pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    assert!(!samples.is_empty(), "no samples");
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// p50 and p99 of one run.
pub(crate) fn p50_p99(samples: &mut [Duration]) -> (Duration, Duration) {
    (percentile(samples, 50.0), percentile(samples, 99.0))
}

/// The median of a few runs' figures.
pub(crate) fn median(mut runs: Vec<f64>) -> f64 {
    assert!(!runs.is_empty(), "no runs");
    runs.sort_by(f64::total_cmp);
    let n = runs.len();
    if n % 2 == 1 {
        runs[n / 2]
    } else {
        (runs[n / 2 - 1] + runs[n / 2]) / 2.0
    }
}

/// Runs `f` `n` times and returns the median of each of its figures.
pub(crate) fn median_of<const K: usize>(n: usize, mut f: impl FnMut() -> [f64; K]) -> [f64; K] {
    let runs: Vec<[f64; K]> = (0..n).map(|_| f()).collect();
    std::array::from_fn(|k| median(runs.iter().map(|r| r[k]).collect()))
}

pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub(crate) fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// This process's resident set size, in bytes (`VmRSS` of /proc/self/status).
pub(crate) fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Waits until the RSS stops moving (the supervisor has taken in what was
/// queued), at most `limit`; returns the last reading.
pub(crate) fn settled_rss(limit: Duration) -> u64 {
    let deadline = std::time::Instant::now() + limit;
    let mut last = rss_bytes();
    let mut steady = 0;
    while std::time::Instant::now() < deadline && steady < 3 {
        std::thread::sleep(Duration::from_millis(30));
        let now = rss_bytes();
        if now.abs_diff(last) < 64 * 1024 {
            steady += 1;
        } else {
            steady = 0;
        }
        last = now;
    }
    last
}
