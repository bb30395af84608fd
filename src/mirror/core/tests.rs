//! The member core's bookkeeping around the failover rules, with a shell that records what it
//! was told to do: the stall rule, link generations and agent answers, a failed takeover.

use super::*;

const QOS: u64 = 8_000;

/// What the core told its shell, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Did {
    SuspendWrites,
    BookArbiterMode,
    SwitchMode(Mode),
    AskPartnerToLeaveArbiterMode,
    AskArbiter,
    AskAgent { generation: u64, active: bool },
    TakeOver,
    StandDown(u64),
    ForceOtherDown,
    ShutDown,
    FreshRules { backup: bool },
    DropDataLink,
}

/// A shell that records; `takeover_succeeds` decides how a takeover ends.
struct Recorder {
    did: Vec<Did>,
    takeover_succeeds: bool,
    /// The rule of each takeover, and each refusal said, in order.
    rules: Vec<TakeoverRule>,
    refusals: Vec<Refusal>,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            did: Vec::new(),
            takeover_succeeds: true,
            rules: Vec::new(),
            refusals: Vec::new(),
        }
    }

    /// What was done since the last call.
    fn take(&mut self) -> Vec<Did> {
        std::mem::take(&mut self.did)
    }
}

impl Shell for Recorder {
    fn suspend_writes(&mut self) {
        self.did.push(Did::SuspendWrites);
    }
    fn book_arbiter_mode(&mut self) {
        self.did.push(Did::BookArbiterMode);
    }
    fn switch_mode(&mut self, mode: Mode) {
        self.did.push(Did::SwitchMode(mode));
    }
    fn ask_partner_to_leave_arbiter_mode(&mut self) {
        self.did.push(Did::AskPartnerToLeaveArbiterMode);
    }
    fn ask_arbiter(&mut self) {
        self.did.push(Did::AskArbiter);
    }
    fn ask_agent(&mut self, generation: u64, active: bool) -> bool {
        self.did.push(Did::AskAgent { generation, active });
        true
    }
    fn take_over(&mut self, rule: TakeoverRule) -> bool {
        self.did.push(Did::TakeOver);
        self.rules.push(rule);
        self.takeover_succeeds
    }
    fn refused(&mut self, refusal: Refusal) {
        self.refusals.push(refusal);
    }
    fn stand_down(&mut self, activation: u64) {
        self.did.push(Did::StandDown(activation));
    }
    fn force_other_down(&mut self) {
        self.did.push(Did::ForceOtherDown);
    }
    fn shut_down(&mut self) {
        self.did.push(Did::ShutDown);
    }
    fn fresh_rules(&mut self, backup: bool) {
        self.did.push(Did::FreshRules { backup });
    }
    fn drop_data_link(&mut self) {
        self.did.push(Did::DropDataLink);
    }
}

/// A look at `now` with the databases ready and `events` on the data link.
fn look(now_ms: u64, link_events: &[Event]) -> Look {
    Look {
        now_ms,
        gap_ms: 25,
        qos_ms: QOS,
        databases_ready: true,
        heard_ms: Some(now_ms),
        link_activation: 7,
        link_events: link_events.to_vec(),
        ..Look::default()
    }
}

/// A backup that connected to its primary and was made active (activation 7), in agent mode.
fn active_backup() -> (MemberCore, Recorder) {
    let mut core = MemberCore::new();
    let mut shell = Recorder::new();
    core.step(FailoverRole::Backup, look(0, &[]), &mut shell);
    assert_eq!(shell.take(), vec![Did::FreshRules { backup: true }]);
    core.step(
        FailoverRole::Backup,
        look(100, &[Event::PartnerConnected, Event::PartnerActive]),
        &mut shell,
    );
    assert!(core.failover().unwrap().active());
    assert_eq!(shell.take(), vec![]);
    (core, shell)
}

/// The backup loses its primary at `now` and asks the primary's agent (once), in the current
/// link generation, which it returns.
fn loses_primary(core: &mut MemberCore, shell: &mut Recorder, now: u64, active: bool) -> u64 {
    let generation = core.link_generation();
    core.step(
        FailoverRole::Backup,
        look(now, &[Event::PartnerLost]),
        shell,
    );
    assert_eq!(shell.take(), vec![Did::AskAgent { generation, active }]);
    generation
}

