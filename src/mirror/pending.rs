//! Pending New Members: the certificates that asked to join a mirror requiring SSL/TLS and that
//! nobody has authorized — the list an administrator judges on the primary's Edit Mirror page.
//!
//! # A request is a name and a certificate
//!
//! Anyone who reaches the superserver can say `hello` under any member name; only the
//! certificate says who is asking (the TLS handshake proves that the peer holds its key). So a
//! request is identified by both, and Authorize, Reject and Remove name both: the administrator
//! admits exactly the fingerprint they compared with the one the member's own Edit Mirror page
//! shows. A hello never touches another certificate's request — once, a stranger's hello under
//! a waiting name replaced the certificate there, even lifting a Reject, and the next Authorize
//! admitted the stranger. A second certificate under a name that already asked is a request of
//! its own, flagged ([`PendingMember::another_certificate`]) so the administrator knows that at
//! least one of them is not who it says it is.
//!
//! # Bounded, and cleared
//!
//! The requests live in the configuration file, so they must not grow without end, and
//! strangers must not be able to fill them for good (sixteen junk hellos once shut every new
//! member out, since Reject kept them and nothing else took them away):
//!
//! - at most [`MAX_PENDING`] requests wait at once, at most [`MAX_PENDING_PER_ADDRESS`] from one
//!   source address — one stranger's host cannot take every place;
//! - a request expires [`PENDING_EXPIRY_MS`] after its last hello, a flagged one after
//!   [`FLAGGED_EXPIRY_MS`]. A member that waits asks again every second (which refreshes its
//!   request at most every [`SEEN_STEP_MS`], so the file is not rewritten each time): a real
//!   member keeps its place as long as it waits, abandoned attempts and junk go by themselves;
//! - Reject takes every request showing that certificate off the list and remembers the
//!   certificate (the newest [`MAX_REJECTED`]): its hellos are refused, under any name, and never
//!   listed again. A rejected certificate stays rejected until someone authorizes it or removes
//!   the rejection;
//! - Remove takes a request off the list (listed again if it asks again), or forgets a
//!   rejection.
//!
//! A full list refuses only new requests. A member the mirror already lists never gets here:
//! its hello is judged by its authorized certificate alone, so strangers cannot crowd it out.
//!
//! The requests are plain data in [`Membership::pending`](crate::config::mirror::Membership), waiting
//! and rejected ones side by side; the functions here are pure — the caller passes the time —
//! so every rule is a unit test below.

use std::net::IpAddr;

use crate::error::{Error, Result};

use crate::config::mirror::{MemberInfo, PendingMember};

/// Most requests waiting at once (a mirror has at most 16 members).
pub const MAX_PENDING: usize = 16;
/// Most requests waiting at once from one source address.
pub const MAX_PENDING_PER_ADDRESS: usize = 4;
/// Most rejected certificates remembered; the oldest rejection is forgotten first.
pub const MAX_REJECTED: usize = 64;
/// How long a request waits after its last hello (two hours: long enough for an
/// administrator's lunch while the member keeps asking, short enough to clear what was left).
pub const PENDING_EXPIRY_MS: i64 = 2 * 3600 * 1000;
/// How long a flagged request (another certificate already asked under its name) waits after
/// its last hello: a real member keeps asking, a stranger's one-off attempt goes sooner.
pub const FLAGGED_EXPIRY_MS: i64 = 15 * 60 * 1000;
/// A request's last hello is written down again only when it is older than this.
pub const SEEN_STEP_MS: i64 = 60 * 1000;

/// What a hello from a certificate nobody authorized did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A new request is listed.
    Listed,
    /// The request was listed already and still waits.
    Waiting,
    /// The certificate was rejected: refused, not listed.
    Rejected,
}

/// What Reject did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The certificate is rejected now; this many other requests showing it left the list too.
    Now { others: usize },
    /// It was rejected before.
    Already,
}

/// What Remove took away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// A waiting request.
    Request,
    /// A remembered rejection.
    Rejection,
}

/// When `p`'s last hello was.
fn last_seen(p: &PendingMember) -> i64 {
    p.last_ms.max(p.since_ms)
}

/// When a waiting request leaves the list unless it asks again.
pub fn expires_ms(p: &PendingMember) -> i64 {
    last_seen(p)
        + if p.another_certificate {
            FLAGGED_EXPIRY_MS
        } else {
            PENDING_EXPIRY_MS
        }
}

fn is_waiting(p: &PendingMember, now_ms: i64) -> bool {
    !p.rejected && now_ms < expires_ms(p)
}

/// The requests waiting at `now_ms`, oldest first.
pub fn waiting(list: &[PendingMember], now_ms: i64) -> impl Iterator<Item = &PendingMember> {
    list.iter().filter(move |p| is_waiting(p, now_ms))
}

