//! Mirror settings as the configuration file stores them, and the rules their fields follow.
//!
//! Names and defaults follow IRIS: a mirror name is 1–15 letters and digits, upper-cased; a member
//! name is at most 32 characters, upper-cased, defaulting to `HOST/INSTANCE`; the quality of
//! service timeout defaults to 8000 ms; the agent port to 2188 and the superserver port to 1972.
//! Addresses may carry a port (`127.0.0.1:19720`); without one the default port applies, which
//! is what lets several members share one host in tests.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::journal::{Epoch, StreamId};
use crate::names::DbName;

/// IRIS's default quality of service timeout.
pub const DEFAULT_QOS_MS: u64 = 8000;
/// Smallest QoS timeout accepted.
pub const MIN_QOS_MS: u64 = 200;
/// Largest QoS timeout accepted.
pub const MAX_QOS_MS: u64 = 60_000;
/// Default agent port.
pub const DEFAULT_AGENT_PORT: u16 = 2188;
/// Default superserver port.
pub const DEFAULT_SUPERSERVER_PORT: u16 = 1972;
/// Longest member name.
pub const MAX_MEMBER_NAME: usize = 32;

/// Characters a typed member name may not contain (`/` is allowed once, as in `HOST/INSTANCE`).
const FORBIDDEN_IN_MEMBER_NAME: &[char] =
    &[' ', '\t', ':', '[', ']', '#', ';', '*', '=', '^', '~', ','];

/// Checks and upper-cases a mirror name: 1–15 letters and digits.
pub fn mirror_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() || name.len() > 15 || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(Error::InvalidInput(format!(
            "Mirror Name {name:?} is not valid: use 1 to 15 letters and digits"
        )));
    }
    Ok(name.to_ascii_uppercase())
}

/// Checks and upper-cases a member name.
pub fn member_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(Error::InvalidInput("Mirror Member Name is required".into()));
    }
    if name.chars().count() > MAX_MEMBER_NAME {
        return Err(Error::InvalidInput(format!(
            "Mirror Member Name {name:?} is too long (at most {MAX_MEMBER_NAME} characters)"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| FORBIDDEN_IN_MEMBER_NAME.contains(c) || crate::names::is_hidden_character(*c))
    {
        return Err(Error::InvalidInput(format!(
            "Mirror Member Name {name:?} may not contain {bad:?}"
        )));
    }
    if name.matches('/').count() > 1 || name.starts_with('/') || name.ends_with('/') {
        return Err(Error::InvalidInput(format!(
            "Mirror Member Name {name:?} may contain one / between two parts (HOST/INSTANCE)"
        )));
    }
    Ok(name.to_ascii_uppercase())
}

/// A mirror member's name (`MIRRORA/IRIS`), checked and upper-cased by [`member_name`]'s rules
/// wherever it comes from: a form, the configuration file, another member's message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemberName(String);

impl MemberName {
    /// Checks and upper-cases a member name.
    pub fn new(raw: &str) -> Result<MemberName> {
        member_name(raw).map(MemberName)
    }

    /// The upper-cased name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MemberName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for MemberName {
    type Error = Error;
    fn try_from(raw: String) -> Result<MemberName> {
        MemberName::new(&raw)
    }
}

impl From<MemberName> for String {
    fn from(name: MemberName) -> String {
        name.0
    }
}

impl std::ops::Deref for MemberName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for MemberName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for MemberName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for MemberName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// The default member name `HOST/INSTANCE`, or empty when that would be too long (as IRIS does).
pub fn default_member_name(host: &str, instance: &str) -> String {
    let name = format!("{host}/{instance}").to_ascii_uppercase();
    if name.chars().count() > MAX_MEMBER_NAME {
        String::new()
    } else {
        name
    }
}

/// Splits `host[:port]` (IPv6 as `[addr]:port`), checking both parts.
pub fn split_address(raw: &str, default_port: u16) -> Result<(String, u16)> {
    let text = raw.trim();
    let bad = || {
        Error::InvalidInput(format!(
            "address {text:?} is not a host name or IP address (with an optional :port)"
        ))
    };
    if text.is_empty() {
        return Err(Error::InvalidInput("an address is required".into()));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        (host.to_string(), port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host.to_string(), Some(port)),
            Some(_) => return Err(bad()),
            None => (text.to_string(), None),
        }
    };
    if !text.starts_with('[')
        && (host.is_empty()
            || host.len() > 253
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
            || host.starts_with('-'))
    {
        return Err(bad());
    }
    let port = match port {
        None => default_port,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            Error::InvalidInput(format!(
                "port {p:?} in address {text:?} is not a number from 1 to 65535"
            ))
        })?,
    };
    Ok((host, port))
}

