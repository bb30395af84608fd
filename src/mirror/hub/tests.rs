//! The hub's tests: activation, acknowledgements and the trouble state, the driver's
//! events and their terms, lag and trouble time.

use super::*;
use crate::clock::ManualClock;
use crate::config::mirror::MemberKind;
use crate::mirror::protocol::Message;

/// A hub and the failover driver's side of its channel.
fn hub_with_inbox(qos_ms: u64) -> (Hub, mpsc::Receiver<DriverInput>) {
    let (tx, rx) = mpsc::channel();
    (Hub::new(qos_ms, tx, EventLog::detached()), rx)
}

/// A hub on a clock that moves only when the test says, and the driver's side of its channel.
fn hub_on_clock(qos_ms: u64) -> (Hub, mpsc::Receiver<DriverInput>, Arc<ManualClock>) {
    let (tx, rx) = mpsc::channel();
    let clock = Arc::new(ManualClock::new());
    let hub = Hub::with_clock(qos_ms, tx, EventLog::detached(), clock.clone());
    (hub, rx, clock)
}

/// What the driver takes in one look: the loss generation first, then the events of the
/// hub's current term.
fn take_events(hub: &Hub, inbox: &mpsc::Receiver<DriverInput>) -> (Vec<Event>, u64) {
    let generation = hub.loss_generation();
    let term = hub.term();
    let events = inbox
        .try_iter()
        .filter_map(|input| match input {
            DriverInput::Hub { event, term: t } if t == term => Some(event),
            _ => None,
        })
        .collect();
    (events, generation)
}

#[test]
fn a_members_lag_counts_the_bytes_published_after_what_it_acknowledged() {
    let mut state = HubState::default();
    for (end, bytes) in [(3, 100), (5, 250), (9, 400)] {
        state.published_bytes = bytes;
        state.batch_times.push_back((end, 0, bytes));
    }
    assert_eq!(state.bytes_after(JournalPos(9)), 0);
    assert_eq!(state.bytes_after(JournalPos(5)), 150);
    // Within a batch: counted from the batch before it.
    assert_eq!(state.bytes_after(JournalPos(7)), 150);
    assert_eq!(state.bytes_after(JournalPos(0)), 400);
    // Batches no longer remembered: from the oldest one remembered.
    state.forgotten_bytes = state.batch_times.pop_front().unwrap().2;
    assert_eq!(state.bytes_after(JournalPos(0)), 300);
}

#[test]
fn trouble_time_grows_only_while_acknowledgements_are_held() {
    let (hub, _inbox, clock) = hub_on_clock(60_000);
    assert_eq!(hub.trouble_time(), Duration::ZERO);
    hub.suspend();
    clock.advance(Duration::from_millis(20));
    assert_eq!(hub.trouble_time(), Duration::from_millis(20), "held now");
    assert!(hub.resume(hub.loss_generation()));
    clock.advance(Duration::from_millis(20));
    assert_eq!(
        hub.trouble_time(),
        Duration::from_millis(20),
        "it grew while nothing was held"
    );
    hub.suspend();
    clock.advance(Duration::from_millis(5));
    assert!(hub.resume(hub.loss_generation()));
    assert_eq!(hub.trouble_time(), Duration::from_millis(25));
}

#[test]
fn events_of_an_earlier_term_are_stale() {
    let (hub, inbox) = hub_with_inbox(60_000);
    hub.reset(JournalPos(0));
    let (id, _, _) = hub.register(member("B", MemberKind::Failover)).unwrap();
    hub.on_ack(id, JournalPos(0));
    // Demoted and primary again: what the old term's links did is no news.
    hub.reset(JournalPos(0));
    assert_eq!(take_events(&hub, &inbox).0, vec![]);
    hub.on_stood_down(id);
    assert_eq!(take_events(&hub, &inbox).0, vec![Event::PartnerStoodDown]);
}

fn member(name: &str, kind: MemberKind) -> MemberInfo {
    MemberInfo {
        name: MemberName::new(name).unwrap(),
        kind,
        superserver_address: "h".into(),
        mirror_private_address: "h".into(),
        agent_address: "h".into(),
        agent_port: 2188,
        instance_guid: "g".into(),
        certificate: None,
    }
}

#[test]
fn a_backup_becomes_active_once_it_acknowledges_the_snapshot() {
    let (hub, _inbox) = hub_with_inbox(200);
    hub.reset(JournalPos(10));
    let (id, outbox, snapshot) = hub.register(member("B", MemberKind::Failover)).unwrap();
    assert_eq!(snapshot, JournalPos(10));
    hub.on_ack(id, JournalPos(9));
    assert!(!hub.has_active_backup());
    hub.on_ack(id, JournalPos(10));
    assert!(hub.has_active_backup());
    let Some(Message::Control(c)) = outbox.queued_messages().pop() else {
        panic!("no Activated sent");
    };
    let Control::Activated { activation } = *c else {
        panic!("sent {c:?} instead of Activated");
    };
    // Only the latest activation counts: a stand-down naming another one was overtaken.
    assert!(activation != 0 && hub.is_latest_activation(activation));
    assert!(!hub.is_latest_activation(activation.wrapping_add(1)));
    assert!(!hub.is_latest_activation(0));
    // A second failover member is refused while one is connected; an async is fine.
    assert!(hub.register(member("C", MemberKind::Failover)).is_err());
    assert!(hub.register(member("D", MemberKind::Dr)).is_ok());
}

