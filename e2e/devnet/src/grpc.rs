//! The devnet's gRPC port: poktroll's query services and the Cosmos SDK's account,
//! balance and simulation services, answered from the chain's state.

use std::sync::{Arc, Mutex, MutexGuard};

use lode_chain::proto::cosmos::{auth, bank, base, tx};
use lode_chain::proto::pocket::{application, proof, service, session, shared, supplier};
use lode_kernels::proto::Message;
use lode_kernels::proto::cosmos::SECP256K1_PUBKEY_TYPE_URL;
use tonic::{Request, Response, Status};

use crate::chain::{Chain, DENOM, HydratedSession, SupplierState};

type Reply<T> = Result<Response<T>, Status>;

/// The chain behind every service.
#[derive(Clone, Debug)]
pub struct Node {
    pub chain: Arc<Mutex<Chain>>,
}

impl Node {
    fn chain(&self) -> MutexGuard<'_, Chain> {
        self.chain.lock().expect("chain lock")
    }
}

fn coin(amount: u128) -> Option<base::v1beta1::Coin> {
    Some(base::v1beta1::Coin {
        denom: DENOM.into(),
        amount: amount.to_string(),
    })
}

fn wire_service_config(
    s: &lode_kernels::proto::cosmos::SupplierServiceConfig,
) -> shared::SupplierServiceConfig {
    shared::SupplierServiceConfig {
        service_id: s.service_id.clone(),
        endpoints: s
            .endpoints
            .iter()
            .map(|e| shared::SupplierEndpoint {
                url: e.url.clone(),
                rpc_type: e.rpc_type,
                configs: e
                    .configs
                    .iter()
                    .map(|c| shared::ConfigOption {
                        key: c.key,
                        value: c.value.clone(),
                    })
                    .collect(),
            })
            .collect(),
        rev_share: s
            .rev_share
            .iter()
            .map(|r| shared::ServiceRevenueShare {
                address: r.address.clone(),
                rev_share_percentage: r.rev_share_percentage,
            })
            .collect(),
    }
}

fn wire_supplier(s: &SupplierState) -> shared::Supplier {
    shared::Supplier {
        owner_address: s.owner.clone(),
        operator_address: s.operator.clone(),
        stake: coin(s.stake),
        services: s.services.iter().map(wire_service_config).collect(),
        unstake_session_end_height: s.unstake_session_end_height,
        service_config_history: s
            .history
            .iter()
            .map(|u| shared::ServiceConfigUpdate {
                operator_address: s.operator.clone(),
                service: Some(wire_service_config(&u.service)),
                activation_height: u.activation_height,
                deactivation_height: u.deactivation_height,
            })
            .collect(),
    }
}

fn wire_application(c: &Chain, address: &str) -> Option<application::Application> {
    let a = c.m.applications.get(address)?;
    Some(application::Application {
        address: a.address.clone(),
        stake: coin(a.stake),
        service_configs: vec![shared::ApplicationServiceConfig {
            service_id: a.service_id.clone(),
        }],
        delegatee_gateway_addresses: a.delegatees.clone(),
        ..Default::default()
    })
}

fn wire_session(c: &Chain, s: &HydratedSession) -> session::Session {
    session::Session {
        header: Some(s.header.clone()),
        session_id: s.header.session_id.clone(),
        session_number: s.number,
        num_blocks_per_session: s.num_blocks,
        application: wire_application(c, &s.header.application_address),
        suppliers: s
            .suppliers
            .iter()
            .filter_map(|op| c.m.suppliers.get(op))
            .map(wire_supplier)
            .collect(),
    }
}

