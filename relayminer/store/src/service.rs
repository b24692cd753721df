//! The gRPC face of the store, and its token check.

use std::sync::Arc;

use lode_store_api::{
    AUTH_HEADER, AppendRelaysRequest, AppendRelaysResponse, DeleteSessionResponse,
    ListSessionsRequest, ListSessionsResponse, MarkSessionRequest, ProveClosestRequest,
    ProveClosestResponse, SessionInfo, SessionKey, SessionState, SessionStore,
};
use tonic::{Request, Response, Status};

use crate::backend::Backend;
use crate::engine::{Store, StoreError};

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        match e {
            StoreError::UnknownSession { .. } => Status::not_found(msg),
            StoreError::NotOpen(..) | StoreError::NotFrozen(_) => Status::failed_precondition(msg),
            StoreError::Invalid(_) => Status::invalid_argument(msg),
            StoreError::Closed => Status::unavailable(msg),
            StoreError::Backend(_) => Status::internal(msg),
        }
    }
}

/// The store as a tonic service.
#[derive(Debug)]
pub struct StoreService<B: Backend> {
    store: Arc<Store<B>>,
    /// The supplier operator addresses this store serves; empty means any.
    suppliers: Arc<Vec<String>>,
}

impl<B: Backend> StoreService<B> {
    pub fn new(store: Arc<Store<B>>, suppliers: Vec<String>) -> Self {
        Self {
            store,
            suppliers: Arc::new(suppliers),
        }
    }

    /// Refuses suppliers this store does not serve.
    fn check_supplier(&self, supplier: &str) -> Result<(), Status> {
        if self.suppliers.is_empty() || self.suppliers.iter().any(|s| s == supplier) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "this store serves {}; {supplier:?} is not one of them",
                self.suppliers.join(", ")
            )))
        }
    }
}

fn key(k: Option<SessionKey>) -> Result<SessionKey, Status> {
    k.ok_or_else(|| Status::invalid_argument("missing session key"))
}

#[tonic::async_trait]
impl<B: Backend> SessionStore for StoreService<B> {
    async fn append_relays(
        &self,
        req: Request<AppendRelaysRequest>,
    ) -> Result<Response<AppendRelaysResponse>, Status> {
        let r = req.into_inner();
        self.check_supplier(&r.supplier_operator_address)?;
        let header = r
            .session_header
            .ok_or_else(|| Status::invalid_argument("missing session header"))?;
        let (accepted, duplicates, session_leaves) = self
            .store
            .append(&r.supplier_operator_address, header, r.relays)
            .await?;
        Ok(Response::new(AppendRelaysResponse {
            accepted,
            duplicates,
            session_leaves,
        }))
    }

    async fn freeze_session(
        &self,
        req: Request<SessionKey>,
    ) -> Result<Response<SessionInfo>, Status> {
        let k = req.into_inner();
        self.check_supplier(&k.supplier_operator_address)?;
        Ok(Response::new(
            self.store
                .freeze(&k.supplier_operator_address, &k.session_id)
                .await?,
        ))
    }

    async fn prove_closest(
        &self,
        req: Request<ProveClosestRequest>,
    ) -> Result<Response<ProveClosestResponse>, Status> {
        let r = req.into_inner();
        let k = key(r.key)?;
        self.check_supplier(&k.supplier_operator_address)?;
        let (proof, root) = self
            .store
            .prove(
                &k.supplier_operator_address,
                &k.session_id,
                r.path,
                r.sibling_data,
            )
            .await?;
        Ok(Response::new(ProveClosestResponse { proof, root }))
    }

    async fn get_session(&self, req: Request<SessionKey>) -> Result<Response<SessionInfo>, Status> {
        let k = req.into_inner();
        self.check_supplier(&k.supplier_operator_address)?;
        Ok(Response::new(
            self.store
                .get(&k.supplier_operator_address, &k.session_id)?,
        ))
    }

    async fn list_sessions(
        &self,
        req: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let supplier = req.into_inner().supplier_operator_address;
        if !supplier.is_empty() {
            self.check_supplier(&supplier)?;
        }
        // Every session, of the suppliers this store serves only.
        let mut sessions = self.store.list(&supplier);
        if !self.suppliers.is_empty() {
            sessions.retain(|s| self.suppliers.contains(&s.supplier_operator_address));
        }
        Ok(Response::new(ListSessionsResponse { sessions }))
    }

    async fn mark_session(
        &self,
        req: Request<MarkSessionRequest>,
    ) -> Result<Response<SessionInfo>, Status> {
        let r = req.into_inner();
        let k = key(r.key)?;
        self.check_supplier(&k.supplier_operator_address)?;
        let state = SessionState::try_from(r.state)
            .map_err(|_| Status::invalid_argument(format!("unknown session state {}", r.state)))?;
        Ok(Response::new(
            self.store
                .mark(
                    &k.supplier_operator_address,
                    &k.session_id,
                    state,
                    r.tx_hash,
                )
                .await?,
        ))
    }

    async fn delete_session(
        &self,
        req: Request<SessionKey>,
    ) -> Result<Response<DeleteSessionResponse>, Status> {
        let k = req.into_inner();
        self.check_supplier(&k.supplier_operator_address)?;
        let leaves_deleted = self
            .store
            .delete(&k.supplier_operator_address, &k.session_id)
            .await?;
        Ok(Response::new(DeleteSessionResponse { leaves_deleted }))
    }
}

/// Refuses every call that does not carry `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Arc<Vec<u8>>,
}

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCheck(..)")
    }
}

impl TokenCheck {
    pub fn new(token: &str) -> Self {
        Self {
            expected: Arc::new(format!("Bearer {token}").into_bytes()),
        }
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        match req.metadata().get(AUTH_HEADER) {
            Some(v) if constant_time_eq(v.as_bytes(), &self.expected) => Ok(req),
            Some(_) => Err(Status::unauthenticated("invalid store token")),
            None => Err(Status::unauthenticated(
                "missing store token (authorization: Bearer <token>)",
            )),
        }
    }
}
