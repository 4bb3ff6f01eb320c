//! The peers' polling loops in the simulator (`keda`, `fly-autoscaler`): when each tenant's loop
//! ticks, and what the models read of a tenant.

use super::{Engine, EngineError, Kind};
use crate::peers::{self, KedaState};
use crate::policy::Policy;
use crate::workload::Ms;
use shoal_planner::SandboxView;

impl Engine<'_> {
    pub(super) fn ensure_poll(&mut self, t: u32) {
        let period = match self.policy {
            Policy::Keda => peers::KEDA_HPA_PERIOD_MS,
            Policy::FlyAutoscaler => peers::FLY_INTERVAL_MS,
            _ => return,
        };
        let phase = self.phase(t, period);
        let ten = &mut self.tenants[t as usize];
        let slot = match self.policy {
            Policy::Keda => &mut ten.keda.next_poll,
            _ => &mut ten.fly.next_poll,
        };
        if slot.is_some() {
            return;
        }
        // The next tick of this tenant's loop strictly after now.
        let k = (self.now - phase).div_euclid(period) + 1;
        let at = phase + k * period;
        *slot = Some(at);
        self.push(at, Kind::Poll, t, 0);
    }

    /// Each tenant's loop started at its own moment: a fixed, seeded phase.
    pub(crate) fn phase(&self, t: u32, period: Ms) -> Ms {
        let mut x = (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.opts.seed;
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 32;
        (x % period as u64) as Ms
    }

    pub(super) fn poll(&mut self, t: u32) -> Result<(), EngineError> {
        let again = match self.policy {
            Policy::Keda => {
                self.tenants[t as usize].keda.next_poll = None;
                peers::keda_pass(self, t)?
            }
            Policy::FlyAutoscaler => {
                self.tenants[t as usize].fly.next_poll = None;
                peers::fly_pass(self, t)?
            }
            _ => false,
        };
        if again {
            self.ensure_poll(t);
        }
        Ok(())
    }

    /// What the peers' models read of a tenant.
    pub(crate) fn demand(&self, t: u32) -> u32 {
        let ten = &self.tenants[t as usize];
        ten.queue.len() as u32 + ten.running
    }

    pub(crate) fn sandboxes(&self, t: u32) -> &[SandboxView] {
        &self.tenants[t as usize].pool().sandboxes
    }

    pub(crate) fn keda_state(&mut self, t: u32) -> &mut KedaState {
        &mut self.tenants[t as usize].keda
    }
}
