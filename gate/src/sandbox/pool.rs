//! A memory pool that remembers its high-water mark, so every job's meter record can carry
//! the peak memory its query really reserved.

use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::error::Result;
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// Wraps a pool and records the highest total reservation seen.
#[derive(Debug)]
pub struct PeakTrackingPool<P> {
    inner: P,
    peak: AtomicUsize,
}

impl<P: MemoryPool> PeakTrackingPool<P> {
    pub fn new(inner: P) -> Self {
        Self {
            inner,
            peak: AtomicUsize::new(0),
        }
    }

    /// Highest number of bytes reserved at once since the pool was made.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn note(&self) {
        self.peak
            .fetch_max(self.inner.reserved(), Ordering::Relaxed);
    }
}

impl<P> std::fmt::Display for PeakTrackingPool<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "veil-peak-tracking(peak={})",
            self.peak.load(Ordering::Relaxed)
        )
    }
}

impl<P: MemoryPool> MemoryPool for PeakTrackingPool<P> {
    fn name(&self) -> &str {
        "veil-peak-tracking"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.note();
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.inner.try_grow(reservation, additional)?;
        self.note();
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}
