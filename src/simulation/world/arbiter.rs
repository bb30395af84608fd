//! The arbiter as the world plays it: the real [`ArbiterBook`], with a slot for the primary's
//! connection and one for the backup's.
//!
//! A member's hello to the arbiter takes the slot of its role (the book learns who it sees), a
//! connection that breaks or goes quiet frees it (the member notices at once, the arbiter may
//! notice later), and a stand-down carried by a connection ends the activation it names. What
//! the arbiter answers is the real book's answer, delivered to the member on its arbiter queue.

use super::*;

impl World {
    // -----------------------------------------------------------------------------------------
    // The arbiter

    pub(crate) fn sync_book(&mut self) {
        self.book.sees_primary = self.slot_primary.is_some();
        self.book.sees_backup = self.slot_backup.is_some();
    }

    /// Member `i` says hello to the arbiter in its current role.
    pub(crate) fn arbiter_hello(&mut self, i: usize) -> Result<(), String> {
        let Some(role) = self.m[i].role() else {
            return Ok(());
        };
        let primary = match role {
            FailoverRole::Primary => true,
            FailoverRole::Backup => false,
            FailoverRole::Down => return Ok(()),
        };
        let epoch = self.m[i].epoch;
        if primary
            && (epoch < self.book_epoch || (epoch == self.book_epoch && self.book.backup_took_over))
        {
            // A former primary: it hears that the backup took over, and nothing else.
            self.push(
                i,
                Event::PartnerIsPrimary,
                Queue::Arbiter,
                Carrier::Local,
                None,
            );
            return Ok(());
        }
        if epoch > self.book_epoch {
            self.book_epoch = epoch;
            self.book = ArbiterBook::default();
        }
        let other = 1 - i;
        if primary {
            self.slot_primary = Some(i);
            if self.slot_backup == Some(i) {
                self.slot_backup = None;
            }
        } else {
            self.slot_backup = Some(i);
            if self.slot_primary == Some(i) {
                self.slot_primary = None;
            }
        }
        self.sync_book();
        if primary {
            let booked = self.m[i].booked;
            self.book.primary_mode(
                if booked.is_some() {
                    Mode::Arbiter
                } else {
                    Mode::Agent
                },
                booked.unwrap_or(0) as u64,
            );
        }
        self.m[i].arbiter = true;
        // A stand-down an earlier connection did not carry goes first.
        if !primary && let Some(activation) = self.m[i].owed_stand_down.take() {
            self.arbiter_stood_down(i, activation);
        }
        // The arbiter link reports the connection before anything the arbiter says.
        self.deliver(i, Event::ArbiterConnected, None)?;
        if primary {
            if self.slot_backup.is_some() {
                self.send_arbiter(i, Event::ArbiterSeesPartner(true), None);
            }
        } else {
            let sees = self.slot_primary.is_some();
            self.send_arbiter(i, Event::ArbiterSeesPartner(sees), None);
        }
        if self.slot_primary == Some(other) || self.slot_backup == Some(other) {
            self.send_arbiter(other, Event::ArbiterSeesPartner(true), None);
        }
        Ok(())
    }

    /// Member `i`'s connection to the arbiter ends (a cut, a crash, or a reconnection in a new
    /// role): the arbiter reacts, and `i` (if it runs) notices.
    pub(crate) fn drop_arbiter(&mut self, i: usize) {
        if !self.m[i].arbiter {
            return;
        }
        self.member_loses_arbiter(i);
        self.arbiter_loses_member(i);
    }

    /// Member `i` no longer hears the arbiter (and closes its side): what was on its way from
    /// the arbiter is lost, and `i` (if it runs) notices.
    pub(crate) fn member_loses_arbiter(&mut self, i: usize) {
        self.m[i].arbiter = false;
        self.inbox
            .retain(|d| !(d.to == i && d.carrier == Carrier::Arbiter));
        if self.m[i].up {
            self.push(i, Event::ArbiterLost, Queue::Arbiter, Carrier::Local, None);
        }
    }

    /// The arbiter notices that member `i`'s connection ended: it no longer sees it, and tells
    /// the other member so.
    pub(crate) fn arbiter_loses_member(&mut self, i: usize) {
        if self.slot_primary == Some(i) {
            self.slot_primary = None;
            self.sync_book();
            if let Some(b) = self.slot_backup {
                self.send_arbiter(b, Event::ArbiterSeesPartner(false), None);
            }
        } else if self.slot_backup == Some(i) {
            self.slot_backup = None;
            self.sync_book();
            // Telling the primary "I do not see the backup" books it as going on alone.
            let answer = self.book.ask_from_primary();
            if let Some(p) = self.slot_primary {
                self.send_arbiter(p, Event::from(answer), None);
            }
        }
    }

    pub(crate) fn arbiter_stood_down(&mut self, i: usize, activation: u8) {
        if self.slot_backup != Some(i) {
            return;
        }
        if self.legacy.stand_down_keeps_booking {
            if activation as u64 == self.book.booked_activation {
                self.book.primary_in_arbiter_mode = false;
            }
        } else {
            self.book.backup_stood_down(activation as u64);
        }
        // A backup that was never active has nothing to tell the primary.
        if let Some(p) = self.slot_primary
            && activation != 0
        {
            self.send_arbiter(p, Event::PartnerStoodDown, Some(activation));
        }
    }
}