/// The rejected certificates remembered.
pub fn rejected(list: &[PendingMember]) -> impl Iterator<Item = &PendingMember> {
    list.iter().filter(|p| p.rejected)
}

/// Drops the requests that expired by `now_ms`.
pub fn prune(list: &mut Vec<PendingMember>, now_ms: i64) {
    list.retain(|p| p.rejected || is_waiting(p, now_ms));
}

fn same(p: &PendingMember, name: &str, certificate: &str) -> bool {
    p.info.name == name && p.info.certificate.as_deref() == Some(certificate)
}

/// A hello from `member` (whose `certificate` is the one it showed), not a member of the mirror,
/// from source address `from` at `now_ms`. Refused with a reason when the list has no place
/// for a new request.
pub fn hear(
    list: &mut Vec<PendingMember>,
    member: &MemberInfo,
    from: Option<IpAddr>,
    now_ms: i64,
) -> Result<Heard> {
    let Some(certificate) = member.certificate.as_deref() else {
        return Err(Error::Conflict(format!(
            "{} shows no certificate",
            member.name
        )));
    };
    // A rejected certificate stays rejected, whatever name it gives.
    if list
        .iter()
        .any(|p| p.rejected && p.info.certificate.as_deref() == Some(certificate))
    {
        return Ok(Heard::Rejected);
    }
    prune(list, now_ms);
    if let Some(p) = list.iter_mut().find(|p| same(p, &member.name, certificate)) {
        // The same key holder may have corrected its addresses; it is still the same request.
        if p.info != *member {
            p.info = member.clone();
        }
        if now_ms - last_seen(p) >= SEEN_STEP_MS {
            p.last_ms = now_ms;
        }
        return Ok(Heard::Waiting);
    }
    let from = from.map(|ip| ip.to_canonical().to_string());
    if let Some(from) = &from {
        let asked_there = waiting(list, now_ms)
            .filter(|p| p.asked_from.as_ref() == Some(from))
            .count();
        if asked_there >= MAX_PENDING_PER_ADDRESS {
            return Err(Error::Conflict(format!(
                "{asked_there} requests from {from} already wait for authorization on the \
                 primary, the most one address may have"
            )));
        }
    }
    if waiting(list, now_ms).count() >= MAX_PENDING {
        return Err(Error::Conflict(format!(
            "{MAX_PENDING} members already wait for authorization on the primary: authorize, \
             reject or remove them first"
        )));
    }
    let another_certificate = list.iter().any(|p| p.info.name == member.name);
    list.push(PendingMember {
        info: member.clone(),
        since_ms: now_ms,
        rejected: false,
        last_ms: now_ms,
        asked_from: from,
        another_certificate,
    });
    Ok(Heard::Listed)
}

/// The error for a request (or rejection) that is not there, saying what is.
fn not_found(list: &[PendingMember], name: &str, certificate: &str, now_ms: i64) -> Error {
    let under_name: Vec<&str> = list
        .iter()
        .filter(|p| p.info.name == name && (p.rejected || is_waiting(p, now_ms)))
        .filter_map(|p| p.info.certificate.as_deref())
        .collect();
    Error::NotFound(if under_name.is_empty() {
        format!("no member named {name} waits for authorization")
    } else {
        format!(
            "no member named {name} waits for authorization with certificate {certificate}; \
             under that name: {}",
            under_name.join(", ")
        )
    })
}

/// Takes the request (waiting, or rejected before) of `name` with `certificate` off the list
/// to admit it, and with it every other request under that name: the name is the member's
/// from now on, and other certificates giving it are refused as not the authorized one.
pub fn authorize(
    list: &mut Vec<PendingMember>,
    name: &str,
    certificate: &str,
    now_ms: i64,
) -> Result<PendingMember> {
    let Some(index) = list
        .iter()
        .position(|p| same(p, name, certificate) && (p.rejected || is_waiting(p, now_ms)))
    else {
        return Err(not_found(list, name, certificate, now_ms));
    };
    let admitted = list.remove(index);
    list.retain(|p| p.rejected || p.info.name != name);
    Ok(admitted)
}

/// Rejects the certificate of `name`'s request: every waiting request showing it leaves the
/// list, and the certificate is remembered (the newest [`MAX_REJECTED`]).
pub fn reject(
    list: &mut Vec<PendingMember>,
    name: &str,
    certificate: &str,
    now_ms: i64,
) -> Result<Rejected> {
    let Some(index) = list
        .iter()
        .position(|p| same(p, name, certificate) && (p.rejected || is_waiting(p, now_ms)))
    else {
        return Err(not_found(list, name, certificate, now_ms));
    };
    if list[index].rejected {
        return Ok(Rejected::Already);
    }
    list[index].rejected = true;
    list[index].last_ms = now_ms;
    let before = list.len();
    list.retain(|p| p.rejected || p.info.certificate.as_deref() != Some(certificate));
    let others = before - list.len();
    // The oldest rejections are forgotten first.
    while rejected(list).count() > MAX_REJECTED {
        if let Some(oldest) = list
            .iter()
            .enumerate()
            .filter(|(_, p)| p.rejected)
            .min_by_key(|(_, p)| p.last_ms)
            .map(|(i, _)| i)
        {
            list.remove(oldest);
        }
    }
    Ok(Rejected::Now { others })
}

