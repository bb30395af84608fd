//! The failover rules, one test per rule of the behavioural reference (§4: the modes, the trouble
//! state, active and non-active backups, No Failover); every row of the lost-connection matrix
//! and every item of the outage list as a readable script (see `scripts`); then an explorer that
//! checks the mirror's invariants over every interleaving of faults up to a depth (see
//! `explorer`).

use super::*;
use crate::journal::Epoch;

mod explorer;
mod scripts;

const QOS: u64 = 8_000;

/// Feeds `events` at time `now` and returns every action, in order.
fn feed(member: &mut Failover, now: u64, events: &[Event]) -> Vec<Action> {
    events.iter().flat_map(|e| member.handle(now, *e)).collect()
}

/// A primary and its active backup, connected to each other and (when `arbiter`) both to the
/// arbiter, in the mode that gives.
fn pair(arbiter: bool) -> (Failover, Failover, ArbiterBook) {
    let mut p = Failover::new(FailoverRole::Primary, QOS);
    let mut b = Failover::new(FailoverRole::Backup, QOS);
    let mut book = ArbiterBook::default();
    feed(&mut p, 0, &[Event::PartnerConnected, Event::PartnerActive]);
    feed(&mut b, 0, &[Event::PartnerConnected, Event::PartnerActive]);
    if arbiter {
        book.sees_primary = true;
        book.sees_backup = true;
        let to_p = book.ask_from_primary();
        assert_eq!(to_p, ToPrimary::SeesBackup(true));
        let actions = feed(
            &mut p,
            0,
            &[Event::ArbiterConnected, Event::ArbiterSeesPartner(true)],
        );
        assert_eq!(actions, vec![Action::BookArbiterMode]);
        assert_eq!(
            p.mode(),
            Mode::Agent,
            "the primary waits for the arbiter's booking"
        );
        book.primary_mode(Mode::Arbiter, 1);
        let actions = feed(&mut p, 0, &[Event::ArbiterBookedMode(true)]);
        assert_eq!(actions, vec![Action::SwitchMode(Mode::Arbiter)]);
        feed(
            &mut b,
            0,
            &[Event::ArbiterConnected, Event::ArbiterSeesPartner(true)],
        );
        assert_eq!(b.mode(), Mode::Agent, "the backup waits for the primary");
        let actions = feed(&mut b, 0, &[Event::PartnerMode(Mode::Arbiter)]);
        assert_eq!(actions, vec![Action::SwitchMode(Mode::Arbiter)]);
    }
    assert!(p.accepts_writes() && p.active() && b.active());
    (p, b, book)
}

fn to_primary(answer: ToPrimary) -> Event {
    Event::from(answer)
}

#[test]
fn every_mirror_starts_agent_controlled_and_enters_arbiter_mode_primary_first() {
    let (p, b, _) = pair(false);
    assert_eq!((p.mode(), b.mode()), (Mode::Agent, Mode::Agent));
    assert_eq!(p.status(), "Primary");
    assert_eq!(b.status(), "Backup");
    let (p, b, _) = pair(true);
    assert_eq!((p.mode(), b.mode()), (Mode::Arbiter, Mode::Arbiter));
    assert_eq!(Mode::Arbiter.display(), "Arbiter Controlled");
    assert_eq!(Mode::Agent.display(), "Agent Controlled");
}

#[test]
fn a_backup_that_is_not_active_keeps_the_pair_in_agent_mode() {
    let mut p = Failover::new(FailoverRole::Primary, QOS);
    let actions = feed(
        &mut p,
        0,
        &[
            Event::PartnerConnected,
            Event::ArbiterConnected,
            Event::ArbiterSeesPartner(true),
        ],
    );
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(p.mode(), Mode::Agent);
    let actions = feed(&mut p, 0, &[Event::PartnerActive]);
    assert_eq!(actions, vec![Action::BookArbiterMode]);
    let actions = feed(&mut p, 0, &[Event::ArbiterBookedMode(true)]);
    assert_eq!(actions, vec![Action::SwitchMode(Mode::Arbiter)]);
}

