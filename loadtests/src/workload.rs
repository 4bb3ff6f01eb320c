//! Workloads: the jobs a simulation replays, read from and written to the contract's CSV
//! (`tenant,arrival_s,duration_s`, one row per job), with an optional fourth column `due`
//! (`1` or `0`): the job's arrival is known in advance, as a scheduled (cron) run's is.

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
    /// Known in advance (a scheduled run): a due-aware planner may wake a sandbox for it.
    pub due: bool,
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
    #[error("missing header `tenant,arrival_s,duration_s` (or `tenant,arrival_s,duration_s,due`)")]
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
                due: false,
            });
        }
        w.sort();
        w
    }

    /// Sorts jobs by arrival (stable, so equal arrivals keep file order).
    pub fn sort(&mut self) {
        self.jobs.sort_by_key(|j| j.arrival_ms);
    }

    /// Parses the contract's CSV (with or without the `due` column).
    pub fn parse_csv(text: &str) -> Result<Workload, WorkloadError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            return Err(WorkloadError::Header);
        };
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        let with_due = match cols.as_slice() {
            ["tenant", "arrival_s", "duration_s"] => false,
            ["tenant", "arrival_s", "duration_s", "due"] => true,
            _ => return Err(WorkloadError::Header),
        };
        let fields = if with_due { 4 } else { 3 };
        let mut rows = Vec::new();
        let mut due = Vec::new();
        for (i, l) in lines {
            let line = i + 1;
            let f: Vec<&str> = l.split(',').collect();
            if f.len() != fields {
                return Err(WorkloadError::Parse {
                    line,
                    message: format!("expected {fields} fields"),
                });
            }
            let t = f[0].trim();
            if t.is_empty() {
                return Err(WorkloadError::Parse {
                    line,
                    message: "empty tenant".into(),
                });
            }
            rows.push((
                t.to_string(),
                secs_to_ms(f[1], line, "arrival_s")?,
                secs_to_ms(f[2], line, "duration_s")?,
            ));
            due.push(match f.get(3).map(|d| d.trim()) {
                None | Some("0" | "false" | "") => false,
                Some("1" | "true") => true,
                Some(other) => {
                    return Err(WorkloadError::Parse {
                        line,
                        message: format!("due must be 1 or 0, got `{other}`"),
                    });
                }
            });
        }
        // `from_rows` sorts stably by arrival: sort the flags the same way.
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].1);
        let mut w = Workload::from_rows(rows);
        for (job, &i) in w.jobs.iter_mut().zip(&order) {
            job.due = due[i];
        }
        Ok(w)
    }

    /// Marks every job of the tenants `pred` picks as due (known in advance).
    pub fn mark_due(&mut self, pred: impl Fn(&str) -> bool) {
        let due: Vec<bool> = self.tenants.iter().map(|t| pred(t)).collect();
        for j in &mut self.jobs {
            j.due = due[j.tenant as usize];
        }
    }

    /// Writes the contract's CSV, times in seconds with millisecond precision.
    pub fn to_csv(&self) -> String {
        let mut s = String::with_capacity(self.jobs.len() * 24 + 32);
        let with_due = self.jobs.iter().any(|j| j.due);
        s.push_str(if with_due {
            "tenant,arrival_s,duration_s,due\n"
        } else {
            "tenant,arrival_s,duration_s\n"
        });
        for j in &self.jobs {
            let _ = write!(
                s,
                "{},{},{}",
                self.tenants[j.tenant as usize],
                fmt_s(j.arrival_ms),
                fmt_s(j.duration_ms)
            );
            s.push_str(match (with_due, j.due) {
                (false, _) => "\n",
                (true, true) => ",1\n",
                (true, false) => ",0\n",
            });
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
                duration_ms: 125,
                due: false,
            }
        );
        assert_eq!(
            w.to_csv(),
            "tenant,arrival_s,duration_s\na,0,0.125\nb,2.5,1\n"
        );
        assert!(Workload::parse_csv("x,y\n").is_err());
        assert!(Workload::parse_csv("tenant,arrival_s,duration_s\na,-1,2\n").is_err());
        // The `due` column: kept through sorting, written back only when some row is due.
        let text = "tenant,arrival_s,duration_s,due\ncron,60,1,1\nx,2,1,0\n";
        let w = Workload::parse_csv(text).unwrap();
        assert_eq!((w.jobs[0].due, w.jobs[1].due), (false, true));
        assert_eq!(
            w.to_csv(),
            "tenant,arrival_s,duration_s,due\nx,2,1,0\ncron,60,1,1\n"
        );
        assert!(Workload::parse_csv("tenant,arrival_s,duration_s,due\na,1,2,maybe\n").is_err());
        assert!(Workload::parse_csv("tenant,arrival_s,duration_s\na,1,2,1\n").is_err());
    }
}
