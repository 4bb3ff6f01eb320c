//! Workloads: the jobs a simulation replays, read from and written to the contract's CSV
//! (`tenant,arrival_s,duration_s`, one row per job).

use std::collections::HashMap;
use std::fmt::Write as _;

/// Virtual milliseconds from the start of the workload.
pub type Ms = i64;

/// One job of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// Index into [`Workload::tenants`].
    pub tenant: u32,
    pub arrival_ms: Ms,
    pub duration_ms: Ms,
}

/// Jobs sorted by arrival, with tenant names interned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Workload {
    pub tenants: Vec<String>,
    pub jobs: Vec<Job>,
}

/// A workload file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("missing header `tenant,arrival_s,duration_s`")]
    Header,
}

fn secs_to_ms(s: &str, line: usize, what: &str) -> Result<Ms, WorkloadError> {
    let v: f64 = s.trim().parse().map_err(|_| WorkloadError::Parse {
        line,
        message: format!("bad {what} `{s}`"),
    })?;
    if !v.is_finite() || v < 0.0 {
        return Err(WorkloadError::Parse {
            line,
            message: format!("{what} must be a finite number >= 0, got `{s}`"),
        });
    }
    Ok((v * 1000.0).round() as Ms)
}

impl Workload {
    /// Builds a workload from `(tenant, arrival_ms, duration_ms)` rows in any order.
    pub fn from_rows<S: AsRef<str>>(rows: impl IntoIterator<Item = (S, Ms, Ms)>) -> Workload {
        let mut w = Workload::default();
        let mut ids: HashMap<String, u32> = HashMap::new();
        for (t, arrival_ms, duration_ms) in rows {
            let t = t.as_ref();
            let tenant = match ids.get(t) {
                Some(&i) => i,
                None => {
                    let i = w.tenants.len() as u32;
                    ids.insert(t.to_string(), i);
                    w.tenants.push(t.to_string());
                    i
                }
            };
            w.jobs.push(Job {
                tenant,
                arrival_ms,
                duration_ms,
            });
        }
        w.sort();
        w
    }

    /// Sorts jobs by arrival (stable, so equal arrivals keep file order).
    pub fn sort(&mut self) {
        self.jobs.sort_by_key(|j| j.arrival_ms);
    }

    /// Parses the contract's CSV.
    pub fn parse_csv(text: &str) -> Result<Workload, WorkloadError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            return Err(WorkloadError::Header);
        };
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        if cols != ["tenant", "arrival_s", "duration_s"] {
            return Err(WorkloadError::Header);
        }
        let mut rows = Vec::new();
        for (i, l) in lines {
            let line = i + 1;
            let mut f = l.split(',');
            let (Some(t), Some(a), Some(d), None) = (f.next(), f.next(), f.next(), f.next()) else {
                return Err(WorkloadError::Parse {
                    line,
                    message: "expected 3 fields".into(),
                });
            };
            let t = t.trim();
            if t.is_empty() {
                return Err(WorkloadError::Parse {
                    line,
                    message: "empty tenant".into(),
                });
            }
            rows.push((
                t.to_string(),
                secs_to_ms(a, line, "arrival_s")?,
                secs_to_ms(d, line, "duration_s")?,
            ));
        }
        Ok(Workload::from_rows(rows))
    }

    /// Writes the contract's CSV, times in seconds with millisecond precision.
    pub fn to_csv(&self) -> String {
        let mut s = String::with_capacity(self.jobs.len() * 24 + 32);
        s.push_str("tenant,arrival_s,duration_s\n");
        for j in &self.jobs {
            let _ = writeln!(
                s,
                "{},{},{}",
                self.tenants[j.tenant as usize],
                fmt_s(j.arrival_ms),
                fmt_s(j.duration_ms)
            );
        }
        s
    }

    /// Time of the last arrival.
    pub fn span_ms(&self) -> Ms {
        self.jobs.last().map_or(0, |j| j.arrival_ms)
    }
}

/// Seconds with up to three decimals, trailing zeros trimmed.
pub fn fmt_s(ms: Ms) -> String {
    if ms % 1000 == 0 {
        format!("{}", ms / 1000)
    } else {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        s.trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trips_and_sorts() {
        let text = "tenant,arrival_s,duration_s\nb,2.5,1\na,0,0.125\n";
        let w = Workload::parse_csv(text).unwrap();
        assert_eq!(
            w.jobs[0],
            Job {
                tenant: 1,
                arrival_ms: 0,
                duration_ms: 125
            }
        );
        assert_eq!(
            w.to_csv(),
            "tenant,arrival_s,duration_s\na,0,0.125\nb,2.5,1\n"
        );
        assert!(Workload::parse_csv("x,y\n").is_err());
        assert!(Workload::parse_csv("tenant,arrival_s,duration_s\na,-1,2\n").is_err());
    }
}