#[test]
fn the_primary_enters_arbiter_mode_only_once_the_arbiter_booked_it() {
    let mut p = Failover::new(FailoverRole::Primary, QOS);
    let events = [
        Event::PartnerConnected,
        Event::PartnerActive,
        Event::ArbiterConnected,
        Event::ArbiterSeesPartner(true),
    ];
    assert_eq!(feed(&mut p, 0, &events), vec![Action::BookArbiterMode]);
    // Asked once: further events do not ask again while the answer is on its way.
    assert!(feed(&mut p, 10, &[Event::Tick, Event::ArbiterSeesPartner(true)]).is_empty());
    assert_eq!(p.mode(), Mode::Agent);
    // The arbiter connection breaks before the answer: ask again on the next one.
    feed(&mut p, 20, &[Event::ArbiterLost]);
    assert_eq!(
        feed(
            &mut p,
            30,
            &[Event::ArbiterConnected, Event::ArbiterSeesPartner(true)]
        ),
        vec![Action::BookArbiterMode]
    );
    // The backup is lost before the booking arrives: no switch.
    feed(&mut p, 40, &[Event::PartnerLost]);
    let actions = feed(&mut p, 50, &[Event::ArbiterBookedMode(true)]);
    assert!(
        !actions.contains(&Action::SwitchMode(Mode::Arbiter)),
        "{actions:?}"
    );
    assert_eq!(p.mode(), Mode::Agent);
}

// ---------------------------------------------------------------------------------------------
// Agent controlled mode

#[test]
fn agent_mode_primary_losing_its_active_backup_is_in_trouble_for_two_qos_timeouts() {
    let (mut p, _, _) = pair(false);
    let actions = feed(&mut p, 1_000, &[Event::PartnerLost]);
    assert_eq!(actions, vec![Action::RevokeActive, Action::SuspendWrites]);
    assert_eq!(p.trouble(), Some(Trouble::Until(1_000 + 2 * QOS)));
    assert_eq!(p.status(), "In Trouble");
    assert!(!p.accepts_writes());
    assert!(feed(&mut p, 1_000 + 2 * QOS - 1, &[Event::Tick]).is_empty());
    assert_eq!(
        feed(&mut p, 1_000 + 2 * QOS, &[Event::Tick]),
        vec![Action::ResumeWrites]
    );
    assert!(p.accepts_writes());
}

#[test]
fn agent_mode_trouble_ends_early_when_the_backup_stands_down() {
    let (mut p, _, _) = pair(false);
    feed(&mut p, 1_000, &[Event::PartnerLost]);
    assert_eq!(
        feed(&mut p, 2_000, &[Event::PartnerStoodDown]),
        vec![Action::ResumeWrites]
    );
    // And when it comes back (as backup, not having taken over).
    let (mut p, _, _) = pair(false);
    feed(&mut p, 1_000, &[Event::PartnerLost]);
    let actions = feed(&mut p, 2_000, &[Event::PartnerConnected]);
    assert!(actions.contains(&Action::ResumeWrites), "{actions:?}");
    assert!(
        !p.active(),
        "a reconnected backup is not active until it caught up"
    );
}

#[test]
fn losing_a_non_active_backup_changes_nothing() {
    let mut p = Failover::new(FailoverRole::Primary, QOS);
    feed(&mut p, 0, &[Event::PartnerConnected]);
    assert!(feed(&mut p, 1_000, &[Event::PartnerLost]).is_empty());
    assert!(p.accepts_writes());
}

#[test]
fn agent_mode_backup_asks_the_agent_and_reconnects_to_a_running_primary() {
    let (_, mut b, _) = pair(false);
    assert_eq!(
        feed(&mut b, 1_000, &[Event::PartnerLost]),
        vec![Action::AskAgent]
    );
    assert_eq!(b.status(), "Waiting");
    let actions = feed(&mut b, 1_500, &[Event::Agent(AgentAnswer::PrimaryRunning)]);
    assert_eq!(actions, vec![Action::StandDown, Action::Reconnect]);
    assert_eq!(b.role(), FailoverRole::Backup);
    assert!(!b.active());
}