/// Counts the hub's wake-ups.
fn counted(hub: &Hub) -> Arc<std::sync::atomic::AtomicUsize> {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    hub.set_waker(Box::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    }));
    count
}

#[test]
fn a_batch_is_acknowledged_by_the_active_backup_or_held_in_trouble_after_qos() {
    let (hub, inbox, clock) = hub_on_clock(2_000);
    let wakes = counted(&hub);
    hub.reset(JournalPos(0));
    let (id, outbox, _) = hub.register(member("B", MemberKind::Failover)).unwrap();
    hub.on_ack(id, JournalPos(0));
    assert!(hub.has_active_backup());
    hub.publish_end_for_tests(JournalPos(6));
    let since = clock.now();
    assert_eq!(
        hub.acknowledgement(JournalPos(5), since),
        Acknowledged::Waiting
    );
    // An acknowledgement short of the batch wakes nobody; the one that covers it does.
    let before = wakes.load(Ordering::SeqCst);
    hub.on_ack(id, JournalPos(4));
    assert_eq!(wakes.load(Ordering::SeqCst), before);
    hub.on_ack(id, JournalPos(5));
    assert_eq!(wakes.load(Ordering::SeqCst), before + 1);
    assert_eq!(hub.acknowledgement(JournalPos(5), since), Acknowledged::Yes);
    let (events, _) = take_events(&hub, &inbox);
    assert_eq!(events, vec![Event::PartnerConnected, Event::PartnerActive]);
    assert!(hub.acknowledging_now());

    // Nobody acknowledges position 6. A load balancer hears that this primary no longer
    // acknowledges once the batch waited longer than a quarter QoS (500 ms at 2 s); the backup
    // stays active until the QoS timeout itself.
    let since = clock.now();
    assert_eq!(
        hub.acknowledgement(JournalPos(6), since),
        Acknowledged::Waiting
    );
    clock.advance(Duration::from_millis(500));
    assert!(hub.acknowledging_now());
    clock.advance(Duration::from_millis(1));
    assert!(!hub.acknowledging_now());
    clock.advance(Duration::from_millis(1_498));
    assert_eq!(
        hub.acknowledgement(JournalPos(6), since),
        Acknowledged::Waiting
    );
    assert!(
        hub.has_active_backup() && !hub.suspended(),
        "1 ms short of QoS"
    );
    // Past QoS the backup is revoked and told to go, and the batch waits (trouble) until the
    // failover rules resume.
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        hub.acknowledgement(JournalPos(6), since),
        Acknowledged::Waiting
    );
    assert!(hub.suspended() && !hub.may_commit() && !hub.acknowledging_now());
    assert!(!hub.has_active_backup());
    assert!(!outbox.is_open());
    assert!(
        outbox
            .queued_messages()
            .iter()
            .any(|m| matches!(m, Message::Control(c) if matches!(**c, Control::Refused { .. })))
    );
    let (events, generation) = take_events(&hub, &inbox);
    assert_eq!(events, vec![Event::PartnerLost]);
    // A decision taken before a newer loss does not release anything.
    assert!(!hub.resume(generation - 1));
    let before = wakes.load(Ordering::SeqCst);
    assert!(hub.resume(generation));
    assert!(
        wakes.load(Ordering::SeqCst) > before,
        "resuming wakes the writer"
    );
    assert_eq!(hub.acknowledgement(JournalPos(6), since), Acknowledged::Yes);
    // The closing link reports nothing twice.
    hub.unregister(id, "closed");
    assert_eq!(take_events(&hub, &inbox).0, vec![]);
    // Without an active backup nothing waits.
    assert_eq!(
        hub.acknowledgement(JournalPos(7), clock.now()),
        Acknowledged::Yes
    );
}

/// A primary tells load balancers it acknowledges writes only while its active backup was heard
/// from within half a QoS (it acknowledges at least every quarter), whatever waits.
#[test]
fn an_active_backup_silent_for_half_a_qos_stops_the_primary_saying_it_acknowledges() {
    let (hub, _inbox, clock) = hub_on_clock(2_000);
    hub.reset(JournalPos(0));
    let (id, _outbox, _) = hub.register(member("B", MemberKind::Failover)).unwrap();
    hub.on_ack(id, JournalPos(0));
    clock.advance(Duration::from_millis(1_000));
    assert!(hub.acknowledging_now(), "heard half a QoS ago");
    clock.advance(Duration::from_millis(1));
    assert!(!hub.acknowledging_now(), "silent for longer");
    hub.on_ack(id, JournalPos(0));
    assert!(hub.acknowledging_now(), "heard again");
}

