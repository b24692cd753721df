//! What a supplier should look like on chain: the operator builds it from a `Supplier`
//! and hands it to the `relayminer stake` Job (`LODE_STAKE_SPEC`, JSON); the Job compares
//! it with the chain and sends a `MsgStakeSupplier` only where they differ.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{Invalid, is_http_url, is_service_id};

/// One revenue share of a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevShare {
    pub address: String,
    pub percent: u64,
}

/// One service a supplier offers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceStake {
    pub service_id: String,
    /// The public URL gateways send relays to.
    pub url: String,
    /// Revenue shares. Empty: everything to the owner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rev_share: Vec<RevShare>,
}

/// What a supplier should look like on chain.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StakeSpec {
    /// The operator address (signs relays, claims, proofs and this stake).
    pub operator: String,
    /// The owner (custodial staking when it is the operator).
    pub owner: String,
    /// The stake in uPOKT, written as a decimal string (no JSON reader rounds it).
    #[serde(with = "decimal")]
    pub stake_upokt: u128,
    pub services: Vec<ServiceStake>,
}

impl StakeSpec {
    pub fn to_json(&self) -> String {
        crate::to_json(self)
    }

    /// Parses the JSON and checks it ([`Self::validate`]).
    pub fn from_json(text: &str) -> Result<Self, Invalid> {
        let s: Self = crate::from_json(text)?;
        s.validate()?;
        Ok(s)
    }

    /// What the chain would refuse, said before a transaction is paid for: a positive
    /// stake, at least one service, each once with a valid id and an http(s) endpoint,
    /// revenue shares adding up to 100 where given.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.stake_upokt == 0 {
            return Err(Invalid::new("the stake must be positive"));
        }
        if self.services.is_empty() {
            return Err(Invalid::new("at least one service is required"));
        }
        let mut seen = BTreeSet::new();
        for s in &self.services {
            if !seen.insert(&s.service_id) {
                return Err(Invalid(format!(
                    "service {:?} is staked twice",
                    s.service_id
                )));
            }
            if !is_service_id(&s.service_id) {
                return Err(Invalid(format!(
                    "service id {:?} is not a valid on-chain id (1–42 of [a-zA-Z0-9_-])",
                    s.service_id
                )));
            }
            if !is_http_url(&s.url) {
                return Err(Invalid(format!(
                    "service {}: the endpoint {:?} must be an http(s) URL",
                    s.service_id, s.url
                )));
            }
            let total: u64 = s.rev_share.iter().map(|r| r.percent).sum();
            if !s.rev_share.is_empty() && total != 100 {
                return Err(Invalid(format!(
                    "service {}: revenue shares add up to {total}%, not 100%",
                    s.service_id
                )));
            }
        }
        Ok(())
    }
}

/// A `u128` as a decimal string.
mod decimal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a whole number")))
    }
}
