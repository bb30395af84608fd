//! What the forms and `/api` send for Create, Join and Edit: the requests, as they are deserialized.

use super::*;

/// Create a Mirror, as the form and `POST /api/mirror/create` send it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateRequest {
    /// Mirror Name.
    pub mirror_name: String,
    /// Use Arbiter.
    #[serde(default)]
    pub use_arbiter: bool,
    /// Arbiter host.
    #[serde(default)]
    pub arbiter_address: String,
    /// Arbiter port (2188).
    #[serde(default)]
    pub arbiter_port: Option<u16>,
    /// Mirror Member Name (default HOST/INSTANCE).
    #[serde(default)]
    pub member_name: Option<String>,
    /// Superserver Address (default: this host).
    #[serde(default)]
    pub superserver_address: Option<String>,
    /// Agent Port (default: the local agent's).
    #[serde(default)]
    pub agent_port: Option<u16>,
    /// Quality of Service Timeout (ms).
    #[serde(default)]
    pub qos_timeout_ms: Option<u64>,
    /// Require SSL/TLS.
    #[serde(default)]
    pub require_tls: bool,
    /// Use Virtual IP.
    #[serde(default)]
    pub use_virtual_ip: bool,
    /// Mirror Private Address (default: the superserver address).
    #[serde(default)]
    pub mirror_private_address: Option<String>,
    /// Agent Address (default: the superserver address's host).
    #[serde(default)]
    pub agent_address: Option<String>,
}

/// Join as Failover, first step: where the mirror's primary is.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JoinInfoRequest {
    /// Mirror Name.
    pub mirror_name: String,
    /// Agent Address on Other System.
    pub agent_address: String,
    /// Agent Port.
    #[serde(default)]
    pub agent_port: Option<u16>,
    /// InterSystems IRIS Instance Name.
    #[serde(default)]
    pub instance_name: Option<String>,
}

/// Join as Failover, both steps (`POST /api/mirror/join-failover`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JoinRequest {
    /// The first step's fields.
    #[serde(flatten)]
    pub info: JoinInfoRequest,
    /// Mirror Member Name (default HOST/INSTANCE).
    #[serde(default)]
    pub member_name: Option<String>,
    /// Superserver Address.
    #[serde(default)]
    pub superserver_address: Option<String>,
    /// Mirror Private Address.
    #[serde(default)]
    pub mirror_private_address: Option<String>,
    /// This member's Agent Address.
    #[serde(default)]
    pub agent_address_local: Option<String>,
    /// This member's Agent Port.
    #[serde(default)]
    pub agent_port_local: Option<u16>,
    /// Join as Async: `dr`, `reporting_ro` or `reporting_rw` (Async Member System Type).
    #[serde(default)]
    pub async_type: Option<String>,
}

/// Most async members a mirror has (16 members in all).
pub const MAX_ASYNC_MEMBERS: usize = 14;

/// The Async Member System Type named in a request.
pub fn async_kind(raw: Option<&str>) -> Result<MemberKind> {
    match raw.map(|t| t.trim().to_ascii_lowercase()).as_deref() {
        Some("dr") | Some("disaster recovery") | None => Ok(MemberKind::Dr),
        Some("reporting_ro") | Some("read-only reporting") => Ok(MemberKind::ReportingRo),
        Some("reporting_rw") | Some("read-write reporting") => Ok(MemberKind::ReportingRw),
        Some(other) => Err(Error::InvalidInput(format!(
            "Async Member System Type {other:?} is not one of dr, reporting_ro, reporting_rw"
        ))),
    }
}

/// Edit Mirror (`POST /api/mirror/edit`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EditRequest {
    /// New QoS timeout (primary only).
    #[serde(default)]
    pub qos_timeout_ms: Option<u64>,
}
