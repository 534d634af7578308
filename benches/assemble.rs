//! Assemble + decode of one series directory, timed (run through `bench/assemble.sh`, which
//! sets PETCT_BENCH_SERIES and compares with pydicom + numpy in the same run).

use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let Ok(dir) = std::env::var("PETCT_BENCH_SERIES") else {
        eprintln!("set PETCT_BENCH_SERIES to a folder of one series (bench/assemble.sh does)");
        return;
    };
    let rounds: usize = std::env::var("PETCT_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("series folder").map(|e| e.expect("entry").path()).collect();
    files.sort();
    let mut best = f64::MAX;
    let mut checksum = 0.0f64;
    for _ in 0..rounds {
        let t0 = Instant::now();
        let series = petct_node::assemble::assemble(&files).expect("assemble");
        best = best.min(t0.elapsed().as_secs_f64());
        checksum = series.volume.data().iter().map(|v| f64::from(*v)).sum();
    }
    println!("petct-node assemble+decode: {best:.3} s for {} files (checksum {checksum:.6e})", files.len());
}
