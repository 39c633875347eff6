//! Timing helpers shared by the benchmark examples (included with `#[path]`; not an example).

/// Nanoseconds this process's threads have spent on a CPU (Linux's
/// `/proc/self/task/*/schedstat`; 0 elsewhere): work per CPU-second is less sensitive than work
/// per second to other processes taking the cores of a shared machine.
pub fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The median of `v` (the mean of the middle two for an even count); sorts `v`.
#[allow(dead_code)] // not every example takes medians
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
