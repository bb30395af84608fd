//! An explorer of the failover protocol: every interleaving of steps of the simulation's
//! [`World`] up to a depth — two failover members, each driven by its own real
//! [`MemberCore`], an arbiter keeping an [`ArbiterBook`] per epoch, and the members' agents, in
//! a small world of links, crashes, restarts, messages in flight and a clock (see
//! [`crate::simulation::world`] for the world and its invariants).
//!
//! From a healthy pair it tries every interleaving of steps up to a depth (depth-first, with
//! fingerprints of the states already seen skipped) and checks the world's invariants after each
//! step. Where the simulation ([`crate::simulation`]) walks long random paths through the same
//! world, this explorer walks every short one.
//!
//! # Re-introducing old bugs
//!
//! The world's [`Legacy`] switches put back four bugs found in the member, to show that the
//! explorer finds them: a takeover that kept the backup's arbiter mode (the new primary showed
//! Arbiter Controlled that the arbiter never booked, and after a graceful handover no backup
//! could ever take over again), a stand-down that left a takeover booked at the arbiter (the old
//! primary could never start again), a stalled backup whose fresh rules were not told that its
//! arbiter link was still up (they never followed the primary into arbiter mode again), and a
//! stalled backup whose fresh rules heard of the lost primary before their settings (with No
//! Failover set, they asked the primary's agent). The last was found by this explorer once it
//! drove the real core: the model it drove before fed the settings first, as the driver's code
//! did not.
//!
//! [`MemberCore`]: crate::mirror::core::MemberCore
//! [`ArbiterBook`]: crate::mirror::failover::ArbiterBook
//! [`Legacy`]: crate::simulation::world::Legacy

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use crate::mirror::failover::{Event, Failover, FailoverRole, Mode};
use crate::simulation::world::{Budget, QOS, Step, World};

/// the first violation with the steps that led to it.
fn explore(start: World, depth: usize, budget: Budget) -> Result<usize, String> {
    // States seen are kept as 128-bit fingerprints, not whole worlds: a world holds two member
    // cores, and deep searches see tens of millions of states. Two different states sharing a
    // fingerprint (one chance in 2^128 per pair) would only cut a branch of the search short.
    let mut seen: HashSet<u128> = HashSet::new();
    let mut path: Vec<String> = Vec::new();
    fn go(
        world: &World,
        depth: usize,
        budget: Budget,
        seen: &mut HashSet<u128>,
        path: &mut Vec<String>,
    ) -> Result<(), String> {
        if depth == 0 || !seen.insert(fingerprint(world)) {
            return Ok(());
        }
        for step in world.steps(budget) {
            let mut next = world.clone();
            let label = match &step {
                Step::Deliver(i) => {
                    let d = &world.inbox[*i];
                    format!("deliver {:?} to {} ({:?})", d.event, d.to, d.queue)
                }
                other => format!("{other:?}"),
            };
            path.push(label);
            if let Err(why) = next.apply(&step) {
                return Err(format!("{why}\nafter:\n  {}", path.join("\n  ")));
            }
            go(&next, depth - 1, budget, seen, path)?;
            path.pop();
        }
        Ok(())
    }
    go(&start, depth, budget, &mut seen, &mut path)?;
    Ok(seen.len())
}

/// A 128-bit fingerprint of `world` (two 64-bit hashes of it, the second salted).
fn fingerprint(world: &World) -> u128 {
    let mut first = std::collections::hash_map::DefaultHasher::new();
    world.hash(&mut first);
    let mut second = std::collections::hash_map::DefaultHasher::new();
    0x5eed_u16.hash(&mut second);
    world.hash(&mut second);
    (u128::from(first.finish()) << 64) | u128::from(second.finish())
}

