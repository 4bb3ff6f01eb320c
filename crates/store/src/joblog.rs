//! A job's output log as the store keeps it, the pure part: where an agent's chunk goes and what
//! is trimmed. Both backends read the head row, ask [`plan_append`] what to write, and write it
//! in the same transaction; the rules live here once.
//!
//! Offsets count the bytes of the job's output stream, kept or dropped, from 0. Each attempt's
//! agent numbers its own chunks from 0 in its attempt's stream, so a chunk sent twice (its answer
//! was lost) is recognised and stored once, and bytes an agent could not ship (its buffer was
//! full) are noted in the log rather than silently missing.

use std::borrow::Cow;

/// Where a job's log stands (the `job_log_heads` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    /// The offset of the oldest byte kept.
    pub start: u64,
    /// Bytes written in all: the offset the next chunk starts at.
    pub end: u64,
    /// The lease whose output is being appended.
    pub lease_id: String,
    /// How far into that lease's own stream its chunks have reached.
    pub lease_pos: u64,
}

/// What to store for one shipped chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogWrite<'a> {
    /// The offset the stored bytes start at.
    pub at: u64,
    /// The bytes to store.
    pub bytes: Cow<'a, [u8]>,
    /// The head afterwards; chunks ending at or before `head.start` are deleted, and one that
    /// straddles it keeps only its bytes from `head.start` on.
    pub head: LogHead,
}

/// Most chunks one read fetches.
pub const READ_CHUNKS: i64 = 1024;

/// The note stored where an agent could not ship `n` bytes of output.
pub fn gap_note(n: u64) -> String {
    format!("\n[shoal: {n} bytes of output were not shipped]\n")
}

/// What to write when the agent holding `lease_id` ships `data` at `offset` of its attempt's
/// stream, keeping at most `max_bytes` (at least 1). `None` when every byte was stored before.
pub fn plan_append<'a>(
    head: Option<&LogHead>,
    lease_id: &str,
    offset: u64,
    data: &'a [u8],
    max_bytes: u64,
) -> Option<LogWrite<'a>> {
    let max_bytes = max_bytes.max(1);
    let (start, end, pos) = match head {
        Some(h) if h.lease_id == lease_id => (h.start, h.end, h.lease_pos),
        // A new attempt's stream continues the job's log.
        Some(h) => (h.start, h.end, 0),
        None => (0, 0, 0),
    };
    let data_end = offset.saturating_add(data.len() as u64);
    if data_end <= pos {
        return None;
    }
    // Part of the chunk may have been stored already; `data_end > pos` bounds the skip.
    let skip = usize::try_from(pos.saturating_sub(offset)).unwrap_or(data.len());
    let fresh = &data[skip.min(data.len())..];
    let gap = offset.saturating_sub(pos);
    let bytes: Cow<'a, [u8]> = if gap > 0 {
        let mut v = gap_note(gap).into_bytes();
        v.extend_from_slice(fresh);
        Cow::Owned(v)
    } else {
        Cow::Borrowed(fresh)
    };
    let len = bytes.len() as u64;
    let cut = len.saturating_sub(max_bytes);
    let bytes = match bytes {
        Cow::Borrowed(b) => Cow::Borrowed(&b[cut as usize..]),
        Cow::Owned(mut v) => {
            v.drain(..cut as usize);
            Cow::Owned(v)
        }
    };
    let new_end = end.saturating_add(len);
    Some(LogWrite {
        at: end.saturating_add(cut),
        bytes,
        head: LogHead {
            start: start.max(new_end.saturating_sub(max_bytes)),
            end: new_end,
            lease_id: lease_id.to_string(),
            lease_pos: data_end,
        },
    })
}

/// Where a read of a log holding `start..end` (absent: nothing yet) begins when asked for `from`
/// on: `Ok(offset)` to read chunks from, or `Err(slice)`, the answer when nothing is to be read.
pub fn read_from(head: Option<(u64, u64)>, from: u64) -> Result<u64, crate::LogSlice> {
    let Some((start, end)) = head else {
        return Err(crate::LogSlice::default());
    };
    let from = from.max(start);
    if from >= end {
        return Err(crate::LogSlice {
            start,
            end,
            at: end,
            data: Vec::new(),
        });
    }
    Ok(from)
}

