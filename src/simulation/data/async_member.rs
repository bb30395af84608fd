//! The async member's turns: saying hello to the failover member its receiver's decisions
//! choose, receiving from the one that welcomed it, losing the link (see the module above).

use crate::mirror::core::follow::{Ended, Target};

use super::hubs::member_info;
use super::wire::Link;
use super::{ASYNC, Data, io};

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
            // The primary's hub registers the link, as for a backup (see `wire`).
            let backup_end = self.stores[ASYNC].end();
            let p = &mut self.stores[primary];
            let registered = io(
                "register the async member",
                p.primary_hub().register(member_info(ASYNC)),
            )?;
            let committed = p.hub.committed_end();
            self.async_link = Some(Link::new(0, registered, &p.shared, backup_end, committed)?);
            self.async_follows = Some(primary);
        }
        // It applies what the primary said it committed (see `Data::deliver`).
        self.ship(primary, ASYNC)?;
        self.stores[ASYNC].apply()
    }

    /// The async member's link breaks: the hub it was registered with drops it (the hub is
    /// still the one it registered with: a restart or a takeover breaks the link first) —
    /// unless that member's host is frozen: it notices nothing, and holds the link until the
    /// async member's next hello replaces it (dropping a link wakes the writer, which a frozen
    /// host's must not be). A running member's writer, woken so, is waited for at once, as after
    /// every event.
    pub(crate) fn async_lost(&mut self) -> Result<(), String> {
        if let (Some(primary), Some(link)) = (self.async_follows, self.async_link.take())
            && !self.stores[primary].frozen
        {
            self.stores[primary]
                .hub
                .unregister(link.id, "the link broke");
            self.settle(primary)?;
        }
        if self.async_follows.take().is_some() {
            // It had been welcomed: the member it knows is the one to ask first again.
            self.async_follow.ended(Ended::Closed);
        }
        Ok(())
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
                None => self.async_lost()?,
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