/// Normalises an address for storage: `host` when it uses the default port, else `host:port`.
pub fn normalize_address(raw: &str, default_port: u16) -> Result<String> {
    let (host, port) = split_address(raw, default_port)?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(if port == default_port {
        host
    } else {
        format!("{host}:{port}")
    })
}

/// `host:port` to connect to.
pub fn connect_address(address: &str, default_port: u16) -> Result<String> {
    let (host, port) = split_address(address, default_port)?;
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// What kind of member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberKind {
    /// One of the two failover members.
    Failover,
    /// Disaster recovery async.
    Dr,
    /// Read-only reporting async.
    ReportingRo,
    /// Read-write reporting async.
    ReportingRw,
}

impl MemberKind {
    /// The Type column of the Mirror Monitor.
    pub fn display(self) -> &'static str {
        match self {
            MemberKind::Failover => "Failover",
            MemberKind::Dr => "Disaster Recovery",
            MemberKind::ReportingRo => "Read-Only Reporting",
            MemberKind::ReportingRw => "Read-Write Reporting",
        }
    }
}

/// One member of a mirror, as every member knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Member name (`MIRRORA/IRIS`).
    pub name: MemberName,
    /// Failover or async.
    pub kind: MemberKind,
    /// Superserver address (clients and other members).
    pub superserver_address: String,
    /// Address the data channel uses.
    pub mirror_private_address: String,
    /// The host's agent address.
    pub agent_address: String,
    /// The agent's port.
    pub agent_port: u16,
    /// The instance's id.
    pub instance_guid: String,
    /// The SHA-256 fingerprint of the member's TLS certificate (see [`crate::tls`]). In a
    /// mirror that requires SSL/TLS, the only certificate other members accept from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// A certificate that asked to join a mirror requiring SSL/TLS under a member name, and waits
/// for someone on the primary to Authorize, Reject or Remove it (Edit Mirror → Pending New
/// Members) — or, once rejected, the remembered rejection. The rules are in
/// [`crate::mirror::pending`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingMember {
    /// The member as it described itself; its `certificate` is the fingerprint it showed.
    pub info: MemberInfo,
    /// When it first asked (ms since the Unix epoch).
    pub since_ms: i64,
    /// Rejected: no longer a request but a remembered rejection; hellos showing this
    /// certificate are refused and not listed again.
    #[serde(default)]
    pub rejected: bool,
    /// Its last hello, written down at most once a minute (a request expires some time after
    /// it); for a rejection, when it was rejected. 0 in files written before: `since_ms` counts.
    #[serde(default)]
    pub last_ms: i64,
    /// The source address of its first hello (which may differ from the addresses it claims).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_from: Option<String>,
    /// Another certificate had already asked under this member name when this one first did:
    /// at most one of them is the member it claims to be.
    #[serde(default)]
    pub another_certificate: bool,
}

impl MemberInfo {
    /// Where to open the data channel to this member.
    pub fn data_channel_address(&self) -> Result<String> {
        connect_address(&self.mirror_private_address, DEFAULT_SUPERSERVER_PORT)
    }

    /// Where this member's agent listens.
    pub fn agent_connect_address(&self) -> Result<String> {
        connect_address(&self.agent_address, self.agent_port)
    }

    /// Whether `ip` is an address of this member: one its configured superserver, mirror
    /// private or agent address resolves to (host names are resolved now, so a container that
    /// came back with a new address is still recognised).
    pub fn has_address(&self, ip: std::net::IpAddr) -> bool {
        self.addresses().contains(&ip.to_canonical())
    }