fn wire_shared_params(c: &Chain) -> shared::Params {
    let s = c.shared();
    let g = &c.genesis;
    shared::Params {
        num_blocks_per_session: s.num_blocks_per_session as u64,
        grace_period_end_offset_blocks: s.grace_period_end_offset_blocks as u64,
        claim_window_open_offset_blocks: s.claim_window_open_offset_blocks as u64,
        claim_window_close_offset_blocks: s.claim_window_close_offset_blocks as u64,
        proof_window_open_offset_blocks: s.proof_window_open_offset_blocks as u64,
        proof_window_close_offset_blocks: s.proof_window_close_offset_blocks as u64,
        supplier_unbonding_period_sessions: g.supplier_unbonding_period_sessions,
        application_unbonding_period_sessions: 1,
        compute_units_to_tokens_multiplier: g.pricing.compute_units_to_tokens_multiplier,
        gateway_unbonding_period_sessions: 1,
        compute_unit_cost_granularity: g.pricing.compute_unit_cost_granularity,
    }
}

fn height_arg(c: &Chain, h: i64) -> Result<i64, Status> {
    if h > c.height() {
        return Err(Status::invalid_argument(format!(
            "height {h} is greater than the current height {}",
            c.height()
        )));
    }
    Ok(if h <= 0 { c.height() } else { h })
}

#[tonic::async_trait]
impl session::query_server::Query for Node {
    async fn params(
        &self,
        _: Request<session::QueryParamsRequest>,
    ) -> Reply<session::QueryParamsResponse> {
        Ok(Response::new(session::QueryParamsResponse {
            params: Some(session::Params {
                num_suppliers_per_session: self.chain().genesis.num_suppliers_per_session,
            }),
        }))
    }

    async fn get_session(
        &self,
        req: Request<session::QueryGetSessionRequest>,
    ) -> Reply<session::QueryGetSessionResponse> {
        let r = req.into_inner();
        let delay = {
            let mut c = self.chain();
            c.session_queries += 1;
            c.session_query_delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let c = self.chain();
        let h = height_arg(&c, r.block_height)?;
        let s = c
            .session(&r.application_address, &r.service_id, h)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(session::QueryGetSessionResponse {
            session: Some(wire_session(&c, &s)),
        }))
    }
}

#[tonic::async_trait]
impl shared::query_server::Query for Node {
    async fn params(
        &self,
        _: Request<shared::QueryParamsRequest>,
    ) -> Reply<shared::QueryParamsResponse> {
        Ok(Response::new(shared::QueryParamsResponse {
            params: Some(wire_shared_params(&self.chain())),
        }))
    }

    async fn params_at_height(
        &self,
        req: Request<shared::QueryParamsAtHeightRequest>,
    ) -> Reply<shared::QueryParamsAtHeightResponse> {
        let c = self.chain();
        height_arg(&c, req.into_inner().height)?;
        // The devnet's parameters never change after genesis.
        Ok(Response::new(shared::QueryParamsAtHeightResponse {
            params: Some(wire_shared_params(&c)),
        }))
    }
}

fn difficulty(
    c: &Chain,
    service_id: &str,
    h: i64,
) -> Result<service::RelayMiningDifficulty, Status> {
    if !c.services.contains_key(service_id) {
        return Err(Status::not_found(format!(
            "service {service_id:?} not found"
        )));
    }
    let d = c.difficulty_at(service_id, h);
    Ok(service::RelayMiningDifficulty {
        service_id: service_id.to_string(),
        block_height: d.block_height,
        num_relays_ema: d.num_relays_ema,
        target_hash: d.target.to_vec(),
    })
}

