//! Sessions: who serves which application when (`GetSession`), the application's ring,
//! and the session header a claim or proof names, checked against the chain's own.

use super::*;

impl Chain {
    /// Session hydration (`x/session/keeper/session_hydrator.go`).
    pub fn session(
        &self,
        application: &str,
        service_id: &str,
        height: i64,
    ) -> Result<HydratedSession, String> {
        if height > self.height() {
            return Err(format!(
                "session block height {height} is greater than the current height {}",
                self.height()
            ));
        }
        let app = self
            .m
            .applications
            .get(application)
            .ok_or_else(|| format!("application {application} not found"))?;
        if app.service_id != service_id {
            return Err(format!(
                "application {application} is not staked for service {service_id}"
            ));
        }
        if !self.services.contains_key(service_id) {
            return Err(format!("service {service_id} not found"));
        }
        let shared = self.shared();
        let start = shared.session_start_height(height);
        let end = shared.session_end_height(height);
        let hash = self.block_hash(start);
        let id = session_id(&hash, service_id, application, start);
        let preimage = session_id_preimage(&hash, service_id, application, start);
        let candidates: Vec<&str> = self
            .m
            .suppliers
            .values()
            .filter(|s| {
                s.history
                    .iter()
                    .any(|u| u.service.service_id == service_id && u.active_at(height))
            })
            .map(|s| s.operator.as_str())
            .collect();
        let n = self.genesis.num_suppliers_per_session as usize;
        let chosen: Vec<String> = if candidates.len() > n {
            suppliers_by_weight(&preimage, candidates)
                .into_iter()
                .take(n)
                .map(str::to_string)
                .collect()
        } else {
            candidates.into_iter().map(str::to_string).collect()
        };
        Ok(HydratedSession {
            header: SessionHeader {
                application_address: application.to_string(),
                service_id: service_id.to_string(),
                session_id: id,
                session_start_block_height: start,
                session_end_block_height: end,
            },
            number: shared.session_number(height),
            num_blocks: shared.num_blocks_per_session,
            suppliers: chosen,
        })
    }
    /// The ring an application's relays are signed with at `height`.
    pub(super) fn app_ring(&self, application: &str) -> Result<AppRing, String> {
        let app = self
            .m
            .applications
            .get(application)
            .ok_or("application not found")?;
        let addresses = ring_addresses(
            application,
            app.delegatees.iter().map(String::as_str),
            [],
            0,
        );
        let keys: Vec<PublicKey> = addresses
            .iter()
            .map(|a| {
                if *a == lode_kernels::crypto::ring::placeholder_address() {
                    Ok(placeholder_key())
                } else {
                    self.m
                        .accounts
                        .get(a)
                        .and_then(|acc| acc.pub_key)
                        .ok_or_else(|| format!("public key of ring member {a} not found"))
                }
            })
            .collect::<Result<_, _>>()?;
        AppRing::new(&keys).map_err(|e| e.to_string())
    }
    /// The checks every claim and proof share: the header names a real session and the
    /// supplier is in it.
    pub(super) fn validate_session(
        &self,
        header: Option<&SessionHeader>,
        supplier: &str,
    ) -> Result<SessionHeader, TxError> {
        let header =
            header.ok_or_else(|| perr(INVALID_SESSION_HEADER, "the session header is missing"))?;
        if header.session_start_block_height <= 0
            || header.session_start_block_height > self.height()
        {
            return Err(perr(
                INVALID_SESSION_START,
                format!("session start height {}", header.session_start_block_height),
            ));
        }
        let onchain = self
            .session(
                &header.application_address,
                &header.service_id,
                header.session_start_block_height,
            )
            .map_err(|e| perr(INVALID_SESSION_HEADER, e))?;
        if onchain.header.session_id != header.session_id {
            return Err(perr(
                INVALID_SESSION_ID,
                format!(
                    "session ID does not match onchain session ID; expected {:?}, got {:?}",
                    onchain.header.session_id, header.session_id
                ),
            ));
        }
        if onchain.header.session_start_block_height != header.session_start_block_height {
            return Err(perr(
                INVALID_SESSION_START,
                format!(
                    "expected {}, got {}",
                    onchain.header.session_start_block_height, header.session_start_block_height
                ),
            ));
        }
        if onchain.header.session_end_block_height != header.session_end_block_height {
            return Err(perr(
                INVALID_SESSION_END,
                format!(
                    "expected {}, got {}",
                    onchain.header.session_end_block_height, header.session_end_block_height
                ),
            ));
        }
        if !onchain.suppliers.iter().any(|s| s == supplier) {
            return Err(perr(
                SUPPLIER_NOT_FOUND,
                format!(
                    "supplier operator address {supplier:?} not found in session ID {:?}",
                    header.session_id
                ),
            ));
        }
        Ok(onchain.header)
    }
}
