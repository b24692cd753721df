//! Whether a claim needs a proof (spec `poktroll.md` §5.4). This must match the chain
//! exactly: a missing required proof is slashed, and an unrequired proof makes its
//! transaction fail.

use sha2::{Digest, Sha256};

use crate::gorand;
use crate::proto::{Claim, Message};

/// Why a proof is (or is not) required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProofRequirement {
    /// The claim is worth at least the threshold.
    Threshold,
    /// The claim was sampled.
    Probabilistic,
    NotRequired,
}

impl ProofRequirement {
    pub fn is_required(self) -> bool {
        self != Self::NotRequired
    }
}

/// Proof-module parameters that decide the requirement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProofParams {
    pub proof_request_probability: f64,
    /// In uPOKT.
    pub proof_requirement_threshold: u128,
}

/// SHA-256 of the claim as the chain stores it (validation status 0, omitted).
pub fn claim_hash(claim: &Claim) -> [u8; 32] {
    Sha256::digest(claim.encode()).into()
}

/// The sampled value: `SeededFloat64(claimHash ‖ seedBlockHash)`, where the seed block
/// is the one at proof-window-open − 1.
pub fn proof_requirement_sample(claim_hash: &[u8; 32], seed_block_hash: &[u8]) -> f64 {
    gorand::seeded_float64(&[&[&claim_hash[..], seed_block_hash].concat()])
}

/// The chain's decision for a claim worth `claimed_upokt`.
pub fn proof_requirement(
    claimed_upokt: u128,
    claim_hash: &[u8; 32],
    seed_block_hash: &[u8],
    params: ProofParams,
) -> ProofRequirement {
    if claimed_upokt >= params.proof_requirement_threshold {
        ProofRequirement::Threshold
    } else if proof_requirement_sample(claim_hash, seed_block_hash)
        <= params.proof_request_probability
    {
        ProofRequirement::Probabilistic
    } else {
        ProofRequirement::NotRequired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::SessionHeader;

    #[test]
    fn threshold_then_sampling() {
        let claim = Claim {
            supplier_operator_address: "pokt1supplier".into(),
            session_header: Some(SessionHeader {
                application_address: "pokt1app".into(),
                service_id: "svc".into(),
                session_id: "abc".into(),
                session_start_block_height: 1,
                session_end_block_height: 10,
            }),
            root_hash: vec![7; 48],
            proof_validation_status: 0,
        };
        let h = claim_hash(&claim);
        let seed = [3u8; 32];
        let sample = proof_requirement_sample(&h, &seed);
        assert!((0.0..1.0).contains(&sample));
        // The sample is SeededFloat64 of the single concatenated part.
        assert_eq!(sample, gorand::seeded_float64(&[&h, &seed]));
        let params = |p, t| ProofParams {
            proof_request_probability: p,
            proof_requirement_threshold: t,
        };
        assert_eq!(
            proof_requirement(100, &h, &seed, params(0.0, 100)),
            ProofRequirement::Threshold
        );
        assert_eq!(
            proof_requirement(99, &h, &seed, params(sample, 100)),
            ProofRequirement::Probabilistic
        );
        let below = f64::from_bits(sample.to_bits() - 1);
        assert_eq!(
            proof_requirement(99, &h, &seed, params(below, 100)),
            ProofRequirement::NotRequired
        );
    }
}