#[tonic::async_trait]
impl service::query_server::Query for Node {
    async fn service(
        &self,
        req: Request<service::QueryGetServiceRequest>,
    ) -> Reply<service::QueryGetServiceResponse> {
        let id = req.into_inner().id;
        let c = self.chain();
        let s = c
            .services
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("service ID not found: {id:?}")))?;
        Ok(Response::new(service::QueryGetServiceResponse {
            service: Some(shared::Service {
                id: s.id.clone(),
                name: s.name.clone(),
                compute_units_per_relay: s.compute_units_per_relay,
                owner_address: s.owner.clone(),
            }),
        }))
    }

    async fn relay_mining_difficulty(
        &self,
        req: Request<service::QueryGetRelayMiningDifficultyRequest>,
    ) -> Reply<service::QueryGetRelayMiningDifficultyResponse> {
        let c = self.chain();
        Ok(Response::new(
            service::QueryGetRelayMiningDifficultyResponse {
                relay_mining_difficulty: Some(difficulty(
                    &c,
                    &req.into_inner().service_id,
                    c.height(),
                )?),
            },
        ))
    }

    async fn relay_mining_difficulty_at_height(
        &self,
        req: Request<service::QueryGetRelayMiningDifficultyAtHeightRequest>,
    ) -> Reply<service::QueryGetRelayMiningDifficultyAtHeightResponse> {
        let r = req.into_inner();
        let c = self.chain();
        let h = height_arg(&c, r.block_height)?;
        Ok(Response::new(
            service::QueryGetRelayMiningDifficultyAtHeightResponse {
                relay_mining_difficulty: Some(difficulty(&c, &r.service_id, h)?),
            },
        ))
    }

    async fn compute_units_per_relay_at_height(
        &self,
        req: Request<service::QueryGetComputeUnitsPerRelayAtHeightRequest>,
    ) -> Reply<service::QueryGetComputeUnitsPerRelayAtHeightResponse> {
        let r = req.into_inner();
        let c = self.chain();
        height_arg(&c, r.block_height)?;
        let s = c.services.get(&r.service_id).ok_or_else(|| {
            Status::not_found(format!("service ID not found: {:?}", r.service_id))
        })?;
        Ok(Response::new(
            service::QueryGetComputeUnitsPerRelayAtHeightResponse {
                compute_units_per_relay: s.compute_units_per_relay,
            },
        ))
    }
}

#[tonic::async_trait]
impl application::query_server::Query for Node {
    async fn application(
        &self,
        req: Request<application::QueryGetApplicationRequest>,
    ) -> Reply<application::QueryGetApplicationResponse> {
        let address = req.into_inner().address;
        let app = wire_application(&self.chain(), &address)
            .ok_or_else(|| Status::not_found(format!("application {address} not found")))?;
        Ok(Response::new(application::QueryGetApplicationResponse {
            application: Some(app),
        }))
    }
}

#[tonic::async_trait]
impl supplier::query_server::Query for Node {
    async fn supplier(
        &self,
        req: Request<supplier::QueryGetSupplierRequest>,
    ) -> Reply<supplier::QueryGetSupplierResponse> {
        let op = req.into_inner().operator_address;
        let c = self.chain();
        let s = c.m.suppliers.get(&op).ok_or_else(|| {
            Status::not_found(format!("supplier with operator address {op} not found"))
        })?;
        Ok(Response::new(supplier::QueryGetSupplierResponse {
            supplier: Some(wire_supplier(s)),
        }))
    }
}

#[tonic::async_trait]
impl proof::query_server::Query for Node {
    async fn params(
        &self,
        _: Request<proof::QueryParamsRequest>,
    ) -> Reply<proof::QueryParamsResponse> {
        let c = self.chain();
        let g = &c.genesis;
        Ok(Response::new(proof::QueryParamsResponse {
            params: Some(proof::Params {
                proof_request_probability: g.proof.proof_request_probability,
                proof_requirement_threshold: coin(g.proof.proof_requirement_threshold),
                proof_missing_penalty: coin(g.proof_missing_penalty),
                proof_submission_fee: coin(g.proof_submission_fee),
            }),
        }))
    }