#[test]
fn a_backup_that_lost_its_primary_asks_the_agent_once_for_that_link() {
    let (mut core, mut shell) = active_backup();
    let generation = loses_primary(&mut core, &mut shell, 200, true);
    // Looks go on while the question is out: nobody asks again.
    for now in [300, 400, 500] {
        core.step(FailoverRole::Backup, look(now, &[]), &mut shell);
    }
    assert_eq!(shell.take(), vec![]);
    // The agent says the primary is down: an active backup takes over.
    let mut answered = look(600, &[]);
    answered.agent_answers = vec![(AgentAnswer::PrimaryDown { journal: false }, generation)];
    core.step(FailoverRole::Backup, answered, &mut shell);
    assert_eq!(shell.take(), vec![Did::TakeOver]);
    assert_eq!(shell.rules, vec![TakeoverRule::AgentConfirmedDown]);
    assert_eq!(shell.refusals, vec![]);
}

#[test]
fn a_takeover_names_its_rule_and_a_refusal_is_said_once_per_link() {
    // A handover.
    let (mut core, mut shell) = active_backup();
    core.step(
        FailoverRole::Backup,
        look(200, &[Event::PartnerHandsOver]),
        &mut shell,
    );
    assert_eq!(shell.rules, vec![TakeoverRule::Handover]);
    // A backup told twice that the primary runs says so once; after it reconnected and lost
    // the primary again, it says it again.
    let (mut core, mut shell) = active_backup();
    for round in 0..2u64 {
        let at = 1_000 * (round + 1);
        let generation = core.link_generation();
        core.step(
            FailoverRole::Backup,
            look(at, &[Event::PartnerLost]),
            &mut shell,
        );
        for answer_at in [at + 100, at + 200] {
            let mut answered = look(answer_at, &[]);
            answered.agent_answers = vec![(AgentAnswer::PrimaryRunning, generation)];
            core.step(FailoverRole::Backup, answered, &mut shell);
        }
        core.step(
            FailoverRole::Backup,
            look(at + 300, &[Event::PartnerConnected]),
            &mut shell,
        );
    }
    assert_eq!(shell.refusals, vec![Refusal::PrimaryRunning; 2]);
    assert!(shell.rules.is_empty());
    // With No Failover set, losing the primary asks nobody and says why.
    let (mut core, mut shell) = active_backup();
    let mut no_failover = look(200, &[Event::PartnerLost]);
    no_failover.no_failover = true;
    core.step(FailoverRole::Backup, no_failover, &mut shell);
    assert_eq!(shell.refusals, vec![Refusal::NoFailover]);
    assert!(
        !shell
            .take()
            .iter()
            .any(|d| matches!(d, Did::AskAgent { .. }))
    );
}

#[test]
fn an_answer_about_an_older_link_is_dropped_and_a_new_loss_asks_again() {
    let (mut core, mut shell) = active_backup();
    let first = loses_primary(&mut core, &mut shell, 200, true);
    // The backup got back to the primary before the agent answered "running"; the answer
    // arrives in the same look as the reconnection, after it.
    let mut reconnected = look(300, &[Event::PartnerConnected]);
    reconnected.agent_answers = vec![(AgentAnswer::PrimaryRunning, first)];
    core.step(FailoverRole::Backup, reconnected, &mut shell);
    assert_eq!(shell.take(), vec![], "the old answer decided nothing");
    assert_eq!(core.link_generation(), first + 1);
    // The primary dies now: the backup (not active on this link) asks again, in the new
    // generation, although the first question was never answered for it.
    assert_eq!(loses_primary(&mut core, &mut shell, 400, false), first + 1);
}

#[test]
fn a_backup_that_stalled_starts_afresh_keeps_its_arbiter_link_and_lost_its_primary() {
    let (mut core, mut shell) = active_backup();
    // Connected to the arbiter, which sees the primary.
    let mut arbiter = look(200, &[]);
    arbiter.arbiter = (true, Some(true));
    arbiter.arbiter_events = vec![Event::ArbiterConnected, Event::ArbiterSeesPartner(true)];
    core.step(FailoverRole::Backup, arbiter, &mut shell);
    shell.take();
    let before = core.link_generation();
    // The process stood still for more than half a QoS; what the link buffered is stale.
    let mut stalled = look(200 + QOS, &[Event::PartnerActive]);
    stalled.gap_ms = QOS / 2 + 1;
    stalled.arbiter = (true, Some(true));
    core.step(FailoverRole::Backup, stalled, &mut shell);
    let did = shell.take();
    assert_eq!(
        &did[..2],
        &[Did::FreshRules { backup: true }, Did::DropDataLink]
    );
    // It had its primary: as a backup that is no longer active it asks the agent (and would
    // fetch the journal), in a generation newer than the stalled link's.
    let asked: Vec<&Did> = did
        .iter()
        .filter(|d| matches!(d, Did::AskAgent { .. }))
        .collect();
    assert_eq!(asked.len(), 1, "{did:?}");
    assert!(
        matches!(asked[0], Did::AskAgent { generation, active: false } if *generation > before),
        "{did:?}"
    );
    let failover = core.failover().unwrap();
    assert!(!failover.active(), "a stalled backup is not active");
}