    /// Every IP address this member's superserver, mirror private and agent addresses resolve
    /// to now (host names through the resolver, which may take a while).
    pub fn addresses(&self) -> Vec<std::net::IpAddr> {
        use std::net::ToSocketAddrs;
        [
            connect_address(&self.superserver_address, DEFAULT_SUPERSERVER_PORT),
            self.data_channel_address(),
            self.agent_connect_address(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|address| address.to_socket_addrs().ok())
        .flatten()
        .map(|resolved| resolved.ip().to_canonical())
        .collect()
    }

    /// The same member with `other`'s addresses: a `hello` never changes a configured
    /// member's addresses (Remove Other Mirror Member, then Join again, does).
    pub fn keeping_addresses_of(&self, other: &MemberInfo) -> MemberInfo {
        MemberInfo {
            superserver_address: other.superserver_address.clone(),
            mirror_private_address: other.mirror_private_address.clone(),
            agent_address: other.agent_address.clone(),
            agent_port: other.agent_port,
            ..self.clone()
        }
    }
}

/// The mirror as a whole (what Create Mirror defines; the primary's copy is authoritative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorDefinition {
    /// Mirror name (`MIRRORSET`).
    pub name: String,
    /// The mirror's id: its journal's stream id.
    pub id: StreamId,
    /// Quality of service timeout (ms).
    pub qos_timeout_ms: u64,
    /// Whether an arbiter is configured.
    pub use_arbiter: bool,
    /// Arbiter host.
    pub arbiter_address: String,
    /// Arbiter port.
    pub arbiter_port: u16,
    /// Require SSL/TLS: mutual TLS on the data channel and agent connections, and new members
    /// wait for authorization on the primary.
    pub require_tls: bool,
    /// Allow Parallel Dejournaling setting (shown; dejournaling here is ordered per database).
    pub parallel_dejournaling: String,
    /// Compression mode for failover members (shown).
    pub compression_failover: String,
    /// Compression mode for async members (shown).
    pub compression_async: String,
    /// No Failover: the member that must stay primary (IRIS's `DefinedPrimary`). While it is
    /// set the backup does not take over; it is cleared when that member resumes as primary
    /// after a restart, or by Clear No Failover.
    #[serde(default)]
    pub defined_primary: Option<MemberName>,
}

impl MirrorDefinition {
    /// `host|port` as the monitor shows the arbiter, or empty.
    pub fn arbiter_display(&self) -> String {
        if self.use_arbiter {
            format!("{}|{}", self.arbiter_address, self.arbiter_port)
        } else {
            String::new()
        }
    }
}

/// A database of the mirror: what Add to Mirror recorded on the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirroredDatabase {
    /// Local name (also the mirror database name).
    pub name: DbName,
    /// The database's id; a copy must carry the same one.
    pub guid: String,
    /// Journal position of the event that added it.
    pub added_at: u64,
}

impl MirroredDatabase {
    /// `:mirror:MIRRORSET:COMPANY`.
    pub fn mirror_path(&self, mirror: &str) -> String {
        format!(":mirror:{mirror}:{}", self.name)
    }
}

/// This instance's membership in a mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The mirror.
    pub mirror: MirrorDefinition,
    /// This member.
    pub this: MemberInfo,
    /// The other members known.
    #[serde(default)]
    pub others: Vec<MemberInfo>,
    /// Whether this member was the primary when it last ran.
    #[serde(default)]
    pub was_primary: bool,
    /// The mirror's databases.
    #[serde(default)]
    pub databases: Vec<MirroredDatabase>,
    /// Databases activated on this member (their copy may be dejournaled).
    #[serde(default)]
    pub activated: Vec<DbName>,
    /// The member this one follows (its primary), by name.
    #[serde(default)]
    pub primary_name: Option<MemberName>,
    /// Add to Mirror steps begun but not finished (see the writer): completed or dropped at
    /// start-up, depending on whether their journal event was written.
    #[serde(default)]
    pub pending_adds: Vec<MirroredDatabase>,
    /// Where each epoch after the first began in the mirror journal (every takeover starts
    /// one). A member that comes back from an older epoch holds only what came before the
    /// next epoch's start; anything it has after that is a divergent tail.
    #[serde(default)]
    pub epochs: Vec<EpochStart>,
    /// Stop Mirror On This Member (a backup): it does not connect until started again.
    #[serde(default)]
    pub stopped: bool,
    /// Members waiting for authorization (a primary of a mirror that requires SSL/TLS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingMember>,
}

/// The first journal position of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochStart {
    /// The epoch.
    pub epoch: Epoch,
    /// Its first position.
    pub first: u64,
}

/// The last position a member whose newest record is from `last_epoch` shares with the
/// mirror's history: the position before the first epoch that began after it (None: it shares
/// everything it has).
pub fn fork_point(epochs: &[EpochStart], last_epoch: Epoch) -> Option<u64> {
    epochs
        .iter()
        .filter(|e| e.epoch > last_epoch)
        .map(|e| e.first.saturating_sub(1))
        .min()
}

impl Membership {
    /// The member called `name`, this one included.
    pub fn member(&self, name: &str) -> Option<&MemberInfo> {
        std::iter::once(&self.this)
            .chain(&self.others)
            .find(|m| m.name == name)
    }

    /// The other failover member, when the mirror has one (a mirror has at most two failover
    /// members).
    pub fn other_failover(&self) -> Option<&MemberInfo> {
        self.others.iter().find(|o| o.kind == MemberKind::Failover)
    }