    async fn claim(
        &self,
        req: Request<proof::QueryGetClaimRequest>,
    ) -> Reply<proof::QueryGetClaimResponse> {
        let r = req.into_inner();
        let c = self.chain();
        let claim =
            c.m.claims
                .get(&(r.session_id.clone(), r.supplier_operator_address.clone()))
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "claim not found for session {} and supplier {}",
                        r.session_id, r.supplier_operator_address
                    ))
                })?;
        Ok(Response::new(proof::QueryGetClaimResponse {
            claim: Some(proof::Claim {
                supplier_operator_address: claim.claim.supplier_operator_address.clone(),
                session_header: claim.claim.session_header.clone(),
                root_hash: claim.claim.root_hash.clone(),
                proof_validation_status: claim.claim.proof_validation_status,
            }),
        }))
    }
}

#[tonic::async_trait]
impl auth::v1beta1::query_server::Query for Node {
    async fn account(
        &self,
        req: Request<auth::v1beta1::QueryAccountRequest>,
    ) -> Reply<auth::v1beta1::QueryAccountResponse> {
        let address = req.into_inner().address;
        let c = self.chain();
        let a =
            c.m.accounts
                .get(&address)
                .ok_or_else(|| Status::not_found(format!("account {address} not found")))?;
        let base = auth::v1beta1::BaseAccount {
            address: address.clone(),
            pub_key: a.pub_key.map(|k| prost_types::Any {
                type_url: SECP256K1_PUBKEY_TYPE_URL.into(),
                value: lode_kernels::proto::cosmos::Secp256k1PubKey {
                    key: k.to_compressed().to_vec(),
                }
                .encode(),
            }),
            account_number: a.number,
            sequence: a.sequence,
        };
        Ok(Response::new(auth::v1beta1::QueryAccountResponse {
            account: Some(prost_types::Any {
                type_url: lode_chain::grpc::BASE_ACCOUNT_TYPE_URL.into(),
                value: prost::Message::encode_to_vec(&base),
            }),
        }))
    }
}

#[tonic::async_trait]
impl bank::v1beta1::query_server::Query for Node {
    async fn balance(
        &self,
        req: Request<bank::v1beta1::QueryBalanceRequest>,
    ) -> Reply<bank::v1beta1::QueryBalanceResponse> {
        let r = req.into_inner();
        let c = self.chain();
        let amount = if r.denom == DENOM {
            c.m.accounts.get(&r.address).map_or(0, |a| a.balance)
        } else {
            0
        };
        Ok(Response::new(bank::v1beta1::QueryBalanceResponse {
            balance: Some(base::v1beta1::Coin {
                denom: r.denom,
                amount: amount.to_string(),
            }),
        }))
    }
}

#[tonic::async_trait]
impl tx::v1beta1::service_server::Service for Node {
    async fn simulate(
        &self,
        req: Request<tx::v1beta1::SimulateRequest>,
    ) -> Reply<tx::v1beta1::SimulateResponse> {
        let bytes = req.into_inner().tx_bytes;
        let gas = self.chain().simulate(&bytes).map_err(|e| {
            Status::unknown(format!(
                "{}: codespace {} code {}",
                e.log, e.codespace, e.code
            ))
        })?;
        Ok(Response::new(tx::v1beta1::SimulateResponse {
            gas_info: Some(tx::v1beta1::GasInfo {
                gas_wanted: 0,
                gas_used: gas,
            }),
        }))
    }
}

/// Every service on one router.
pub fn router(node: Node) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .add_service(session::query_server::QueryServer::new(node.clone()))
        .add_service(shared::query_server::QueryServer::new(node.clone()))
        .add_service(service::query_server::QueryServer::new(node.clone()))
        .add_service(application::query_server::QueryServer::new(node.clone()))
        .add_service(supplier::query_server::QueryServer::new(node.clone()))
        .add_service(proof::query_server::QueryServer::new(node.clone()))
        .add_service(auth::v1beta1::query_server::QueryServer::new(node.clone()))
        .add_service(bank::v1beta1::query_server::QueryServer::new(node.clone()))
        .add_service(tx::v1beta1::service_server::ServiceServer::new(node))
}
