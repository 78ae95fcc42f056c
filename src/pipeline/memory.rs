//! DecodedMemory: the bytes that frames in flight may take decoded (`server.max_decoded_mib`). A
//! frame leases its share from its header's dimensions before it is decoded, and keeps it while
//! any of its work exists; a frame that would pass the budget is refused, not queued.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::InspectError;
use crate::imaging::DecodedSize;

/// Leases are counted in KiB, so that a budget of terabytes still fits the semaphore's count.
const UNIT_BYTES: u64 = 1024;

#[derive(Debug)]
pub struct DecodedMemory {
    units: Arc<Semaphore>,
    budget_units: u64,
}

/// A frame's share of the budget; given back on drop.
#[derive(Debug)]
pub struct MemoryLease {
    _units: OwnedSemaphorePermit,
}

impl DecodedMemory {
    pub fn new(budget_bytes: u64) -> Self {
        let budget_units = (budget_bytes / UNIT_BYTES).min(Semaphore::MAX_PERMITS as u64);
        Self { units: Arc::new(Semaphore::new(budget_units as usize)), budget_units }
    }

    /// `bytes` more for the frame of `size`, or why not.
    pub fn lease(&self, size: DecodedSize, bytes: u64) -> Result<MemoryLease, InspectError> {
        let units = bytes.div_ceil(UNIT_BYTES);
        let (width, height) = (size.width, size.height);
        let mib = |units: u64| (units * UNIT_BYTES).div_ceil(1 << 20);
        if units > self.budget_units {
            let (needed_mib, budget_mib) = (mib(units), mib(self.budget_units));
            return Err(InspectError::FrameOverMemoryBudget { width, height, needed_mib, budget_mib });
        }
        // `units` fits u32: it is at most the budget, itself at most the semaphore's count.
        let asked = u32::try_from(units).unwrap_or(u32::MAX);
        self.units.clone().try_acquire_many_owned(asked).map(|units| MemoryLease { _units: units }).map_err(|_| {
            InspectError::DecodedMemory {
                width,
                height,
                needed_mib: mib(units),
                held_mib: mib(self.budget_units - self.units.available_permits() as u64),
                budget_mib: mib(self.budget_units),
            }
        })
    }

    /// Bytes leased now.
    pub fn held_bytes(&self) -> u64 {
        (self.budget_units - self.units.available_permits() as u64) * UNIT_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: DecodedSize = DecodedSize { width: 4000, height: 3000, peak_bytes: 36_000_000 };

    #[test]
    fn leases_stop_at_the_budget_and_come_back_on_drop() {
        let memory = DecodedMemory::new(100 << 20);
        let first = memory.lease(FRAME, 40 << 20).expect("first");
        let _second = memory.lease(FRAME, 40 << 20).expect("second");
        let refused = memory.lease(FRAME, 40 << 20).expect_err("third passes the budget");
        assert!(matches!(refused, InspectError::DecodedMemory { held_mib: 80, budget_mib: 100, .. }), "{refused}");
        assert!(refused.to_string().contains("server.max_decoded_mib = 100"), "{refused}");
        assert_eq!(memory.held_bytes(), 80 << 20);
        drop(first);
        let _third = memory.lease(FRAME, 40 << 20).expect("room again");
    }

    #[test]
    fn a_frame_larger_than_the_whole_budget_is_told_so() {
        let memory = DecodedMemory::new(16 << 20);
        let refused = memory.lease(FRAME, 40 << 20).expect_err("never fits");
        assert!(matches!(refused, InspectError::FrameOverMemoryBudget { needed_mib: 40, budget_mib: 16, .. }));
        assert_eq!(memory.held_bytes(), 0);
    }
}