#[test]
fn a_backup_that_stalled_before_it_reached_its_primary_asks_nobody() {
    let mut core = MemberCore::new();
    let mut shell = Recorder::new();
    core.step(FailoverRole::Backup, look(0, &[]), &mut shell);
    shell.take();
    let mut stalled = look(QOS, &[]);
    stalled.receiver_stalled = true;
    core.step(FailoverRole::Backup, stalled, &mut shell);
    assert_eq!(
        shell.take(),
        vec![Did::FreshRules { backup: true }, Did::DropDataLink]
    );
}

/// The backup connects to the arbiter, which sees the primary; then the primary says it is in
/// arbiter mode, and the backup follows.
fn into_arbiter_mode(core: &mut MemberCore, shell: &mut Recorder) {
    let mut arbiter = look(150, &[]);
    arbiter.arbiter = (true, Some(true));
    arbiter.arbiter_events = vec![Event::ArbiterConnected, Event::ArbiterSeesPartner(true)];
    core.step(FailoverRole::Backup, arbiter, shell);
    let mut mode = look(200, &[Event::PartnerMode(Mode::Arbiter)]);
    mode.arbiter = (true, Some(true));
    core.step(FailoverRole::Backup, mode, shell);
    assert_eq!(shell.take(), vec![Did::SwitchMode(Mode::Arbiter)]);
}

/// An active backup in arbiter mode loses its primary, asks the arbiter, which grants the
/// takeover; the takeover `succeeds` or not. Returns what the core did on the verdict.
fn arbiter_grants_takeover(succeeds: bool) -> (MemberCore, Vec<Did>) {
    let (mut core, mut shell) = active_backup();
    into_arbiter_mode(&mut core, &mut shell);
    core.step(
        FailoverRole::Backup,
        look(300, &[Event::PartnerLost]),
        &mut shell,
    );
    assert_eq!(shell.take(), vec![Did::AskArbiter]);
    shell.takeover_succeeds = succeeds;
    let mut verdict = look(400, &[]);
    verdict.arbiter_events = vec![Event::ArbiterVerdict { take_over: true }];
    core.step(FailoverRole::Backup, verdict, &mut shell);
    (core, shell.take())
}

#[test]
fn a_failed_takeover_through_the_arbiter_is_cancelled_and_forces_nobody_down() {
    let (core, did) = arbiter_grants_takeover(false);
    assert_eq!(
        did[..3],
        [
            Did::TakeOver,
            Did::StandDown(7),
            Did::FreshRules { backup: true }
        ],
        "{did:?}"
    );
    assert!(
        !did.contains(&Did::ForceOtherDown),
        "the old primary was forced down after a failed takeover: {did:?}"
    );
    assert_eq!(core.failover().unwrap().role(), FailoverRole::Backup);
}

#[test]
fn the_same_takeover_that_succeeds_forces_the_old_primary_down() {
    let (_, did) = arbiter_grants_takeover(true);
    // The new primary starts in agent mode (its own booking comes later), then forces the old
    // one down.
    assert_eq!(
        did,
        vec![
            Did::TakeOver,
            Did::SwitchMode(Mode::Agent),
            Did::ForceOtherDown
        ]
    );
}

#[test]
fn configuration_reaches_the_rules_before_the_links_in_one_look() {
    // No Failover set in the same look as the primary's loss: the backup asks nobody and
    // stands down (a backup that may not take over does not ask the arbiter or the agent).
    let (mut core, mut shell) = active_backup();
    let mut lost = look(200, &[Event::PartnerLost]);
    lost.no_failover = true;
    core.step(FailoverRole::Backup, lost, &mut shell);
    let did = shell.take();
    assert!(
        !did.iter()
            .any(|d| matches!(d, Did::AskAgent { .. } | Did::AskArbiter | Did::TakeOver)),
        "{did:?}"
    );
    assert!(did.contains(&Did::StandDown(7)), "{did:?}");
}

