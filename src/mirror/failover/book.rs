//! The arbiter's book of one mirror (see the essay of [`super`], "Why the arbiter keeps a
//! book"): what the arbiter sees, and what it has answered — each answer is also a record, so
//! the two failover members' questions never both win. Pure: the arbiter process
//! ([`crate::arbiter`]) keeps one per mirror and answers from it, and the explorer in the tests
//! models the arbiter with it (the explorer and the simulation too).

use super::{Event, Mode};

/// The arbiter's record of one mirror: what it sees, and what it has answered.
///
/// Answers are records (see the module essay): "I do not see the backup" books the primary as
/// alone; "take over" books the takeover. The arbiter process keeps one book per mirror.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ArbiterBook {
    /// Connected to the primary.
    pub sees_primary: bool,
    /// Connected to the backup.
    pub sees_backup: bool,
    /// The primary told it it is in arbiter mode (and has not gone on alone since).
    pub primary_in_arbiter_mode: bool,
    /// The backup's activation the primary booked arbiter mode with: only that activation's
    /// stand-down ends it (an older one, relayed late, must not end a newer booking).
    pub booked_activation: u64,
    /// The backup was told to take over.
    pub backup_took_over: bool,
}

/// What the arbiter tells the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToPrimary {
    /// Whether it sees the backup (`false`: booked as going on alone).
    SeesBackup(bool),
    /// The backup took over: stop.
    BackupTookOver,
}

/// What the arbiter's answer to a primary means to its rules.
impl From<ToPrimary> for Event {
    fn from(answer: ToPrimary) -> Event {
        match answer {
            ToPrimary::SeesBackup(sees) => Event::ArbiterSeesPartner(sees),
            ToPrimary::BackupTookOver => Event::PartnerIsPrimary,
        }
    }
}

impl ArbiterBook {
    /// The primary reports its mode, booked with the backup's activation it holds.
    pub fn primary_mode(&mut self, mode: Mode, activation: u64) {
        self.primary_in_arbiter_mode = mode == Mode::Arbiter;
        self.booked_activation = activation;
    }

    /// The primary asks whether the arbiter sees the backup (or the arbiter reports it).
    pub fn ask_from_primary(&mut self) -> ToPrimary {
        if self.backup_took_over {
            ToPrimary::BackupTookOver
        } else if self.sees_backup {
            ToPrimary::SeesBackup(true)
        } else {
            self.primary_in_arbiter_mode = false;
            ToPrimary::SeesBackup(false)
        }
    }

    /// The backup asks whether it may take over. A takeover once booked stays granted: a
    /// backup whose answer was lost with its connection asks again and hears the same.
    pub fn ask_from_backup(&mut self) -> bool {
        if self.backup_took_over {
            return true;
        }
        if !self.sees_primary && self.primary_in_arbiter_mode {
            self.backup_took_over = true;
            self.primary_in_arbiter_mode = false;
            true
        } else {
            false
        }
    }

    /// The backup stood down, ending `activation`: it is no longer an active backup, so the
    /// arbiter mode booked with that activation ends (it cannot take over through the arbiter
    /// any more), and a takeover booked for it that it did not carry out (it was not allowed
    /// to, or it failed) is cancelled — the old primary may resume.
    pub fn backup_stood_down(&mut self, activation: u64) {
        if activation == self.booked_activation {
            self.primary_in_arbiter_mode = false;
        }
        self.backup_took_over = false;
    }
}