/// The search depth: `MIRRORLAB_EXPLORE_DEPTH` when set (deeper runs take minutes), else the
/// given default, which keeps the test to seconds.
fn depth(default: usize) -> usize {
    std::env::var("MIRRORLAB_EXPLORE_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(default)
}

/// Two faults and one write per search; `MIRRORLAB_EXPLORE_FAULTS` sets more faults (with a
/// second write).
fn budget() -> Budget {
    match std::env::var("MIRRORLAB_EXPLORE_FAULTS")
        .ok()
        .and_then(|f| f.parse().ok())
    {
        Some(faults) => Budget { faults, writes: 2 },
        None => Budget {
            faults: 2,
            writes: 1,
        },
    }
}

#[test]
fn explored_agent_mode_pair_keeps_the_invariants() {
    let depth = depth(9);
    let states =
        explore(World::healthy(false), depth, budget()).unwrap_or_else(|why| panic!("{why}"));
    println!("agent mode: {states} states to depth {depth}");
    assert!(states > 10_000, "explored only {states} states");
}

#[test]
fn explored_arbiter_mode_pair_keeps_the_invariants() {
    let depth = depth(8);
    let states =
        explore(World::healthy(true), depth, budget()).unwrap_or_else(|why| panic!("{why}"));
    println!("arbiter mode: {states} states to depth {depth}");
    assert!(states > 10_000, "explored only {states} states");
}

#[test]
fn explored_handovers_and_restarts_keep_the_invariants() {
    // From a pair where the first primary handed over and came back as the backup: the second
    // life of the mirror, where the roles are swapped and the epoch moved on.
    let mut world = World::healthy(true);
    for step in [Step::Shutdown(0), Step::Restart(0)] {
        world.apply(&step).unwrap();
        world.settle();
    }
    world.faults = 0;
    for step in [Step::Decide(0), Step::ConnectArbiter(1), Step::Connect] {
        world.apply(&step).unwrap();
        world.settle();
    }
    world.apply(&Step::ConnectArbiter(0)).unwrap();
    world.settle();
    world.apply(&Step::CatchUp).unwrap();
    world.settle();
    assert_eq!(world.primary(), Some(1), "{world:#?}");
    assert_eq!(
        (world.m[0].rules().mode(), world.m[1].rules().mode()),
        (Mode::Arbiter, Mode::Arbiter),
        "the second life is arbiter controlled again: {world:#?}"
    );
    let depth = depth(8);
    let states = explore(world, depth, budget()).unwrap_or_else(|why| panic!("{why}"));
    println!("after a handover: {states} states to depth {depth}");
    assert!(states > 10_000, "explored only {states} states");
}

#[test]
fn the_explorer_finds_a_takeover_that_keeps_the_old_arbiter_mode() {
    // The bug of 53b3b27: after a graceful handover the new primary kept showing Arbiter
    // Controlled, which the arbiter had booked for the old primary only; after the old primary
    // came back as its backup, no takeover was ever approved again.
    let mut world = World::healthy(true);
    world.legacy.takeover_keeps_mode = true;
    let why = explore(world, 6, budget()).expect_err("the explorer must find the bug");
    assert!(why.contains("shows Arbiter Controlled"), "{why}");
}

#[test]
fn the_explorer_finds_a_booked_takeover_nobody_carries_out() {
    // A backup that asked the arbiter, was granted the takeover and then could not carry it out
    // (No Failover was set meanwhile) stood down; if the stand-down does not cancel the
    // booking, the old primary can never start again.
    let mut world = World::healthy(true);
    world.legacy.stand_down_keeps_booking = true;
    let why = explore(world, 7, budget()).expect_err("the explorer must find the bug");
    assert!(why.contains("nobody carried out"), "{why}");
}

#[test]
fn the_explorer_finds_a_stalled_backup_that_forgets_its_arbiter_link() {
    // A backup whose process stalled started its rules afresh while its arbiter connection
    // stayed up and said nothing new: the rules believed the arbiter gone, never followed the
    // primary into arbiter mode again, and would not have asked the arbiter for a takeover.
    let mut world = World::healthy(true);
    world.legacy.stall_forgets_arbiter = true;
    let why = explore(world, 7, budget()).expect_err("the explorer must find the bug");
    assert!(why.contains("its rules believe it down"), "{why}");
}

#[test]
fn the_explorer_finds_a_broken_rule() {
    // A primary that went on alone (its backup no longer active) while the backup takes over on
    // a verdict it should never have been given: the checker must call it two writers.
    let mut world = World::healthy(true);
    *world.m[0].core.failover_mut().unwrap() = Failover::new(FailoverRole::Primary, QOS);
    world.link = false;
    world.lose_channel(false);
    world.inbox.clear();
    world.m[1]
        .core
        .failover_mut()
        .unwrap()
        .handle(0, Event::PartnerLost);
    assert!(world.acknowledges(0));
    let result = world.deliver(1, Event::ArbiterVerdict { take_over: true }, None);
    assert!(result.is_ok());
    assert_eq!(
        world.check(),
        Err("both members acknowledge writes".to_string())
    );
}

#[test]
fn the_explorer_finds_fresh_rules_that_hear_of_a_loss_before_their_settings() {
    // Found when this explorer began to drive the real member core: a backup whose process
    // stalled started fresh rules and told them first that it had lost its primary, and only
    // then its settings. With No Failover set (or its databases not ready), the rules believed
    // they might take over and asked the primary's agent — which forces a hung primary down,
    // leaving the mirror with no primary.
    let mut world = World::healthy(false);
    world.legacy.stall_before_settings = true;
    let why = explore(world, 4, budget()).expect_err("the explorer must find the bug");
    assert!(why.contains("may not take over"), "{why}");
}