/// Joins stored chunks (`(offset, bytes)`, in offset order) into at most `limit` bytes from
/// `from` on; answers the offset the bytes start at and the bytes.
pub fn join_chunks(chunks: Vec<(u64, Vec<u8>)>, from: u64, limit: usize) -> (u64, Vec<u8>) {
    let mut out: Vec<u8> = Vec::new();
    let mut at = None;
    for (offset, data) in chunks {
        let end = offset.saturating_add(data.len() as u64);
        if end <= from {
            continue;
        }
        let skip = from.saturating_sub(offset) as usize;
        if at.is_none() {
            at = Some(offset.max(from));
        }
        let room = limit - out.len();
        let part = &data[skip.min(data.len())..];
        out.extend_from_slice(&part[..part.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    (at.unwrap_or(from), out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Applies the steps as a backend does, on chunks in memory.
    fn replay(steps: &[(&str, u64, &[u8])], max: u64) -> (Vec<(u64, Vec<u8>)>, Option<LogHead>) {
        let mut chunks: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut head: Option<LogHead> = None;
        for (lease, offset, data) in steps {
            if let Some(w) = plan_append(head.as_ref(), lease, *offset, data, max) {
                chunks.push((w.at, w.bytes.into_owned()));
                let start = w.head.start;
                chunks.retain(|(o, d)| o + d.len() as u64 > start);
                for (o, d) in chunks.iter_mut() {
                    if *o < start {
                        d.drain(..(start - *o) as usize);
                        *o = start;
                    }
                }
                head = Some(w.head);
            }
        }
        (chunks, head)
    }

    fn kept(chunks: &[(u64, Vec<u8>)], head: &Option<LogHead>) -> Vec<u8> {
        let from = head.as_ref().map_or(0, |h| h.start);
        join_chunks(chunks.to_vec(), from, usize::MAX).1
    }

    #[test]
    fn resent_chunks_are_stored_once_and_attempts_continue_the_log() {
        let (c, h) = replay(
            &[
                ("l1", 0, b"hello "),
                ("l1", 0, b"hello "),
                ("l1", 3, b"lo world"),
                ("l2", 0, b"!"),
            ],
            100,
        );
        assert_eq!(kept(&c, &h), b"hello world!");
        assert_eq!(h.unwrap().end, 12);
    }

    #[test]
    fn a_gap_is_noted_and_the_oldest_bytes_go_first() {
        let (c, h) = replay(&[("l", 0, b"ab"), ("l", 5, b"cd")], 1000);
        let mut want = b"ab".to_vec();
        want.extend_from_slice(gap_note(3).as_bytes());
        want.extend_from_slice(b"cd");
        assert_eq!(kept(&c, &h), want);

        let (c, h) = replay(&[("l", 0, b"0123456789"), ("l", 10, b"abc")], 4);
        assert_eq!(kept(&c, &h), b"9abc");
        let h = h.unwrap();
        assert_eq!((h.start, h.end), (9, 13));
        let (c, h) = replay(&[("l", 0, b"0123456789")], 4);
        assert_eq!(c, vec![(6, b"6789".to_vec())]);
        assert_eq!(kept(&c, &h), b"6789");
    }

    #[test]
    fn reads_start_where_asked_and_stop_at_the_limit() {
        let chunks = vec![(10, b"abcd".to_vec()), (14, b"efgh".to_vec())];
        assert_eq!(join_chunks(chunks.clone(), 12, 3), (12, b"cde".to_vec()));
        assert_eq!(
            join_chunks(chunks.clone(), 0, 100),
            (10, b"abcdefgh".to_vec())
        );
        assert_eq!(join_chunks(chunks, 18, 100), (18, vec![]));
    }

    proptest! {
        /// Whatever the chunking, resends and limit, the log keeps exactly the newest `max`
        /// bytes of what the agents wrote, and its head counts every byte.
        #[test]
        fn keeps_the_newest_bytes(
            text in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..12),
            resend in proptest::collection::vec(any::<bool>(), 12),
            max in 1u64..200,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.push(0);
            cuts.push(text.len());
            cuts.sort_unstable();
            cuts.dedup();
            let mut steps: Vec<(&str, u64, &[u8])> = Vec::new();
            for (i, w) in cuts.windows(2).enumerate() {
                let part = &text[w[0]..w[1]];
                steps.push(("l", w[0] as u64, part));
                if resend[i % resend.len()] {
                    steps.push(("l", w[0] as u64, part));
                }
            }
            let (chunks, head) = replay(&steps, max);
            let keep = text.len().saturating_sub(max as usize);
            prop_assert_eq!(kept(&chunks, &head), text[keep..].to_vec());
            prop_assert_eq!(head.map_or(0, |h| h.end), text.len() as u64);
        }
    }
}
