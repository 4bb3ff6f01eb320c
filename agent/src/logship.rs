//! Ships a running command's output to the scheduler while it runs: stdout and stderr go into one
//! bounded buffer in the order they are read, and a shipper sends what is buffered at least once
//! a second (at once when a full chunk is waiting), in chunks of at most
//! [`LOG_CHUNK_BYTES`](shoal_protocol::LOG_CHUNK_BYTES), each at its offset in the attempt's
//! output so that a chunk sent again is stored once.
//!
//! The buffer holds at most the bytes the scheduler keeps per job (its `log_max_bytes`, capped):
//! when the command writes faster than the scheduler takes it, the oldest unshipped bytes are
//! dropped, as the scheduler would drop them anyway, and the jump in offsets tells the scheduler
//! how much was left out. So a command printing hundreds of megabytes costs the agent no more
//! memory than the buffer.

use crate::client::{Client, StaleLease};
use shoal_protocol::{LOG_CHUNK_BYTES, LOG_SHIP_EVERY_MS};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The most output an agent holds unshipped, whatever the scheduler keeps.
pub const MAX_BUFFER: usize = 8 * 1024 * 1024;
/// The least, so that a burst between two shipments is not cut short.
pub const MIN_BUFFER: usize = 64 * 1024;

/// Output written and not shipped yet.
#[derive(Debug)]
struct Pending {
    bytes: VecDeque<u8>,
    /// The offset of `bytes[0]` in the attempt's output.
    offset: u64,
    cap: usize,
    /// The command's output has ended: nothing more will be pushed.
    closed: bool,
}

/// The command's output on its way to the scheduler.
#[derive(Debug)]
pub struct LogBuffer {
    pending: Mutex<Pending>,
    /// Wakes the shipper when a full chunk is waiting or the output ended.
    ready: Notify,
}

impl LogBuffer {
    /// A buffer for a scheduler that keeps `log_max_bytes` per job (unknown: the most).
    pub fn new(log_max_bytes: Option<u64>) -> Arc<Self> {
        let cap = log_max_bytes
            .map_or(MAX_BUFFER, |m| usize::try_from(m).unwrap_or(MAX_BUFFER))
            .clamp(MIN_BUFFER, MAX_BUFFER);
        Arc::new(LogBuffer {
            pending: Mutex::new(Pending {
                bytes: VecDeque::new(),
                offset: 0,
                cap,
                closed: false,
            }),
            ready: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds output as it was read; drops the oldest unshipped bytes past the buffer's size.
    pub fn push(&self, data: &[u8]) {
        let mut p = self.lock();
        if p.closed {
            return;
        }
        let cap = p.cap;
        let data = if data.len() > cap {
            p.offset += p.bytes.len() as u64 + (data.len() - cap) as u64;
            p.bytes.clear();
            &data[data.len() - cap..]
        } else {
            data
        };
        let over = (p.bytes.len() + data.len()).saturating_sub(cap);
        if over > 0 {
            p.bytes.drain(..over);
            p.offset += over as u64;
        }
        p.bytes.extend(data);
        let full = p.bytes.len() >= LOG_CHUNK_BYTES;
        drop(p);
        if full {
            self.ready.notify_one();
        }
    }

    /// The output has ended; the shipper sends what is left and stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// The next chunk to send (its offset and bytes, taken out of the buffer), and whether the
    /// output has ended.
    fn take(&self) -> (Option<(u64, Vec<u8>)>, bool) {
        let mut p = self.lock();
        let closed = p.closed;
        if p.bytes.is_empty() {
            return (None, closed);
        }
        let n = p.bytes.len().min(LOG_CHUNK_BYTES);
        let chunk: Vec<u8> = p.bytes.drain(..n).collect();
        let offset = p.offset;
        p.offset += n as u64;
        (Some((offset, chunk)), closed)
    }

    fn has_full_chunk(&self) -> bool {
        let p = self.lock();
        p.bytes.len() >= LOG_CHUNK_BYTES || p.closed
    }
}

/// Sends the buffer's output for the job under its lease until the output ends and everything is
/// sent, or the scheduler says the lease is no longer the job's. A chunk that cannot be sent after
/// a few tries is given up (the offsets tell the scheduler it is missing).
pub async fn ship(client: Client, job_id: String, lease_id: String, log: Arc<LogBuffer>) {
    let every = Duration::from_millis(LOG_SHIP_EVERY_MS);
    loop {
        let ready = log.ready.notified();
        tokio::pin!(ready);
        ready.as_mut().enable();
        if !log.has_full_chunk() {
            tokio::select! {
                _ = &mut ready => {}
                _ = tokio::time::sleep(every) => {}
            }
        }
        // Send everything that is buffered now, a chunk at a time.
        loop {
            let (chunk, closed) = log.take();
            let Some((offset, bytes)) = chunk else {
                if closed {
                    return;
                }
                break;
            };
            if send(&client, &job_id, &lease_id, offset, bytes)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Sends one chunk, retrying a few times; `Err` when the lease has moved on.
async fn send(
    client: &Client,
    job_id: &str,
    lease_id: &str,
    offset: u64,
    bytes: Vec<u8>,
) -> Result<(), StaleLease> {
    let mut wait = Duration::from_millis(100);
    for _ in 0..5 {
        match client.log(job_id, lease_id, offset, bytes.clone()).await {
            Ok(r) => return r,
            Err(e) => {
                tracing::warn!(job = %job_id, error = %format!("{e:#}"), "shipping output failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(log: &LogBuffer) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        while let (Some(c), _) = log.take() {
            out.push(c);
        }
        out
    }

    #[test]
    fn keeps_order_and_offsets_and_drops_the_oldest_past_its_size() {
        let log = LogBuffer::new(Some(10));
        assert_eq!(log.lock().cap, MIN_BUFFER);
        log.push(b"out ");
        log.push(b"err ");
        assert_eq!(drain(&log), vec![(0, b"out err ".to_vec())]);
        log.push(b"more");
        assert_eq!(drain(&log), vec![(8, b"more".to_vec())]);

        // Past the buffer's size the oldest unshipped bytes go; the offset jumps past them.
        let big = vec![b'x'; MIN_BUFFER + 100];
        log.push(b"lost");
        log.push(&big);
        let chunks = drain(&log);
        assert_eq!(chunks[0].0, 12 + 4 + 100);
        assert_eq!(
            chunks.iter().map(|c| c.1.len()).sum::<usize>(),
            MIN_BUFFER,
            "the buffer never holds more than its size"
        );
        log.push(&vec![b'y'; MIN_BUFFER - 1]);
        log.push(b"zz");
        let chunks = drain(&log);
        assert_eq!(chunks[0].0, 12 + 4 + big.len() as u64 + 1);
        assert!(chunks.last().unwrap().1.ends_with(b"yzz"));
    }

    #[test]
    fn chunks_are_bounded_and_a_closed_buffer_takes_nothing_more() {
        let log = LogBuffer::new(None);
        log.push(&vec![b'a'; LOG_CHUNK_BYTES * 2 + 5]);
        assert!(log.has_full_chunk());
        let chunks = drain(&log);
        assert_eq!(
            chunks.iter().map(|c| c.1.len()).collect::<Vec<_>>(),
            [LOG_CHUNK_BYTES, LOG_CHUNK_BYTES, 5]
        );
        assert_eq!(chunks[2].0, 2 * LOG_CHUNK_BYTES as u64);
        log.close();
        log.push(b"late");
        assert_eq!(log.take(), (None, true));
    }
}
