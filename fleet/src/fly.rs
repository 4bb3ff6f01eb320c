//! The `fly` provider: one Fly Machine per sandbox (see the fly issue).
