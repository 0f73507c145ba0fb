//! What every bench file here shares: how long criterion warms up and
//! measures. (A module folder, so Cargo does not take it for a bench.)

/// `criterion_main!` for this file's `targets`: one group, one second of
/// warm-up and `secs` seconds of measurement per benchmark.
macro_rules! bench_main {
    (measure_secs = $secs:expr; targets = $($target:path),+ $(,)?) => {
        criterion::criterion_group! {
            name = benches;
            config = criterion::Criterion::default()
                .warm_up_time(std::time::Duration::from_secs(1))
                .measurement_time(std::time::Duration::from_secs($secs));
            targets = $($target),+
        }
        criterion::criterion_main!(benches);
    };
}
