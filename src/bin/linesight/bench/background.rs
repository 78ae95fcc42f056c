//! A shared machine on purpose: busy threads in another process (`linesight busy`), so that the
//! bench measures the server on CPUs something else also wants.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BenchError;

/// The longest a background load runs, should the bench that started it die without stopping it.
pub const BUSY_LIMIT: Duration = Duration::from_secs(4 * 3600);

/// Keeps `threads` threads computing for `length` (what `linesight busy` runs).
pub fn busy(threads: usize, length: Duration) {
    let until = Instant::now() + length;
    let spinners: Vec<_> = (0..threads)
        .map(|seed| {
            std::thread::spawn(move || {
                let mut x = seed as u64 | 1;
                while Instant::now() < until {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
                    }
                }
            })
        })
        .collect();
    for spinner in spinners {
        let _ = spinner.join();
    }
}

/// Busy threads in another process, stopped when this is dropped.
pub struct BackgroundLoad(Child);

impl BackgroundLoad {
    /// `threads` busy threads (none for 0).
    pub fn start(threads: usize) -> Result<Option<Self>, BenchError> {
        if threads == 0 {
            return Ok(None);
        }
        let exe =
            std::env::current_exe().map_err(|e| BenchError::Background(format!("cannot find this executable: {e}")))?;
        let child = Command::new(exe)
            .args(["busy", "--threads", &threads.to_string(), "--seconds", &BUSY_LIMIT.as_secs().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Background(e.to_string()))?;
        Ok(Some(Self(child)))
    }
}

impl Drop for BackgroundLoad {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
