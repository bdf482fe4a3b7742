//! WebSocket tickets: short-lived, single-use passes that open one session's WebSocket for
//! a browser, which cannot set an `Authorization` header on a WebSocket. A caller
//! authenticated by its token asks for one (`POST /v1/sessions/{id}/ws-ticket`) and opens
//! `.../ws?ticket=...` within [`TICKET_TTL`]; the ticket then is spent. The table owns every
//! ticket not yet used: at most [`TICKETS_PER_TENANT`] per tenant (a new one beyond it
//! replaces that tenant's oldest, so no tenant can crowd out another's), expired ones
//! dropped whenever one is issued (no timer sweeps it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Caller, Service, ServiceError, Tenant};

/// How long a ticket can be used after it is issued.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Unused tickets one tenant holds at most.
pub const TICKETS_PER_TENANT: usize = 100;

struct Ticket {
    tenant: Arc<Tenant>,
    session_id: String,
    expires_at: Instant,
}

/// The unused tickets, by their secret.
#[derive(Default)]
pub(super) struct Tickets {
    table: Mutex<HashMap<String, Ticket>>,
}

/// A ticket as the caller gets it.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct WsTicket {
    pub ticket: String,
    /// Seconds it stays usable.
    pub expires_in: f64,
}

impl Tickets {
    fn issue(&self, tenant: Arc<Tenant>, session_id: &str, now: Instant) -> String {
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let Ok(mut table) = self.table.lock() else {
            return secret; // a poisoned table: the ticket is simply never valid
        };
        table.retain(|_, t| t.expires_at > now);
        let name = tenant.config.name.clone();
        let held = table
            .values()
            .filter(|t| t.tenant.config.name == name)
            .count();
        if held >= TICKETS_PER_TENANT {
            let oldest = table
                .iter()
                .filter(|(_, t)| t.tenant.config.name == name)
                .min_by_key(|(_, t)| t.expires_at)
                .map(|(secret, _)| secret.clone());
            if let Some(oldest) = oldest {
                table.remove(&oldest);
            }
        }
        table.insert(
            secret.clone(),
            Ticket {
                tenant,
                session_id: session_id.to_string(),
                expires_at: now + TICKET_TTL,
            },
        );
        secret
    }

    /// The ticket's tenant, if it is unused, unexpired and for `session_id`; spent either
    /// way.
    fn redeem(&self, secret: &str, session_id: &str, now: Instant) -> Option<Arc<Tenant>> {
        let ticket = self.table.lock().ok()?.remove(secret)?;
        (ticket.expires_at > now && ticket.session_id == session_id).then_some(ticket.tenant)
    }
}

impl Service {
    /// A ticket that opens the WebSocket of the caller's session `id` once, within
    /// [`TICKET_TTL`].
    pub fn issue_ws_ticket(&self, caller: &Caller, id: &str) -> Result<WsTicket, ServiceError> {
        self.session(caller, id)?; // the caller's own, live session
        let ticket = self
            .inner
            .tickets
            .issue(caller.tenant.clone(), id, Instant::now());
        Ok(WsTicket {
            ticket,
            expires_in: TICKET_TTL.as_secs_f64(),
        })
    }

    /// The caller a WebSocket ticket stands for (spending it), after its tenant's rate limit
    /// and the shutdown check, as [`Service::authenticate`] does for a token.
    pub fn authenticate_ticket(&self, ticket: &str, id: &str) -> Result<Caller, ServiceError> {
        let tenant = self
            .inner
            .tickets
            .redeem(ticket, id, Instant::now())
            .ok_or(ServiceError::TicketRefused)?;
        let caller = Caller { tenant };
        self.rate_limit(&caller)?;
        self.check_open()?;
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> Arc<Tenant> {
        Arc::new(Tenant::for_tests(name))
    }

    #[test]
    fn a_ticket_opens_its_session_once_within_its_time() {
        let tickets = Tickets::default();
        let now = Instant::now();
        let alice = tenant("alice");
        let t = tickets.issue(alice.clone(), "s1", now);
        assert!(tickets.redeem(&t, "s2", now).is_none(), "another session");
        assert!(
            tickets.redeem(&t, "s1", now).is_none(),
            "spent by the wrong try"
        );
        let t = tickets.issue(alice.clone(), "s1", now);
        assert!(tickets.redeem(&t, "s1", now).is_some());
        assert!(tickets.redeem(&t, "s1", now).is_none(), "single use");
        let t = tickets.issue(alice, "s1", now);
        assert!(
            tickets.redeem(&t, "s1", now + TICKET_TTL).is_none(),
            "expired"
        );
    }

    #[test]
    fn a_tenant_holds_a_bounded_number_and_cannot_crowd_out_another() {
        let tickets = Tickets::default();
        let now = Instant::now();
        let bob = tickets.issue(tenant("bob"), "b", now);
        let alice = tenant("alice");
        let first = tickets.issue(alice.clone(), "a", now);
        for i in 0..TICKETS_PER_TENANT * 3 {
            tickets.issue(
                alice.clone(),
                "a",
                now + Duration::from_millis(i as u64 + 1),
            );
        }
        let held = tickets.table.lock().map(|t| t.len()).unwrap_or(0);
        assert_eq!(held, TICKETS_PER_TENANT + 1);
        assert!(
            tickets.redeem(&first, "a", now).is_none(),
            "the oldest went"
        );
        assert!(
            tickets.redeem(&bob, "b", now).is_some(),
            "bob's is untouched"
        );
    }
}