#[test]
fn settings_that_change_together_reach_the_rules_restrictions_first() {
    // Found by the simulation: a backup whose host was frozen while Stop Mirror was undone and a
    // database became unready looked once, on thawing, with both changes. Fed in the order
    // "mirroring started, then databases unready", the rules of a backup that had lost its
    // primary saw a moment in which they might take over, and asked the primary's agent (which
    // forces a hung primary down) before they heard that they could not.
    let (mut core, mut shell) = active_backup();
    let mut stopped = look(200, &[]);
    stopped.mirror_stopped = true;
    core.step(FailoverRole::Backup, stopped.clone(), &mut shell);
    shell.take();
    stopped.now_ms = 300;
    stopped.link_events = vec![Event::PartnerLost];
    core.step(FailoverRole::Backup, stopped, &mut shell);
    let did = shell.take();
    assert!(
        !did.iter().any(|d| matches!(d, Did::AskAgent { .. })),
        "{did:?}"
    );
    // Frozen for less than half a QoS: no stall, the same rules go on.
    let mut thawed = look(3_000, &[]);
    thawed.gap_ms = 2_700;
    thawed.databases_ready = false;
    core.step(FailoverRole::Backup, thawed, &mut shell);
    let did = shell.take();
    assert!(
        !did.iter()
            .any(|d| matches!(d, Did::AskAgent { .. } | Did::AskArbiter | Did::TakeOver)),
        "{did:?}"
    );
}

#[test]
fn a_primary_in_arbiter_mode_repeats_its_mode_every_half_second() {
    let mut core = MemberCore::new();
    let mut shell = Recorder::new();
    let step = |core: &mut MemberCore, shell: &mut Recorder, now, link: &[Event], arb: &[Event]| {
        let mut l = look(now, link);
        l.arbiter = (true, Some(true));
        l.arbiter_events = arb.to_vec();
        core.step(FailoverRole::Primary, l, shell)
    };
    step(&mut core, &mut shell, 0, &[], &[]);
    step(
        &mut core,
        &mut shell,
        10,
        &[Event::PartnerConnected, Event::PartnerActive],
        &[Event::ArbiterConnected, Event::ArbiterSeesPartner(true)],
    );
    assert!(shell.take().contains(&Did::BookArbiterMode));
    let after = step(
        &mut core,
        &mut shell,
        20,
        &[],
        &[Event::ArbiterBookedMode(true)],
    );
    assert_eq!(after.mode, "Arbiter Controlled");
    assert!(after.writes_may_resume);
    let repeats: Vec<u64> = (1..=40)
        .map(|i| 20 + i * 25)
        .filter(|now| step(&mut core, &mut shell, *now, &[], &[]).repeat_mode)
        .collect();
    assert_eq!(repeats, vec![520, 1020]);
}

/// A restarted former primary's side, recorded.
#[derive(Default)]
struct Deciding {
    asked: u32,
    restarts: Vec<Restart>,
    /// What `restart` says: still deciding afterwards.
    still_deciding: bool,
}

impl Restarting for Deciding {
    fn ask_other_member(&mut self) -> bool {
        self.asked += 1;
        true
    }
    fn restart(&mut self, decision: Restart) -> bool {
        self.restarts.push(decision);
        self.still_deciding
    }
}

#[test]
fn a_former_primary_without_another_failover_member_resumes_at_once() {
    let mut core = MemberCore::new();
    let mut shell = Deciding::default();
    core.decide(0, vec![], false, &mut shell);
    assert_eq!(shell.restarts, vec![Restart::Primary]);
    assert_eq!(shell.asked, 0);
}

#[test]
fn a_former_primary_asks_one_question_at_a_time_and_again_after_being_told_to_wait() {
    let mut core = MemberCore::new();
    let mut shell = Deciding {
        still_deciding: true,
        ..Deciding::default()
    };
    core.decide(0, vec![], true, &mut shell);
    assert_eq!(shell.asked, 1);
    // No second question while the first is out, however long it takes.
    for now in [25, 1_000, 5_000] {
        core.decide(now, vec![], true, &mut shell);
    }
    assert_eq!(shell.asked, 1);
    // Told to wait: it asks again, but not before a second after its last question.
    let wait = Restart::Wait("the other member is deciding too");
    core.decide(5_100, vec![wait], true, &mut shell);
    assert_eq!(shell.restarts, vec![wait]);
    assert_eq!(shell.asked, 2, "the last question was long ago");
    core.decide(5_200, vec![wait], true, &mut shell);
    core.decide(5_900, vec![], true, &mut shell);
    assert_eq!(shell.asked, 2, "asked again within a second");
    core.decide(6_100, vec![], true, &mut shell);
    assert_eq!(shell.asked, 3);
    // The answer follows the other member: deciding ends, nothing more is asked.
    shell.still_deciding = false;
    core.decide(6_200, vec![Restart::Backup], true, &mut shell);
    assert_eq!(shell.restarts.last(), Some(&Restart::Backup));
    assert_eq!(shell.asked, 3);
}
