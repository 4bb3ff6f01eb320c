//! Wake-ups keyed by job id, for callers waiting on one job: `GET /v1/jobs/{id}?wait_s=N` waits
//! for the job to end, `GET /v1/jobs/{id}/logs?follow=true` for new output or the end. Whoever
//! changes a job (a completion, a cancel, a lapsed lease, a lost sandbox, a shipped chunk of
//! output) pulses it here; on Postgres the pulse also goes to the other replicas (`crate::bus`),
//! whose listeners pulse their own watchers.
//!
//! Nothing is kept for a job nobody watches: a job's entry lives as long as a [`Watcher`] of it,
//! and the last one dropped (its request answered, or its client gone) removes it. A pulse is a
//! counter bump, never data: followers read the output from the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What changed about a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pulse {
    /// New output was stored.
    Log,
    /// Its state changed (it may have ended).
    State,
}

impl Pulse {
    /// The name in a cross-replica notification.
    pub fn as_str(self) -> &'static str {
        match self {
            Pulse::Log => "log",
            Pulse::State => "state",
        }
    }

    pub fn parse(s: &str) -> Option<Pulse> {
        match s {
            "log" => Some(Pulse::Log),
            "state" => Some(Pulse::State),
            _ => None,
        }
    }
}

/// How many pulses of each kind a job has had since someone started watching it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Beats {
    log: u64,
    state: u64,
}

type Entries = Mutex<HashMap<String, watch::Sender<Beats>>>;

/// The registry of watched jobs (one per scheduler, in `App`).
#[derive(Default)]
pub struct JobWatch {
    entries: Arc<Entries>,
    watchers: Arc<AtomicI64>,
}

impl JobWatch {
    /// Starts watching `job`: pulses from now on wake the watcher.
    pub fn watch(&self, job: &str) -> Watcher {
        let rx = {
            let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(job.to_string())
                .or_insert_with(|| watch::channel(Beats::default()).0)
                .subscribe()
        };
        self.watchers.fetch_add(1, Ordering::Relaxed);
        let seen = *rx.borrow();
        Watcher {
            job: job.to_string(),
            seen,
            rx: Some(rx),
            entries: Arc::clone(&self.entries),
            watchers: Arc::clone(&self.watchers),
        }
    }

    /// Wakes this replica's watchers of `job`; nothing when there are none.
    pub fn pulse(&self, job: &str, pulse: Pulse) {
        let map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(job) {
            tx.send_modify(|b| match pulse {
                Pulse::Log => b.log += 1,
                Pulse::State => b.state += 1,
            });
        }
    }

    /// Watchers alive now.
    pub fn watchers(&self) -> i64 {
        self.watchers.load(Ordering::Relaxed)
    }

    /// Jobs with a watcher now.
    pub fn jobs(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One caller watching one job; stops watching when dropped.
pub struct Watcher {
    job: String,
    /// The pulses counted when the last wait returned (or watching began).
    seen: Beats,
    rx: Option<watch::Receiver<Beats>>,
    entries: Arc<Entries>,
    watchers: Arc<AtomicI64>,
}

impl Watcher {
    /// Waits for the next pulse of any kind since the last wait returned (or since watching
    /// began).
    pub async fn changed(&mut self) {
        self.next(|seen, now| seen != now).await
    }

    /// Waits for the next change of the job's state since the last wait returned.
    pub async fn state_changed(&mut self) {
        self.next(|seen, now| seen.state != now.state).await
    }

    async fn next(&mut self, wanted: impl Fn(&Beats, &Beats) -> bool) {
        let Some(rx) = self.rx.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            let now = *rx.borrow_and_update();
            if wanted(&self.seen, &now) {
                self.seen = now;
                return;
            }
            if rx.changed().await.is_err() {
                // The registry holds the sender while a receiver lives; never reached.
                return std::future::pending().await;
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.watchers.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Receivers are only made under this lock, so a count of 0 here means nobody watches.
        if map
            .get(&self.job)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            map.remove(&self.job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_pulse_wakes_the_watchers_of_its_job_only() {
        let w = JobWatch::default();
        let mut a = w.watch("a");
        let mut a2 = w.watch("a");
        let mut b = w.watch("b");
        assert_eq!((w.jobs(), w.watchers()), (2, 3));
        w.pulse("a", Pulse::State);
        // A pulse before the wait began still counts: nothing is lost between a read and a wait.
        tokio::time::timeout(Duration::from_secs(1), a.state_changed())
            .await
            .expect("a woke");
        tokio::time::timeout(Duration::from_secs(1), a2.changed())
            .await
            .expect("a2 woke");
        assert!(
            tokio::time::timeout(Duration::from_secs(1), b.changed())
                .await
                .is_err(),
            "b was not pulsed"
        );
        // Output alone does not end a wait for the state.
        w.pulse("a", Pulse::Log);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), a.state_changed())
                .await
                .is_err()
        );
        w.pulse("nobody", Pulse::State);
        assert_eq!(w.jobs(), 2, "a pulse for an unwatched job keeps nothing");
    }

    #[tokio::test]
    async fn the_last_watcher_gone_removes_its_job() {
        let w = JobWatch::default();
        let many: Vec<Watcher> = (0..1000)
            .map(|i| w.watch(&format!("j{}", i % 10)))
            .collect();
        assert_eq!((w.jobs(), w.watchers()), (10, 1000));
        drop(many);
        assert_eq!((w.jobs(), w.watchers()), (0, 0));
        // Dropped while waiting (a client gone mid-wait).
        let mut x = w.watch("x");
        let waiting = tokio::spawn(async move { x.state_changed().await });
        tokio::task::yield_now().await;
        waiting.abort();
        let _ = waiting.await;
        assert_eq!((w.jobs(), w.watchers()), (0, 0));
    }
}
