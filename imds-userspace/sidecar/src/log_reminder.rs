//! When to repeat a "still waiting" log line: at once when what is awaited
//! changes, then every so often while it stays the same, so a stuck pod's
//! log says why without one line per retry.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogReminder {
    every: Duration,
    last: Option<(String, Instant)>,
}

impl LogReminder {
    pub fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// Whether to log `message` now.
    pub fn due(&mut self, message: &str, now: Instant) -> bool {
        let due = match &self.last {
            Some((last, at)) => last != message || now.saturating_duration_since(*at) >= self.every,
            None => true,
        };
        if due {
            self.last = Some((message.to_owned(), now));
        }
        due
    }

    /// The wait is over: the next message is logged whatever it says.
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_changes_at_once_and_repeats_only_after_the_interval() {
        let start = Instant::now();
        let s = Duration::from_secs;
        let mut reminder = LogReminder::new(s(30));
        assert!(reminder.due("no interface", start));
        assert!(!reminder.due("no interface", start + s(1)));
        assert!(!reminder.due("no interface", start + s(29)));
        assert!(reminder.due("no interface", start + s(30)));
        assert!(!reminder.due("no interface", start + s(31)));
        assert!(reminder.due("port privileged", start + s(32)), "a new reason is logged at once");
        assert!(reminder.due("no interface", start + s(33)));
        reminder.reset();
        assert!(reminder.due("no interface", start + s(34)));
    }
}