#[test]
fn a_backup_told_the_primary_runs_asks_again_if_it_cannot_get_back_to_it() {
    // The primary ran when the agent answered, but died again before the backup reconnected
    // (a crash during its restart): nothing on the data channel will ever say so.
    let (_, mut b, _) = pair(false);
    feed(&mut b, 1_000, &[Event::PartnerLost]);
    feed(&mut b, 1_500, &[Event::Agent(AgentAnswer::PrimaryRunning)]);
    assert!(b.may_connect(), "it tries to get back to the primary first");
    assert_eq!(feed(&mut b, 1_500 + QOS - 1, &[Event::Tick]), vec![]);
    assert_eq!(
        feed(&mut b, 1_500 + QOS, &[Event::Tick]),
        vec![Action::AskAgent]
    );
    // Not active any more: it takes over only with the down primary's journal.
    let later = 1_500 + QOS + 100;
    assert_eq!(
        feed(
            &mut b,
            later,
            &[Event::Agent(AgentAnswer::PrimaryDown { journal: false })]
        ),
        vec![]
    );
    assert_eq!(
        feed(
            &mut b,
            later + 100,
            &[Event::Agent(AgentAnswer::PrimaryDown { journal: true })]
        ),
        vec![Action::TakeOver]
    );
    assert_eq!(b.role(), FailoverRole::Primary);
}

#[test]
fn a_backup_told_the_primary_runs_that_got_back_to_it_asks_nobody() {
    let (_, mut b, _) = pair(false);
    feed(&mut b, 1_000, &[Event::PartnerLost]);
    feed(&mut b, 1_500, &[Event::Agent(AgentAnswer::PrimaryRunning)]);
    feed(&mut b, 1_600, &[Event::PartnerConnected]);
    assert_eq!(feed(&mut b, 1_500 + 3 * QOS, &[Event::Tick]), vec![]);
    assert_eq!(b.status(), "Backup");
}

#[test]
fn agent_mode_active_backup_takes_over_when_the_agent_confirms_the_primary_down_in_time() {
    let (_, mut b, _) = pair(false);
    feed(&mut b, 1_000, &[Event::PartnerLost]);
    let actions = feed(
        &mut b,
        1_000 + QOS,
        &[Event::Agent(AgentAnswer::PrimaryDown { journal: false })],
    );
    assert_eq!(actions, vec![Action::TakeOver]);
    assert_eq!(b.role(), FailoverRole::Primary);
    assert!(b.accepts_writes());
}

#[test]
fn after_its_window_a_backup_takes_over_only_with_the_primary_journal() {
    let (_, mut b, _) = pair(false);
    feed(&mut b, 1_000, &[Event::PartnerLost]);
    let late = 1_000 + QOS + 1;
    let actions = feed(
        &mut b,
        late,
        &[Event::Agent(AgentAnswer::PrimaryDown { journal: false })],
    );
    assert!(!actions.contains(&Action::TakeOver), "{actions:?}");
    assert_eq!(b.role(), FailoverRole::Backup);
    let actions = feed(
        &mut b,
        late + 10,
        &[Event::Agent(AgentAnswer::PrimaryDown { journal: true })],
    );
    assert_eq!(actions, vec![Action::TakeOver]);
}

#[test]
fn a_non_active_backup_takes_over_only_with_the_primary_journal_from_its_agent() {
    let mut b = Failover::new(FailoverRole::Backup, QOS);
    feed(&mut b, 0, &[Event::PartnerConnected]);
    feed(&mut b, 1_000, &[Event::PartnerLost]);
    let actions = feed(
        &mut b,
        1_001,
        &[Event::Agent(AgentAnswer::PrimaryDown { journal: false })],
    );
    assert!(actions.is_empty(), "{actions:?}");
    let actions = feed(
        &mut b,
        1_002,
        &[Event::Agent(AgentAnswer::PrimaryDown { journal: true })],
    );
    assert_eq!(actions, vec![Action::TakeOver]);
}

#[test]
fn without_the_agent_there_is_no_takeover_and_the_backup_keeps_asking_and_trying_the_primary() {
    // Primary host down (instance and agent), no arbiter: the backup waits.
    let (_, mut b, _) = pair(false);
    feed(&mut b, 1_000, &[Event::PartnerLost]);
    assert!(!b.may_connect(), "the agent's answer is on its way");
    let actions = feed(&mut b, 1_100, &[Event::Agent(AgentAnswer::Unreachable)]);
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(b.status(), "Waiting");
    assert!(
        b.may_connect(),
        "no answer on its way: it may try the primary"
    );
    assert!(
        b.undecided(),
        "it may still take over once the agent answers"
    );
    assert_eq!(
        feed(&mut b, 1_000 + QOS, &[Event::Tick]),
        vec![Action::AskAgent]
    );
    assert!(!b.may_connect(), "asked again");
    assert_eq!(b.role(), FailoverRole::Backup);
}

