//! The `process` provider: each sandbox is a `shoal-agent` child process (development only).