/// Removes `name`'s request with `certificate`, or forgets that certificate's rejection.
pub fn remove(
    list: &mut Vec<PendingMember>,
    name: &str,
    certificate: &str,
    now_ms: i64,
) -> Result<Removed> {
    let Some(index) = list
        .iter()
        .position(|p| same(p, name, certificate) && (p.rejected || is_waiting(p, now_ms)))
    else {
        return Err(not_found(list, name, certificate, now_ms));
    };
    Ok(if list.remove(index).rejected {
        Removed::Rejection
    } else {
        Removed::Request
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mirror::MemberKind;

    const T0: i64 = 1_800_000_000_000;

    fn member(name: &str, certificate: &str) -> MemberInfo {
        MemberInfo {
            name: crate::config::mirror::MemberName::new(name).unwrap(),
            kind: MemberKind::Failover,
            superserver_address: "10.0.0.2".into(),
            mirror_private_address: "10.0.0.2".into(),
            agent_address: "10.0.0.2".into(),
            agent_port: 2188,
            instance_guid: "guid".into(),
            certificate: Some(certificate.into()),
        }
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    fn names(list: &[PendingMember], now: i64) -> Vec<(String, String)> {
        waiting(list, now)
            .map(|p| (p.info.name.to_string(), p.info.certificate.clone().unwrap()))
            .collect()
    }

    fn pair(name: &str, certificate: &str) -> (String, String) {
        (name.into(), certificate.into())
    }

    #[test]
    fn a_second_certificate_under_a_waiting_name_is_listed_apart_and_flagged() {
        let mut list = Vec::new();
        let b = member("B", "real");
        assert_eq!(hear(&mut list, &b, ip("10.0.0.2"), T0), Ok(Heard::Listed));
        let stranger = member("B", "stranger");
        assert_eq!(
            hear(&mut list, &stranger, ip("10.0.0.9"), T0 + 1),
            Ok(Heard::Listed)
        );
        assert_eq!(
            names(&list, T0 + 2),
            [pair("B", "real"), pair("B", "stranger")]
        );
        assert!(!list[0].another_certificate && list[1].another_certificate);
        assert_eq!(list[1].asked_from.as_deref(), Some("10.0.0.9"));
        // The real one asking again changes nothing of the stranger's, and the other way round.
        assert_eq!(
            hear(&mut list, &b, ip("10.0.0.2"), T0 + 3),
            Ok(Heard::Waiting)
        );
        assert_eq!(list[0].info, b);
        assert_eq!(list[1].info, stranger);
        // Authorize admits exactly the certificate named, and the name's other request goes.
        let err = authorize(&mut list, "B", "unknown", T0 + 4).unwrap_err();
        assert!(
            err.to_string().contains("under that name: real, stranger"),
            "{err}"
        );
        let admitted = authorize(&mut list, "B", "real", T0 + 4).unwrap();
        assert_eq!(admitted.info, b);
        assert!(list.is_empty());
    }

    #[test]
    fn a_rejected_certificate_stays_rejected_under_any_name() {
        let mut list = Vec::new();
        hear(&mut list, &member("C", "c"), ip("10.0.0.3"), T0).unwrap();
        hear(&mut list, &member("X", "c"), ip("10.0.0.3"), T0).unwrap();
        assert_eq!(
            reject(&mut list, "C", "c", T0 + 1),
            Ok(Rejected::Now { others: 1 })
        );
        assert_eq!(reject(&mut list, "C", "c", T0 + 2), Ok(Rejected::Already));
        assert!(names(&list, T0 + 2).is_empty(), "off the list");
        for name in ["C", "Y"] {
            assert_eq!(
                hear(&mut list, &member(name, "c"), ip("10.0.0.4"), T0 + 3),
                Ok(Heard::Rejected)
            );
        }
        assert!(names(&list, T0 + 3).is_empty(), "not listed again");
        // Another certificate under the rejected name is a request of its own, flagged, and
        // lifts nothing.
        assert_eq!(
            hear(&mut list, &member("C", "other"), ip("10.0.0.4"), T0 + 4),
            Ok(Heard::Listed)
        );
        let other = waiting(&list, T0 + 4).next().unwrap();
        assert!(other.another_certificate);
        assert_eq!(rejected(&list).count(), 1);
        // Removing the rejection forgets it: the next hello is listed.
        assert_eq!(remove(&mut list, "C", "c", T0 + 5), Ok(Removed::Rejection));
        assert_eq!(
            hear(&mut list, &member("C", "c"), ip("10.0.0.3"), T0 + 6),
            Ok(Heard::Listed)
        );
    }

    #[test]
    fn requests_expire_unless_their_member_keeps_asking() {
        let mut list = Vec::new();
        let b = member("B", "b");
        hear(&mut list, &b, ip("10.0.0.2"), T0).unwrap();
        // (Half a second later, so that they do not expire at the moment B's request is
        // written down again.)
        hear(&mut list, &member("B", "flagged"), ip("10.0.0.9"), T0 + 500).unwrap();
        hear(&mut list, &member("GONE", "g"), ip("10.0.0.5"), T0 + 500).unwrap();
        // B asks every second; its request is written down again once a minute only (and the
        // list changes twice more, when the others expire).
        let (mut now, mut changes) = (T0, 0);
        while now < T0 + PENDING_EXPIRY_MS + 10_000 {
            now += 1000;
            let before = list.clone();
            assert_eq!(hear(&mut list, &b, ip("10.0.0.2"), now), Ok(Heard::Waiting));
            changes += usize::from(list != before);
        }
        assert_eq!(changes as i64, (now - T0) / SEEN_STEP_MS + 2);
        // The flagged request went after its shorter time, the abandoned one after its own;
        // B stays.
        assert_eq!(names(&list, now), [pair("B", "b")]);
        assert_eq!(list.len(), 1, "pruned from the file too");
        // Authorize and Reject refuse what expired.
        hear(&mut list, &member("LATE", "l"), ip("10.0.0.6"), now).unwrap();
        let later = now + PENDING_EXPIRY_MS;
        assert!(authorize(&mut list, "LATE", "l", later).is_err());
        assert!(reject(&mut list, "LATE", "l", later).is_err());
    }

    #[test]
    fn the_list_is_bounded_in_all_and_per_address() {
        let mut list = Vec::new();
        let address = |i: usize| ip(&format!("10.0.1.{}", i / MAX_PENDING_PER_ADDRESS));
        for i in 0..MAX_PENDING {
            let asked = hear(
                &mut list,
                &member(&format!("M{i}"), &format!("c{i}")),
                address(i),
                T0,
            );
            assert_eq!(asked, Ok(Heard::Listed), "{i}");
        }
        // One address more than its share: refused, whatever the total.
        let mut small = list[..MAX_PENDING_PER_ADDRESS].to_vec();
        let err = hear(&mut small, &member("N", "n"), address(0), T0).unwrap_err();
        assert!(err.to_string().contains("from 10.0.1.0"), "{err}");
        // The whole list full: refused from anywhere, while those listed still wait.
        let err = hear(&mut list, &member("N", "n"), ip("10.9.9.9"), T0).unwrap_err();
        assert!(err.to_string().contains("already wait"), "{err}");
        assert_eq!(
            hear(&mut list, &member("M0", "c0"), address(0), T0),
            Ok(Heard::Waiting)
        );
        // Remove makes room; expiry too.
        assert_eq!(remove(&mut list, "M0", "c0", T0), Ok(Removed::Request));
        assert_eq!(
            hear(&mut list, &member("N", "n"), ip("10.9.9.9"), T0),
            Ok(Heard::Listed)
        );
        let later = T0 + PENDING_EXPIRY_MS;
        assert_eq!(
            hear(&mut list, &member("O", "o"), ip("10.9.9.8"), later),
            Ok(Heard::Listed)
        );
        assert_eq!(list.len(), 1);
        // Rejections are remembered up to their own bound, the oldest forgotten first.
        let mut list = Vec::new();
        for i in 0..=MAX_REJECTED {
            let (name, certificate) = (format!("R{i}"), format!("r{i}"));
            let at = T0 + i as i64;
            hear(
                &mut list,
                &member(&name, &certificate),
                ip(&format!("10.2.{}.1", i / 4)),
                at,
            )
            .unwrap();
            reject(&mut list, &name, &certificate, at).unwrap();
        }
        assert_eq!(rejected(&list).count(), MAX_REJECTED);
        assert!(!list.iter().any(|p| p.info.name == "R0"));
    }

    #[test]
    fn an_unlisted_certificate_gets_a_clear_answer() {
        let mut list = Vec::new();
        for action in [
            authorize(&mut list, "NOBODY", "x", T0).map(|_| ()),
            reject(&mut list, "NOBODY", "x", T0).map(|_| ()),
            remove(&mut list, "NOBODY", "x", T0).map(|_| ()),
        ] {
            let err = action.unwrap_err();
            assert!(matches!(err, Error::NotFound(_)));
            assert_eq!(
                err.to_string(),
                "no member named NOBODY waits for authorization"
            );
        }
    }
}