// ---------------------------------------------------------------------------------------------
// The lost-connection matrix and the outage list are scripts: see `scripts` and
// `src/mirror/failover/testscripts/`.

#[test]
fn a_new_primary_starts_afresh_in_agent_mode_and_books_arbiter_mode_itself() {
    // The backup was in arbiter mode, booked for the *old* primary. After taking over (here by
    // a graceful handover) nothing of that carries over: the new primary shows Agent
    // Controlled until the arbiter booked arbiter mode for it, so a monitor never promises a
    // takeover the arbiter would refuse.
    let (_, mut b, _) = pair(true);
    feed(&mut b, 1_000, &[Event::PartnerHandsOver]);
    assert_eq!(b.mode(), Mode::Agent);
    assert!(b.accepts_writes() && !b.active());
    // Its arbiter link reconnects in the new role; the old primary comes back as its backup.
    let mut book = ArbiterBook {
        sees_primary: true,
        sees_backup: true,
        ..Default::default()
    };
    feed(
        &mut b,
        1_100,
        &[Event::ArbiterLost, Event::ArbiterConnected],
    );
    let actions = feed(
        &mut b,
        1_200,
        &[
            Event::PartnerConnected,
            Event::PartnerActive,
            Event::ArbiterSeesPartner(true),
        ],
    );
    assert_eq!(actions, vec![Action::BookArbiterMode]);
    assert_eq!(b.mode(), Mode::Agent, "not before the arbiter booked it");
    book.primary_mode(Mode::Arbiter, 2);
    assert_eq!(
        feed(&mut b, 1_300, &[Event::ArbiterBookedMode(true)]),
        vec![Action::SwitchMode(Mode::Arbiter)]
    );
    // Now the promise holds: the arbiter approves a takeover once it loses this primary.
    book.sees_primary = false;
    assert!(book.ask_from_backup());
}

#[test]
fn a_backup_that_may_not_take_over_asks_nobody_and_stands_down_at_once() {
    for blocker in [
        Event::NoFailover(true),
        Event::DatabasesReady(false),
        Event::MirrorStopped(true),
    ] {
        for arbiter in [false, true] {
            let (_, mut b, _) = pair(arbiter);
            feed(&mut b, 0, &[blocker]);
            let actions = feed(&mut b, 1_000, &[Event::PartnerLost]);
            let mut expected = vec![Action::StandDown, Action::Reconnect];
            if arbiter {
                expected.insert(0, Action::SwitchMode(Mode::Agent));
            }
            assert_eq!(actions, expected, "{blocker:?}, arbiter {arbiter}");
            assert!(b.may_connect() && !b.active());
            // Time passes: it never asks.
            assert!(feed(&mut b, 1_000 + 5 * QOS, &[Event::Tick]).is_empty());
        }
    }
}

#[test]
fn a_blocker_cleared_while_the_primary_is_gone_lets_the_backup_ask_the_agent() {
    let (_, mut b, _) = pair(false);
    feed(&mut b, 0, &[Event::NoFailover(true)]);
    feed(&mut b, 1_000, &[Event::PartnerLost]);
    // A person clears No Failover while the primary is down.
    assert_eq!(
        feed(&mut b, 5_000, &[Event::NoFailover(false)]),
        vec![Action::AskAgent]
    );
    // Too late to count as the active backup: only with the journal.
    let actions = feed(
        &mut b,
        5_100,
        &[Event::Agent(AgentAnswer::PrimaryDown { journal: false })],
    );
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(
        feed(
            &mut b,
            5_200,
            &[Event::Agent(AgentAnswer::PrimaryDown { journal: true })]
        ),
        vec![Action::TakeOver]
    );
    // A backup that reconnected meanwhile has nothing to decide.
    let (_, mut b, _) = pair(false);
    feed(&mut b, 0, &[Event::DatabasesReady(false)]);
    feed(&mut b, 1_000, &[Event::PartnerLost]);
    feed(&mut b, 2_000, &[Event::PartnerConnected]);
    assert!(feed(&mut b, 3_000, &[Event::DatabasesReady(true)]).is_empty());
}

