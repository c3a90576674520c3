//! The per-call limits a driver cannot get around: one memory budget for everything the
//! call allocates, and WASI waits that never outlast the call's time limits.
//!
//! Why:
//! - wasmtime's stock `StoreLimits` caps each linear memory on its own and does not count
//!   tables at all, so a driver could grow a table to gigabytes of host memory, or use
//!   several memories each up to the limit. [`CallBudget`] sums every linear memory and
//!   every table (at its host size, [`TABLE_ELEMENT_HOST_BYTES`] per element) of the call's
//!   store against the one `memory` setting, and caps how many of each a store may create.
//! - The epoch callback only runs while guest code runs. A driver blocked in a WASI wait
//!   (`std::thread::sleep` is `wasi:io/poll` `pollable.block` on a monotonic-clock
//!   pollable) would never see it. [`link_bounded_poll`] replaces `wasi:io/poll`'s `poll`
//!   and `pollable.block` with versions that wait at most until the earlier of the call's
//!   two limits and then trap with [`super::host::DeadlineExceeded`]. Waiting is the driver's own time.

use std::time::Duration;

use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreContextMut};
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll as wasi_poll;

use super::host::HostState;

/// Host bytes one table element takes (wasmtime stores a pointer per element).
pub const TABLE_ELEMENT_HOST_BYTES: usize = std::mem::size_of::<usize>();
/// Core instances one call's store may create (a driver component has a handful: its module,
/// WASI shims and fix-ups); the number is fixed by the component, so this only refuses
/// components built to be heavy.
pub const MAX_INSTANCES_PER_CALL: usize = 32;
/// Linear memories one call's store may create (a driver has one; the budget is shared).
pub const MAX_MEMORIES_PER_CALL: usize = 4;
/// Tables one call's store may create.
pub const MAX_TABLES_PER_CALL: usize = 64;
/// The `wasi:io/poll` interface name the WASI linker defines (wasmtime-wasi 48 serves
/// `wasi:io@0.2.12`; components importing any 0.2.x are matched to it).
const WASI_POLL: &str = "wasi:io/poll@0.2.12";

/// A call tried to allocate past its memory budget.
#[derive(Debug)]
pub struct BudgetExceeded {
    /// What was growing.
    pub what: &'static str,
    /// Bytes the call would have held with the growth.
    pub wanted: usize,
    pub limit: usize,
}

impl std::fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "growing a {} to {} bytes in all is more than the call's budget of {}",
            self.what, self.wanted, self.limit
        )
    }
}

impl std::error::Error for BudgetExceeded {}

/// One memory budget for a call: all linear memories and tables of its store.
pub struct CallBudget {
    limit: usize,
    /// Bytes granted so far (memories at their byte size, tables at their host size).
    used: usize,
}

impl CallBudget {
    pub fn new(limit: usize) -> Self {
        CallBudget { limit, used: 0 }
    }

    /// Bytes the store's memories and tables hold (as granted).
    pub fn used(&self) -> usize {
        self.used
    }

    fn grow(
        &mut self,
        what: &'static str,
        current: usize,
        desired: usize,
    ) -> wasmtime::Result<bool> {
        let wanted = self.used.saturating_sub(current).saturating_add(desired);
        if wanted > self.limit {
            // An error, not `Ok(false)`: the call traps with a clear message rather than
            // carrying on with a failed `memory.grow`.
            return Err(wasmtime::Error::new(BudgetExceeded {
                what,
                wanted,
                limit: self.limit,
            }));
        }
        self.used = wanted;
        Ok(true)
    }
}

impl ResourceLimiter for CallBudget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow("linear memory", current, desired)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(
            "table",
            current.saturating_mul(TABLE_ELEMENT_HOST_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_HOST_BYTES),
        )
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES_PER_CALL
    }

    fn tables(&self) -> usize {
        MAX_TABLES_PER_CALL
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES_PER_CALL
    }
}

/// Replaces `wasi:io/poll`'s blocking functions (already linked by wasmtime-wasi) with ones
/// bounded by the call's limits.
pub(super) fn link_bounded_poll(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_POLL)?;
    poll.func_wrap(
        "poll",
        |mut store: StoreContextMut<'_, HostState>, (pollables,): (Vec<Resource<DynPollable>>,)| {
            let (allowance, limit) = store.data().wait_allowance();
            let table = store.data_mut().table_mut();
            let ready = bounded(
                allowance,
                <ResourceTable as wasi_poll::Host>::poll(table, pollables),
            )
            .ok_or(limit)?;
            Ok((ready?,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store: StoreContextMut<'_, HostState>, (pollable,): (Resource<DynPollable>,)| {
            let (allowance, limit) = store.data().wait_allowance();
            let table = store.data_mut().table_mut();
            bounded(
                allowance,
                <ResourceTable as wasi_poll::HostPollable>::block(table, pollable),
            )
            .ok_or(limit)??;
            Ok(())
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Runs `wait` (on wasmtime-wasi's runtime, as its own blocking calls do) for at most
/// `allowance`; `None` when it did not finish in time.
fn bounded<T>(allowance: Duration, wait: impl Future<Output = T>) -> Option<T> {
    wasmtime_wasi::runtime::in_tokio(
        async move { tokio::time::timeout(allowance, wait).await.ok() },
    )
}