    /// Whether `fingerprint` is the certificate of a member of this mirror (this one included):
    /// who may receive journal and make mirror requests when the mirror requires SSL/TLS.
    pub fn authorized(&self, fingerprint: &str) -> bool {
        std::iter::once(&self.this)
            .chain(&self.others)
            .any(|m| m.certificate.as_deref() == Some(fingerprint))
    }

    /// The mirrored database called `name`.
    pub fn database(&self, name: &DbName) -> Option<&MirroredDatabase> {
        self.databases.iter().find(|d| &d.name == name)
    }
}

/// Mirror settings of an instance (IRIS: `%Service_Mirror` and the `[Mirrors]` sections).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorConfig {
    /// Whether the mirror service is enabled.
    #[serde(default)]
    pub service_enabled: bool,
    /// The mirror this instance belongs to.
    #[serde(default)]
    pub membership: Option<Membership>,
}

impl MirrorConfig {
    /// Whether `db` was activated on this member (a copy the journal may be applied to).
    pub fn activated(&self, db: &DbName) -> bool {
        self.membership
            .as_ref()
            .is_some_and(|m| m.activated.contains(db))
    }

    /// Stop Mirror On This Member is in effect.
    pub fn stopped(&self) -> bool {
        self.membership.as_ref().is_some_and(|m| m.stopped)
    }

    /// The membership, or the error every mirror action gives outside a mirror.
    pub fn member(&self) -> Result<&Membership> {
        self.membership
            .as_ref()
            .ok_or_else(|| Error::Conflict("this instance is not a mirror member".into()))
    }

    /// [`Self::member`], to change it.
    pub fn member_mut(&mut self) -> Result<&mut Membership> {
        self.membership
            .as_mut()
            .ok_or_else(|| Error::Conflict("this instance is not a mirror member".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_names_follow_the_rules() {
        assert_eq!(mirror_name(" mirrorset ").unwrap(), "MIRRORSET");
        assert_eq!(mirror_name("A1").unwrap(), "A1");
        for bad in ["", "MIRROR-SET", "MIRROR SET", "ABCDEFGHIJKLMNOP", "naïve"] {
            assert!(mirror_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(mirror_name("ABCDEFGHIJKLMNO").unwrap().len(), 15);
    }

    #[test]
    fn member_names_follow_the_rules() {
        assert_eq!(member_name("mirrorA/iris").unwrap(), "MIRRORA/IRIS");
        assert_eq!(member_name("BACKUP_1").unwrap(), "BACKUP_1");
        for bad in [
            "",
            "a b",
            "a:b",
            "a,b",
            "a/b/c",
            "/a",
            "x=y",
            &"X".repeat(33),
            "MIRRORA\u{200B}/IRIS",
            "\u{202E}SIRI/AGRORRIM",
        ] {
            assert!(member_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(default_member_name("mirrorA", "IRIS"), "MIRRORA/IRIS");
        assert_eq!(default_member_name(&"h".repeat(40), "IRIS"), "");
    }

    #[test]
    fn the_fork_point_is_before_the_first_newer_epoch() {
        let epochs = [
            EpochStart {
                epoch: Epoch(2),
                first: 1501,
            },
            EpochStart {
                epoch: Epoch(3),
                first: 2001,
            },
        ];
        assert_eq!(fork_point(&epochs, Epoch(1)), Some(1500));
        assert_eq!(fork_point(&epochs, Epoch(2)), Some(2000));
        assert_eq!(fork_point(&epochs, Epoch(3)), None);
        assert_eq!(fork_point(&[], Epoch(1)), None);
    }

    #[test]
    fn addresses_may_carry_a_port() {
        assert_eq!(
            split_address("mirrorA", 1972).unwrap(),
            ("mirrorA".into(), 1972)
        );
        assert_eq!(
            split_address("127.0.0.1:19720", 1972).unwrap(),
            ("127.0.0.1".into(), 19720)
        );
        assert_eq!(split_address("[::1]:5", 1972).unwrap(), ("::1".into(), 5));
        assert_eq!(connect_address("[::1]", 2188).unwrap(), "[::1]:2188");
        assert_eq!(normalize_address("mirrorA:1972", 1972).unwrap(), "mirrorA");
        assert_eq!(
            normalize_address("mirrorA:2000", 1972).unwrap(),
            "mirrorA:2000"
        );
        for bad in [
            "",
            "a b",
            "host:0",
            "host:70000",
            "host:x",
            "::1",
            "[zz]:1",
            "-host",
            "a/b",
        ] {
            assert!(split_address(bad, 1972).is_err(), "{bad:?}");
        }
    }
}