#[test]
fn a_refused_verdict_falls_back_to_the_agent_of_a_primary_that_went_on_alone() {
    // The arbiter lost the primary, but the primary was not (or no longer) booked in arbiter
    // mode: the arbiter refuses. The primary's agent can still tell that it is down, and serve
    // the journal a non-active backup needs.
    let (_, mut b, mut book) = pair(true);
    book.primary_in_arbiter_mode = false;
    book.sees_primary = false;
    feed(&mut b, 1_000, &[Event::PartnerLost]);
    let take_over = book.ask_from_backup();
    assert!(!take_over);
    let actions = feed(&mut b, 3_000, &[Event::ArbiterVerdict { take_over }]);
    assert_eq!(
        actions,
        vec![
            Action::SwitchMode(Mode::Agent),
            Action::StandDown,
            Action::AskAgent
        ]
    );
    assert!(!b.may_connect(), "no reconnecting while the agent is asked");
    let actions = feed(
        &mut b,
        3_100,
        &[Event::Agent(AgentAnswer::PrimaryDown { journal: false })],
    );
    assert!(actions.is_empty(), "not active any more: {actions:?}");
    assert_eq!(
        feed(
            &mut b,
            3_200,
            &[Event::Agent(AgentAnswer::PrimaryDown { journal: true })]
        ),
        vec![Action::TakeOver]
    );
}

#[test]
fn no_failover_and_unready_databases_block_every_takeover() {
    for blocker in [Event::NoFailover(true), Event::DatabasesReady(false)] {
        let (_, mut b, _) = pair(false);
        feed(&mut b, 0, &[blocker]);
        feed(&mut b, 1_000, &[Event::PartnerLost]);
        let actions = feed(
            &mut b,
            1_001,
            &[Event::Agent(AgentAnswer::PrimaryDown { journal: true })],
        );
        assert!(!actions.contains(&Action::TakeOver), "{actions:?}");
        let (_, mut b, _) = pair(false);
        feed(&mut b, 0, &[blocker]);
        assert!(!feed(&mut b, 1_000, &[Event::PartnerHandsOver]).contains(&Action::TakeOver));
        let (_, mut b, mut book) = pair(true);
        feed(&mut b, 0, &[blocker]);
        book.sees_primary = false;
        feed(&mut b, 1_000, &[Event::PartnerLost]);
        let take_over = book.ask_from_backup();
        let actions = feed(&mut b, 1_001, &[Event::ArbiterVerdict { take_over }]);
        assert!(!actions.contains(&Action::TakeOver), "{actions:?}");
    }
    // Cleared again, the takeover goes through.
    let (_, mut b, _) = pair(false);
    feed(
        &mut b,
        0,
        &[Event::NoFailover(true), Event::NoFailover(false)],
    );
    assert_eq!(
        feed(&mut b, 1_000, &[Event::PartnerHandsOver]),
        vec![Action::TakeOver]
    );
}

#[test]
fn a_backup_that_may_no_longer_take_over_stops_asking_the_agent() {
    // Found by the explorer: a backup that lost its primary and got no answer from its agent
    // kept asking every QoS after No Failover was set (or a database became unready) — and the
    // question forces a hung primary down, with nobody to take its place.
    for blocker in [Event::NoFailover(true), Event::DatabasesReady(false)] {
        let (_, mut b, _) = pair(false);
        assert_eq!(
            feed(&mut b, 1_000, &[Event::PartnerLost]),
            vec![Action::AskAgent]
        );
        feed(&mut b, 1_100, &[Event::Agent(AgentAnswer::Unreachable)]);
        assert_eq!(
            feed(&mut b, 1_000 + QOS, &[Event::Tick]),
            vec![Action::AskAgent],
            "without a blocker it asks again every QoS"
        );
        feed(&mut b, 1_200 + QOS, &[blocker]);
        for k in 2..6 {
            assert!(
                !feed(&mut b, 1_000 + k * QOS, &[Event::Tick]).contains(&Action::AskAgent),
                "asked with {blocker:?}"
            );
        }
        // An answer to the question asked before is not acted on.
        let actions = feed(
            &mut b,
            1_000 + 6 * QOS,
            &[Event::Agent(AgentAnswer::PrimaryDown { journal: true })],
        );
        assert!(!actions.contains(&Action::TakeOver), "{actions:?}");
        // Cleared, it asks again: the primary may still be down.
        let cleared = match blocker {
            Event::NoFailover(_) => Event::NoFailover(false),
            _ => Event::DatabasesReady(true),
        };
        assert!(feed(&mut b, 1_000 + 7 * QOS, &[cleared]).contains(&Action::AskAgent));
    }
    // In arbiter mode: it asked the arbiter, may no longer take over, and loses the arbiter. It
    // does not fall back to the agent; it stands down, which cancels what the arbiter may have
    // booked for it.
    let (_, mut b, _) = pair(true);
    assert_eq!(
        feed(&mut b, 1_000, &[Event::PartnerLost]),
        vec![Action::AskArbiter]
    );
    feed(&mut b, 1_100, &[Event::DatabasesReady(false)]);
    let actions = feed(&mut b, 1_200, &[Event::ArbiterLost]);
    assert!(!actions.contains(&Action::AskAgent), "{actions:?}");
    assert!(actions.contains(&Action::StandDown), "{actions:?}");
}

