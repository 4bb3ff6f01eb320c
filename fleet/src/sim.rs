//! The `sim` provider: sandboxes as records on a virtual clock, for the policy simulator.
