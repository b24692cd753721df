//! Staking a supplier: the `MsgStakeSupplier` for a wanted state, and whether the chain
//! already has it (so a stake job that runs twice sends nothing the second time).

use lode_kernels::proto::cosmos::{
    Any, Coin, MSG_STAKE_SUPPLIER_TYPE_URL, MSG_UNSTAKE_SUPPLIER_TYPE_URL, MsgStakeSupplier,
    MsgUnstakeSupplier, ServiceRevenueShare, SupplierEndpoint, SupplierServiceConfig,
};

/// The message that starts unbonding `operator` (signed by the operator).
pub fn unstake_message(operator: &str) -> Any {
    Any::pack(
        MSG_UNSTAKE_SUPPLIER_TYPE_URL,
        &MsgUnstakeSupplier {
            signer: operator.to_string(),
            operator_address: operator.to_string(),
        },
    )
}

use crate::proto::pocket::shared;

/// The REST RPC type (OpenAI-style HTTP) every lode endpoint is staked with.
pub const RPC_TYPE_REST: i32 = 4;

/// One service a supplier offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStake {
    pub service_id: String,
    /// The public URL gateways send relays to.
    pub url: String,
    /// Revenue shares: (address, percent). Empty: everything to the owner.
    pub rev_share: Vec<(String, u64)>,
}

/// What a supplier should look like on chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StakeSpec {
    pub operator: String,
    /// The owner (custodial staking when it is the operator).
    pub owner: String,
    pub stake_upokt: u128,
    pub services: Vec<ServiceStake>,
}

impl StakeSpec {
    /// The message that stakes (or updates) the supplier, signed by the operator.
    pub fn message(&self) -> Any {
        Any::pack(
            MSG_STAKE_SUPPLIER_TYPE_URL,
            &MsgStakeSupplier {
                signer: self.operator.clone(),
                owner_address: self.owner.clone(),
                operator_address: self.operator.clone(),
                stake: Some(Coin {
                    denom: "upokt".into(),
                    amount: self.stake_upokt.to_string(),
                }),
                services: self
                    .services
                    .iter()
                    .map(|s| SupplierServiceConfig {
                        service_id: s.service_id.clone(),
                        endpoints: vec![SupplierEndpoint {
                            url: s.url.clone(),
                            rpc_type: RPC_TYPE_REST,
                            configs: Vec::new(),
                        }],
                        rev_share: s
                            .rev_share
                            .iter()
                            .map(|(address, pct)| ServiceRevenueShare {
                                address: address.clone(),
                                rev_share_percentage: *pct,
                            })
                            .collect(),
                    })
                    .collect(),
            },
        )
    }

    /// Whether `onchain` already has this stake, owner, and exactly these services and
    /// endpoints (revenue shares compared when given).
    pub fn is_met_by(&self, onchain: &shared::Supplier) -> bool {
        let stake = onchain
            .stake
            .as_ref()
            .and_then(|c| c.amount.parse::<u128>().ok())
            .unwrap_or(0);
        if stake != self.stake_upokt || onchain.owner_address != self.owner {
            return false;
        }
        let mut want: Vec<(&str, &str)> = self
            .services
            .iter()
            .map(|s| (s.service_id.as_str(), s.url.as_str()))
            .collect();
        let mut have: Vec<(&str, &str)> = onchain
            .services
            .iter()
            .flat_map(|c| {
                c.endpoints
                    .iter()
                    .map(move |e| (c.service_id.as_str(), e.url.as_str()))
            })
            .collect();
        want.sort();
        have.sort();
        if want != have {
            return false;
        }
        self.services.iter().all(|s| {
            s.rev_share.is_empty()
                || onchain
                    .services
                    .iter()
                    .find(|c| c.service_id == s.service_id)
                    .is_some_and(|c| {
                        let mut have: Vec<(String, u64)> = c
                            .rev_share
                            .iter()
                            .map(|r| (r.address.clone(), r.rev_share_percentage))
                            .collect();
                        let mut want = s.rev_share.clone();
                        have.sort();
                        want.sort();
                        have == want
                    })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StakeSpec {
        StakeSpec {
            operator: "pokt1op".into(),
            owner: "pokt1op".into(),
            stake_upokt: 100_000_000,
            services: vec![ServiceStake {
                service_id: "llm".into(),
                url: "https://relay.example.com".into(),
                rev_share: Vec::new(),
            }],
        }
    }

    fn onchain(stake: &str, url: &str) -> shared::Supplier {
        shared::Supplier {
            owner_address: "pokt1op".into(),
            operator_address: "pokt1op".into(),
            stake: Some(crate::proto::cosmos::base::v1beta1::Coin {
                denom: "upokt".into(),
                amount: stake.into(),
            }),
            services: vec![shared::SupplierServiceConfig {
                service_id: "llm".into(),
                endpoints: vec![shared::SupplierEndpoint {
                    url: url.into(),
                    rpc_type: RPC_TYPE_REST,
                    configs: Vec::new(),
                }],
                rev_share: Vec::new(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_chain_state_is_compared_field_by_field() {
        let s = spec();
        assert!(s.is_met_by(&onchain("100000000", "https://relay.example.com")));
        assert!(
            !s.is_met_by(&onchain("99", "https://relay.example.com")),
            "stake"
        );
        assert!(
            !s.is_met_by(&onchain("100000000", "https://old.example.com")),
            "endpoint"
        );
        let mut shared = s.clone();
        shared.services[0].rev_share = vec![("pokt1other".into(), 50)];
        assert!(!shared.is_met_by(&onchain("100000000", "https://relay.example.com")));
        let msg = s.message();
        assert_eq!(msg.type_url, MSG_STAKE_SUPPLIER_TYPE_URL);
    }
}
