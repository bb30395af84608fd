//! The async member's turns: saying hello to the failover member its receiver's decisions
//! choose, receiving from the one that welcomed it, losing the link (see the module above).

use crate::mirror::core::follow::{Ended, Target};

use super::{ASYNC, Data};

impl Data {
    /// The async member receives what primary `primary` has (after a hello, when its link is
    /// new) and applies what the primary committed. It never counts for an acknowledgement.
    /// `epoch` is the primary's: a stale one (from an older epoch than the async member's
    /// records) turns it away, and it receives nothing.
    pub(crate) fn async_receives(&mut self, primary: usize, epoch: u8) -> Result<(), String> {
        if self.async_follows != Some(primary) {
            if !self.cut_at_hello(primary, ASYNC, epoch)? {
                return Ok(());
            }
            self.async_follows = Some(primary);
        }
        self.ship(primary, ASYNC)?;
        self.stores[ASYNC].committed = self.stores[primary].committed;
        self.stores[ASYNC].apply()
    }

    /// The async member's link breaks.
    pub(crate) fn async_lost(&mut self) {
        if self.async_follows.take().is_some() {
            // It had been welcomed: the member it knows is the one to ask first again.
            self.async_follow.ended(Ended::Closed);
        }
    }

    /// The async member's turn. Following a failover member, it receives from it — or its link
    /// breaks, when that member no longer runs as primary. Following none, it says hello to the
    /// member its receiver's decisions choose ([`Follow::target`]: the one it knows as the
    /// primary, then the failover members in turn); a member that does not run as primary, or
    /// turns it away, is a failed attempt. `primaries[i]` is failover member `i`'s epoch while
    /// it runs as primary. Returns the member it tried or received from.
    ///
    /// [`Follow::target`]: crate::mirror::core::follow::Follow::target
    pub(crate) fn async_turn(&mut self, primaries: [Option<u8>; 2]) -> Result<usize, String> {
        if let Some(p) = self.async_follows {
            match primaries[p] {
                Some(epoch) => self.async_receives(p, epoch)?,
                None => self.async_lost(),
            }
            return Ok(p);
        }
        let target = match self
            .async_follow
            .target(true, Some(self.async_knows), &["A", "B"])
        {
            Target::Primary => self.async_knows,
            Target::Member(i) => i,
        };
        if let Some(epoch) = primaries[target] {
            self.async_receives(target, epoch)?;
        }
        if self.async_follows == Some(target) {
            self.async_knows = target;
        } else {
            self.async_follow.ended(Ended::Failed);
        }
        Ok(target)
    }

    /// The failover member the async member follows now, if any.
    pub(crate) fn async_follows(&self) -> Option<usize> {
        self.async_follows
    }
}
