//! The Fly Machines emulator (see the fly issue).
