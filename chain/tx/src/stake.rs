//! The stake messages: `MsgStakeSupplier` for a wanted state (whether the chain already
//! has it is [`lode_chain::stake::is_met_by`], a read), and `MsgUnstakeSupplier`.

use lode_contracts::stake::StakeSpec;
use lode_kernels::proto::cosmos::{
    Any, Coin, MSG_STAKE_SUPPLIER_TYPE_URL, MSG_UNSTAKE_SUPPLIER_TYPE_URL, MsgStakeSupplier,
    MsgUnstakeSupplier, ServiceRevenueShare, SupplierEndpoint, SupplierServiceConfig,
};

/// The REST RPC type (OpenAI-style HTTP) every lode endpoint is staked with.
pub use lode_chain::stake::RPC_TYPE_REST;

/// The message that stakes (or updates) the supplier, signed by its operator.
pub fn stake_message(spec: &StakeSpec) -> Any {
    Any::pack(
        MSG_STAKE_SUPPLIER_TYPE_URL,
        &MsgStakeSupplier {
            signer: spec.operator.clone(),
            owner_address: spec.owner.clone(),
            operator_address: spec.operator.clone(),
            stake: Some(Coin {
                denom: "upokt".into(),
                amount: spec.stake_upokt.to_string(),
            }),
            services: spec
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
                        .map(|r| ServiceRevenueShare {
                            address: r.address.clone(),
                            rev_share_percentage: r.percent,
                        })
                        .collect(),
                })
                .collect(),
        },
    )
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use lode_contracts::stake::ServiceStake;

    #[test]
    fn the_stake_message_carries_the_spec() {
        let spec = StakeSpec {
            operator: "pokt1op".into(),
            owner: "pokt1owner".into(),
            stake_upokt: 100_000_000,
            services: vec![ServiceStake {
                service_id: "llm".into(),
                url: "https://relay.example.com".into(),
                rev_share: Vec::new(),
            }],
        };
        let msg = stake_message(&spec);
        assert_eq!(msg.type_url, MSG_STAKE_SUPPLIER_TYPE_URL);
        let unstake = unstake_message("pokt1op");
        assert_eq!(unstake.type_url, MSG_UNSTAKE_SUPPLIER_TYPE_URL);
    }
}
