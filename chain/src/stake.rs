//! Whether the chain already has a supplier's wanted stake (so a stake Job that runs
//! twice sends nothing the second time, and the operator starts one only when the chain
//! differs). Building and signing the message is `lode_chain_tx::stake`.

use lode_contracts::stake::{RevShare, StakeSpec};

use crate::proto::pocket::shared;

/// The REST RPC type (OpenAI-style HTTP) every lode endpoint is staked with.
pub const RPC_TYPE_REST: i32 = 4;

/// Whether `onchain` already has `spec`'s stake, owner, and exactly its services and
/// endpoints (revenue shares compared when given).
pub fn is_met_by(spec: &StakeSpec, onchain: &shared::Supplier) -> bool {
    let stake = onchain
        .stake
        .as_ref()
        .and_then(|c| c.amount.parse::<u128>().ok())
        .unwrap_or(0);
    if stake != spec.stake_upokt || onchain.owner_address != spec.owner {
        return false;
    }
    let mut want: Vec<(&str, &str)> = spec
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
    spec.services.iter().all(|s| {
        s.rev_share.is_empty()
            || onchain
                .services
                .iter()
                .find(|c| c.service_id == s.service_id)
                .is_some_and(|c| {
                    let mut have: Vec<RevShare> = c
                        .rev_share
                        .iter()
                        .map(|r| RevShare {
                            address: r.address.clone(),
                            percent: r.rev_share_percentage,
                        })
                        .collect();
                    let mut want = s.rev_share.clone();
                    have.sort();
                    want.sort();
                    have == want
                })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_contracts::stake::ServiceStake;

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
        assert!(is_met_by(
            &s,
            &onchain("100000000", "https://relay.example.com")
        ));
        assert!(
            !is_met_by(&s, &onchain("99", "https://relay.example.com")),
            "stake"
        );
        assert!(
            !is_met_by(&s, &onchain("100000000", "https://old.example.com")),
            "endpoint"
        );
        let mut shared = s.clone();
        shared.services[0].rev_share = vec![RevShare {
            address: "pokt1other".into(),
            percent: 50,
        }];
        assert!(!is_met_by(
            &shared,
            &onchain("100000000", "https://relay.example.com")
        ));
    }
}