#[test]
fn losing_an_active_backup_suspends_at_once_and_closing_answers_no() {
    let (hub, _inbox) = hub_with_inbox(60_000);
    hub.reset(JournalPos(0));
    let (id, _outbox, _) = hub.register(member("B", MemberKind::Failover)).unwrap();
    hub.on_ack(id, JournalPos(0));
    hub.unregister(id, "connection lost");
    assert!(hub.suspended());
    assert_eq!(
        hub.acknowledgement(JournalPos(1), Instant::now()),
        Acknowledged::Waiting
    );
    hub.close_all("stopping");
    assert_eq!(
        hub.acknowledgement(JournalPos(1), Instant::now()),
        Acknowledged::Closed
    );
}

#[test]
fn a_backup_that_stood_down_is_not_made_active_again_by_its_acknowledgements() {
    let (hub, _inbox) = hub_with_inbox(60_000);
    hub.reset(JournalPos(0));
    let (id, _, _) = hub.register(member("B", MemberKind::Failover)).unwrap();
    hub.on_ack(id, JournalPos(0));
    assert!(hub.has_active_backup());
    hub.on_stood_down(id);
    assert!(!hub.has_active_backup());
    hub.on_ack(id, JournalPos(0));
    assert!(!hub.has_active_backup(), "active again after standing down");
    // Its link closing next is no trouble.
    hub.unregister(id, "it stopped");
    assert!(!hub.suspended());
}

/// A stand-down the arbiter relays for the latest activation ends that link's active status at
/// once (commits stop waiting for it), quietly; a stale one changes nothing, and a link made
/// since may still catch up.
#[test]
fn a_stand_down_relayed_by_the_arbiter_stops_the_wait_for_that_activation_only() {
    let (hub, inbox) = hub_with_inbox(60_000);
    hub.reset(JournalPos(0));
    let (id, _, _) = hub.register(member("B", MemberKind::Failover)).unwrap();
    hub.on_ack(id, JournalPos(0));
    let first = hub.last_activation();
    let _ = take_events(&hub, &inbox);
    assert!(!hub.relayed_stand_down(first.wrapping_add(1)), "stale");
    assert!(hub.has_active_backup());
    hub.publish_end_for_tests(JournalPos(1));
    assert_eq!(
        hub.acknowledgement(JournalPos(1), Instant::now()),
        Acknowledged::Waiting
    );
    assert!(hub.relayed_stand_down(first));
    assert!(!hub.has_active_backup() && !hub.suspended());
    assert_eq!(
        hub.acknowledgement(JournalPos(1), Instant::now()),
        Acknowledged::Yes
    );
    assert_eq!(
        take_events(&hub, &inbox).0,
        vec![],
        "the driver tells its rules"
    );
    hub.on_ack(id, JournalPos(1));
    assert!(!hub.has_active_backup(), "active again on the link it left");
    // The backup reconnects: the new link catches up and becomes active; the old stand-down,
    // relayed late, does not end it.
    let (id, _, _) = hub.register(member("B", MemberKind::Failover)).unwrap();
    assert!(
        !hub.relayed_stand_down(first),
        "no active link to end: the new one is not active yet"
    );
    hub.on_ack(id, JournalPos(1));
    assert!(hub.has_active_backup());
    assert!(!hub.relayed_stand_down(first));
    assert!(hub.has_active_backup());
}

#[test]
fn replacing_an_active_link_counts_as_losing_it_and_the_new_one_must_catch_up() {
    let (hub, inbox) = hub_with_inbox(60_000);
    hub.reset(JournalPos(0));
    let (id, _, _) = hub.register(member("B", MemberKind::Failover)).unwrap();
    hub.on_ack(id, JournalPos(0));
    hub.publish_end_for_tests(JournalPos(3));
    let _ = take_events(&hub, &inbox);
    // A second hello with the same name (the backup reconnecting, or anyone claiming to
    // be it): the active link is lost, acknowledgements are suspended.
    let (second, _, snapshot) = hub.register(member("B", MemberKind::Failover)).unwrap();
    assert_eq!(snapshot, JournalPos(3));
    assert_eq!(
        take_events(&hub, &inbox).0,
        vec![Event::PartnerLost, Event::PartnerConnected]
    );
    assert!(hub.suspended() && !hub.has_active_backup());
    // The new link becomes active only by acknowledging what it was shown; acknowledging
    // beyond what was sent ends it instead.
    hub.on_ack(second, JournalPos(2));
    assert!(!hub.has_active_backup());
    hub.on_ack(second, JournalPos(9));
    assert!(!hub.has_active_backup());
    assert!(hub.links()[0].acked < JournalPos(9));
}

#[test]
fn a_waiting_batch_counts_against_the_primary_after_a_quarter_qos_but_never_under_500_ms() {
    let ms = |ms| Duration::from_millis(ms);
    assert_eq!(longest_ack_wait(ms(8_000)), ms(2_000));
    assert_eq!(longest_ack_wait(ms(2_000)), ms(500));
    assert_eq!(longest_ack_wait(ms(1_000)), ms(500));
    // Never more than half: a balancer keeps some of the QoS to move writes elsewhere.
    assert_eq!(longest_ack_wait(ms(600)), ms(300));
}
