//! A bounded buffer that keeps the last bytes written to it: a command's output tail.

use std::collections::VecDeque;

/// Keeps at most `cap` bytes, dropping the oldest.
#[derive(Debug)]
pub struct Tail {
    cap: usize,
    buf: VecDeque<u8>,
    dropped: bool,
}

impl Tail {
    pub fn new(cap: usize) -> Self {
        Tail {
            cap,
            buf: VecDeque::with_capacity(cap.min(8192)),
            dropped: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        let bytes = if bytes.len() > self.cap {
            self.dropped = true;
            &bytes[bytes.len() - self.cap..]
        } else {
            bytes
        };
        let over = (self.buf.len() + bytes.len()).saturating_sub(self.cap);
        if over > 0 {
            self.dropped = true;
            self.buf.drain(..over);
        }
        self.buf.extend(bytes);
    }

    /// Whether anything was dropped.
    pub fn truncated(&self) -> bool {
        self.dropped
    }

    /// The kept bytes as text; a character cut at the start is replaced.
    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes() {
        let mut t = Tail::new(5);
        t.push(b"abc");
        assert_eq!((t.text().as_str(), t.truncated()), ("abc", false));
        t.push(b"defg");
        assert_eq!((t.text().as_str(), t.truncated()), ("cdefg", true));
        t.push(b"0123456789");
        assert_eq!(t.text(), "56789");
    }
}
