//! The gate's lease on its assignment.
//!
//! Every command from the coordinator grants a lease (`GateCommand.lease_ms`, half the
//! coordinator's gate expiry). A gate that hears nothing for the whole lease fences itself: it
//! forgets its assignment and holds every record, and the control task attaches afresh so the
//! coordinator assigns it again. Otherwise a sidecar cut off from the coordinator for longer
//! than the gate expiry would go on admitting under an assignment the coordinator has moved
//! past — it forgets such a gate and may complete a cutover without it.

use std::sync::Arc;

use crate::gate::Gate;

/// Fences the gate whenever its lease runs out. Runs until aborted at shutdown (it holds the
/// gate, so the lease sender never goes away while it runs).
pub(crate) async fn enforce(gate: Arc<Gate>) {
    let mut renewed = gate.watch_lease();
    loop {
        let lease = *renewed.borrow_and_update();
        let Some(lease) = lease else {
            let _ = renewed.changed().await;
            continue;
        };
        tokio::select! {
            _ = renewed.changed() => {}
            () = tokio::time::sleep_until(lease.deadline().into()) => {
                // A renewal racing the deadline wins: `fence_if_expired` checks under the lock.
                gate.fence_if_expired(lease);
                let _ = renewed.changed().await;
            }
        }
    }
}
