//! Latency percentiles and throughput of one workload run.

use std::time::Duration;

/// What one workload run measured.
#[derive(Clone, Debug)]
pub struct RunStats {
    /// Operations completed.
    pub operations: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Sorted per-operation latencies.
    pub latencies: Vec<Duration>,
}

impl RunStats {
    /// Builds the stats; sorts the latencies.
    pub fn new(
        operations: u64,
        bytes: u64,
        elapsed: Duration,
        mut latencies: Vec<Duration>,
    ) -> Self {
        latencies.sort_unstable();
        Self {
            operations,
            bytes,
            elapsed,
            latencies,
        }
    }

    /// Runs one after the other as one: operations, bytes, time and latencies added up.
    pub fn concat(runs: &[Self]) -> Self {
        Self::new(
            runs.iter().map(|r| r.operations).sum(),
            runs.iter().map(|r| r.bytes).sum(),
            runs.iter().map(|r| r.elapsed).sum(),
            runs.iter()
                .flat_map(|r| r.latencies.iter().copied())
                .collect(),
        )
    }

    /// Megabytes (10^6) per second.
    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    /// Operations per second.
    pub fn operations_per_second(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at quantile `q` (0.5 for the median).
    pub fn percentile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[index]
    }
}
