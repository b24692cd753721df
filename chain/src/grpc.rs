//! Cosmos SDK gRPC queries a signer needs: its account number and sequence, and its
//! balance. Every call has a timeout and transient failures are retried with backoff.

use std::time::Duration;

use lode_kernels::crypto::PublicKey;
use lode_kernels::proto::Message as _;
use lode_kernels::proto::cosmos::SECP256K1_PUBKEY_TYPE_URL;
use prost::Message as _;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::comet::RetryPolicy;

/// The Cosmos SDK's generated messages and clients, under short names.
pub mod proto {
    pub use crate::proto::cosmos::auth::v1beta1 as auth;
    pub use crate::proto::cosmos::bank::v1beta1 as bank;
    pub use crate::proto::cosmos::base::v1beta1 as base;
    pub use crate::proto::cosmos::tx::v1beta1 as tx;
}

/// The type URL of a plain account.
pub const BASE_ACCOUNT_TYPE_URL: &str = "/cosmos.auth.v1beta1.BaseAccount";

/// Why a query failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum QueryError {
    #[error("gRPC endpoint {0}: {1}")]
    Connect(String, String),
    #[error(
        "account {0} does not exist on chain (it must receive funds or send a transaction first)"
    )]
    AccountNotFound(String),
    #[error("{what} failed: {status}")]
    Status { what: &'static str, status: Status },
    #[error("{what} did not answer within {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    #[error("unexpected answer to {what}: {reason}")]
    BadResponse { what: &'static str, reason: String },
}

impl QueryError {
    /// Whether trying again later may help: the node was unreachable or slow, not wrong.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(..) | Self::Timeout { .. } => true,
            Self::Status { status, .. } => transient(status),
            Self::AccountNotFound(_) | Self::BadResponse { .. } => false,
        }
    }
}

/// A signer's position on chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    pub account_number: u64,
    pub sequence: u64,
    /// Known once the account has signed a transaction (ring members need it).
    pub public_key: Option<PublicKey>,
}

/// A client of a node's Cosmos gRPC port (`http://node:9090`).
#[derive(Clone, Debug)]
pub struct ChainGrpc {
    channel: Channel,
    retry: RetryPolicy,
}

fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted
    )
}

/// A transport failure's status says "transport error"; its cause (refused, a
/// certificate the roots do not trust) goes into the message.
fn with_cause(status: Status) -> Status {
    match std::error::Error::source(&status) {
        Some(cause) => Status::new(
            status.code(),
            format!("{}: {}", status.message(), lode_net::error_chain(cause)),
        ),
        None => status,
    }
}

