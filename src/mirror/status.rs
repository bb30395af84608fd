//! The status strings the Mirror Monitor shows, computed from facts by pure functions so every
//! rule is a unit test. The strings are IRIS's (see the behavioural reference, §2).

use crate::util::format_time;

/// Facts about one mirrored database on this member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseFacts {
    /// This member is the primary.
    pub primary: bool,
    /// The database is mounted here.
    pub mounted: bool,
    /// The local file is a copy of the mirrored database.
    pub is_copy: bool,
    /// The copy was activated here.
    pub activated: bool,
    /// Catchup is running.
    pub catchup_running: bool,
    /// The copy is older than the kept journal.
    pub obsolete: bool,
    /// Applying the journal stopped on an error.
    pub stopped: bool,
    /// It follows the journal live.
    pub dejournaling: bool,
}

/// The Status column of the Mirrored Databases list (`None`: listed as missing instead).
pub fn database_status(f: DatabaseFacts) -> Option<&'static str> {
    if !f.mounted {
        return Some("Database Dismounted");
    }
    if !f.is_copy {
        return None;
    }
    Some(if f.primary {
        "Normal"
    } else if f.obsolete {
        "Obsolete"
    } else if f.stopped {
        "Dejournaling Stopped"
    } else if !f.activated {
        "Needs Activation"
    } else if f.catchup_running {
        "Catchup Running"
    } else if f.dejournaling {
        "Dejournaling"
    } else {
        "Needs Catchup"
    })
}

/// `<time> behind` for a lag in milliseconds: `2 seconds behind`, `3 minutes behind`.
pub fn behind(lag_ms: i64) -> String {
    let s = (lag_ms.max(0) / 1000) as u64;
    let text = match s {
        0..=1 => "1 second".to_string(),
        2..=119 => format!("{s} seconds"),
        120..=7199 => format!("{} minutes", s / 60),
        _ => format!("{} hours", s / 3600),
    };
    format!("{text} behind")
}

/// `Disconnected on <time>`.
pub fn disconnected_on(ms: i64) -> String {
    format!("Disconnected on {}", format_time(ms))
}

/// Facts about another member's journal transfer, as this member sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// This row is the primary.
    Primary,
    /// Connected and the primary waits for its acknowledgements.
    Active,
    /// Connected and holding everything, not (yet) active.
    CaughtUp,
    /// Connected, missing records committed since the given time.
    Behind {
        /// Commit time of the oldest record it lacks.
        since_ms: i64,
        /// Now.
        now_ms: i64,
    },
    /// Not connected since the given time.
    Disconnected(i64),
}

/// The Journal Transfer column.
pub fn journal_transfer(t: Transfer) -> String {
    match t {
        Transfer::Primary => "N/A".into(),
        Transfer::Active => "Active".into(),
        Transfer::CaughtUp => "Caught up".into(),
        Transfer::Behind { since_ms, now_ms } => behind(now_ms - since_ms),
        Transfer::Disconnected(at) => disconnected_on(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> DatabaseFacts {
        DatabaseFacts {
            primary: false,
            mounted: true,
            is_copy: true,
            activated: false,
            catchup_running: false,
            obsolete: false,
            stopped: false,
            dejournaling: false,
        }
    }

    #[test]
    fn database_statuses_follow_the_lifecycle() {
        assert_eq!(
            database_status(DatabaseFacts {
                primary: true,
                ..facts()
            }),
            Some("Normal")
        );
        assert_eq!(
            database_status(DatabaseFacts {
                mounted: false,
                ..facts()
            }),
            Some("Database Dismounted")
        );
        assert_eq!(
            database_status(DatabaseFacts {
                is_copy: false,
                ..facts()
            }),
            None
        );
        assert_eq!(database_status(facts()), Some("Needs Activation"));
        let activated = DatabaseFacts {
            activated: true,
            ..facts()
        };
        assert_eq!(database_status(activated), Some("Needs Catchup"));
        assert_eq!(
            database_status(DatabaseFacts {
                catchup_running: true,
                ..activated
            }),
            Some("Catchup Running")
        );
        assert_eq!(
            database_status(DatabaseFacts {
                dejournaling: true,
                ..activated
            }),
            Some("Dejournaling")
        );
        assert_eq!(
            database_status(DatabaseFacts {
                obsolete: true,
                ..activated
            }),
            Some("Obsolete")
        );
    }

    #[test]
    fn transfer_strings() {
        assert_eq!(journal_transfer(Transfer::Primary), "N/A");
        assert_eq!(journal_transfer(Transfer::Active), "Active");
        assert_eq!(journal_transfer(Transfer::CaughtUp), "Caught up");
        assert_eq!(
            journal_transfer(Transfer::Behind {
                since_ms: 0,
                now_ms: 5_000
            }),
            "5 seconds behind"
        );
        assert_eq!(
            journal_transfer(Transfer::Behind {
                since_ms: 0,
                now_ms: 600_000
            }),
            "10 minutes behind"
        );
        assert!(
            journal_transfer(Transfer::Disconnected(0)).starts_with("Disconnected on 1970-01-01")
        );
    }
}
