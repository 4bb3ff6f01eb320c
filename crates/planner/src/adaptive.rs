//! The adaptive idle policy (see the simulator issue).