#[test]
fn the_arbiter_book_answers_one_question_at_a_time() {
    let mut book = ArbiterBook {
        sees_primary: false,
        sees_backup: false,
        primary_in_arbiter_mode: true,
        booked_activation: 7,
        backup_took_over: false,
    };
    // A stand-down of an older activation, relayed late, does not end the booking.
    let mut late = book.clone();
    late.backup_stood_down(6);
    assert!(late.primary_in_arbiter_mode);
    // The primary asked first: booked alone, so the backup may not take over.
    let mut first = book.clone();
    assert_eq!(first.ask_from_primary(), ToPrimary::SeesBackup(false));
    assert!(!first.ask_from_backup());
    // The backup asked first: the takeover is booked and the primary is told.
    assert!(book.ask_from_backup());
    assert_eq!(book.ask_from_primary(), ToPrimary::BackupTookOver);
    // A backup whose answer was lost asks again and hears the same, even with the primary back.
    book.sees_primary = true;
    assert!(book.ask_from_backup());
    // It did not carry the takeover out (it may not, or it failed) and stood down: the booking
    // is cancelled, and the old primary may resume.
    book.backup_stood_down(0);
    assert_eq!(book.ask_from_primary(), ToPrimary::SeesBackup(false));
    assert!(!book.ask_from_backup());
}

#[test]
fn a_restarted_primary_resumes_only_when_the_other_member_confirms() {
    let says = |claims_primary, names_this_primary, epoch| OtherMember::Says {
        claims_primary,
        names_this_primary,
        epoch: Epoch(epoch),
        deciding: false,
    };
    // The backup still follows this member: resume.
    assert_eq!(restart_as(Epoch(3), says(false, true, 3)), Restart::Primary);
    // The other member took over (a newer epoch): follow it.
    assert_eq!(restart_as(Epoch(3), says(true, false, 4)), Restart::Backup);
    // The other member is an older former primary that restarted too: this one is newer.
    assert_eq!(restart_as(Epoch(4), says(true, false, 3)), Restart::Primary);
    // Nobody can tell: wait.
    assert!(matches!(
        restart_as(Epoch(3), OtherMember::Unreachable),
        Restart::Wait(_)
    ));
    assert!(matches!(
        restart_as(Epoch(3), says(true, false, 3)),
        Restart::Wait(_)
    ));
    assert!(matches!(
        restart_as(Epoch(3), says(false, true, 4)),
        Restart::Wait(_)
    ));
    assert!(matches!(
        restart_as(Epoch(3), says(false, false, 3)),
        Restart::Wait(_)
    ));
    // Alone in the mirror: resume.
    assert_eq!(
        restart_as(Epoch(3), OtherMember::NotMember),
        Restart::Primary
    );
    // The backup is taking over right now (its epoch has not moved on yet): wait, even though
    // its configuration still names this member.
    let taking_over = OtherMember::Says {
        claims_primary: false,
        names_this_primary: true,
        epoch: Epoch(3),
        deciding: true,
    };
    assert!(matches!(
        restart_as(Epoch(3), taking_over),
        Restart::Wait(_)
    ));
    // Both restarted: the newer history wins.
    let newer = OtherMember::Says {
        claims_primary: true,
        names_this_primary: false,
        epoch: Epoch(4),
        deciding: true,
    };
    assert_eq!(restart_as(Epoch(3), newer), Restart::Backup);
}