impl ChainGrpc {
    /// A lazily connecting client: an unreachable node shows up as a (retried) error on
    /// the first call, not here.
    pub fn new(url: &str, retry: RetryPolicy) -> Result<Self, QueryError> {
        // `https://` through TLS (lode_net::tls: the system's roots, or SSL_CERT_FILE).
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| QueryError::Connect(url.to_string(), e.to_string()))?
            .connect_timeout(retry.timeout)
            .timeout(retry.timeout)
            .connect_with_connector_lazy(lode_net::tls::h2_connector(retry.timeout));
        Ok(Self { channel, retry })
    }

    /// Runs `call` with the retry policy.
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        what: &'static str,
        mut call: F,
    ) -> Result<T, QueryError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 1;
        loop {
            let result = tokio::time::timeout(self.retry.timeout, call(self.channel.clone())).await;
            let status = match result {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(s)) => with_cause(s),
                Err(_) => Status::deadline_exceeded(format!("{what} timed out")),
            };
            if !transient(&status) || attempt >= self.retry.attempts {
                return Err(match status.code() {
                    Code::DeadlineExceeded => QueryError::Timeout {
                        what,
                        timeout: self.retry.timeout,
                    },
                    _ => QueryError::Status { what, status },
                });
            }
            tracing::warn!(%status, attempt, what, "query failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
            attempt += 1;
        }
    }

    /// `cosmos.auth.v1beta1.Query/Account`: the account number and next sequence.
    pub async fn account(&self, address: &str) -> Result<Account, QueryError> {
        const WHAT: &str = "account query";
        let req = proto::auth::QueryAccountRequest {
            address: address.to_string(),
        };
        let res = self
            .with_retries(WHAT, |ch| {
                let req = req.clone();
                async move {
                    proto::auth::query_client::QueryClient::new(ch)
                        .account(req)
                        .await
                }
            })
            .await;
        let any = match res {
            Ok(r) => r.into_inner().account,
            Err(QueryError::Status { status, .. }) if status.code() == Code::NotFound => {
                return Err(QueryError::AccountNotFound(address.to_string()));
            }
            Err(e) => return Err(e),
        };
        let any = any.ok_or(QueryError::BadResponse {
            what: WHAT,
            reason: "no account in the answer".into(),
        })?;
        if any.type_url != BASE_ACCOUNT_TYPE_URL {
            return Err(QueryError::BadResponse {
                what: WHAT,
                reason: format!("unsupported account type {}", any.type_url),
            });
        }
        let base = proto::auth::BaseAccount::decode(any.value.as_slice()).map_err(|e| {
            QueryError::BadResponse {
                what: WHAT,
                reason: e.to_string(),
            }
        })?;
        Ok(Account {
            account_number: base.account_number,
            sequence: base.sequence,
            public_key: match base.pub_key {
                None => None,
                Some(pk) if pk.type_url == SECP256K1_PUBKEY_TYPE_URL => {
                    let key =
                        lode_kernels::proto::cosmos::Secp256k1PubKey::decode(pk.value.as_slice())
                            .ok()
                            .and_then(|k| PublicKey::from_sec1(&k.key).ok())
                            .ok_or(QueryError::BadResponse {
                                what: WHAT,
                                reason: "malformed secp256k1 public key".into(),
                            })?;
                    Some(key)
                }
                Some(pk) => {
                    return Err(QueryError::BadResponse {
                        what: WHAT,
                        reason: format!("unsupported public key type {}", pk.type_url),
                    });
                }
            },
        })
    }

    /// `cosmos.bank.v1beta1.Query/Balance`, as an integer amount of `denom`.
    pub async fn balance(&self, address: &str, denom: &str) -> Result<u128, QueryError> {
        const WHAT: &str = "balance query";
        let req = proto::bank::QueryBalanceRequest {
            address: address.to_string(),
            denom: denom.to_string(),
        };
        let res = self
            .with_retries(WHAT, |ch| {
                let req = req.clone();
                async move {
                    proto::bank::query_client::QueryClient::new(ch)
                        .balance(req)
                        .await
                }
            })
            .await?;
        let coin = res.into_inner().balance.unwrap_or_default();
        if coin.amount.is_empty() {
            return Ok(0);
        }
        coin.amount.parse().map_err(|_| QueryError::BadResponse {
            what: WHAT,
            reason: format!("amount {:?} is not an integer", coin.amount),
        })
    }
}

impl ChainGrpc {
    /// `cosmos.tx.v1beta1.Service/Simulate`: the gas a signed transaction uses. Simulation
    /// failures (a claim outside its window, say) come back as the node's status.
    pub async fn simulate(&self, tx_bytes: &[u8]) -> Result<u64, QueryError> {
        const WHAT: &str = "simulation";
        let req = proto::tx::SimulateRequest {
            tx_bytes: tx_bytes.to_vec(),
        };
        let res = self
            .with_retries(WHAT, |ch| {
                let req = req.clone();
                async move {
                    proto::tx::service_client::ServiceClient::new(ch)
                        .simulate(req)
                        .await
                }
            })
            .await?;
        let info = res.into_inner().gas_info.ok_or(QueryError::BadResponse {
            what: WHAT,
            reason: "no gas info".into(),
        })?;
        Ok(info.gas_used)
    }
}

/// The gas limit to sign with: simulated gas × adjustment, rounded up (Cosmos clients'
/// `--gas auto --gas-adjustment`).
pub fn gas_limit(simulated: u64, adjustment: f64) -> u64 {
    let adjusted = (simulated as f64 * adjustment.max(1.0)).ceil();
    if adjusted >= u64::MAX as f64 {
        u64::MAX
    } else {
        adjusted as u64
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn gas_limit_rounds_up_and_never_shrinks() {
        assert_eq!(super::gas_limit(100_000, 1.5), 150_000);
        assert_eq!(super::gas_limit(3, 1.5), 5);
        assert_eq!(super::gas_limit(1000, 0.5), 1000);
        assert_eq!(super::gas_limit(u64::MAX, 2.0), u64::MAX);
    }
}
