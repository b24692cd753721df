//! Cosmos SDK transactions (`cosmos.tx.v1beta1`) as the chain decodes them, and
//! SIGN_MODE_DIRECT signing with a secp256k1 key.
//!
//! These are lode's own definitions rather than `cosmos-sdk-proto`/`cosmrs` (which pin
//! another prost/tonic major): the handful of messages a supplier needs, encoded with the
//! same rules as every other message here, and checked byte for byte against an
//! independent implementation (`cosmpy`) in `tests/cosmpy_crosscheck.rs`.

use super::Message;
use crate::crypto::{PublicKey, supplier};

proto_message! {
    /// `google.protobuf.Any`.
    Any = "Any" {
        1 type_url: string<String>,
        2 value: bytes<Vec<u8>>,
    }
}

proto_message! {
    /// `cosmos.base.v1beta1.Coin`; the amount is a decimal string.
    Coin = "Coin" {
        1 denom: string<String>,
        2 amount: string<String>,
    }
}

proto_message! {
    /// `cosmos.tx.v1beta1.TxBody`.
    TxBody = "TxBody" {
        1 messages: messages<Vec<Any>>,
        2 memo: string<String>,
        /// The last height at which the transaction may be included.
        3 timeout_height: uint64<u64>,
    }
}

proto_message! {
    /// `cosmos.tx.v1beta1.ModeInfo.Single`.
    ModeInfoSingle = "ModeInfo.Single" {
        /// `SignMode`: 1 is SIGN_MODE_DIRECT.
        1 mode: int32<i32>,
    }
}

proto_message! {
    /// `cosmos.tx.v1beta1.ModeInfo` (only the `single` case of its oneof).
    ModeInfo = "ModeInfo" {
        1 single: optional<Option<ModeInfoSingle>>,
    }
}

proto_message! {
    /// `cosmos.tx.v1beta1.SignerInfo`.
    SignerInfo = "SignerInfo" {
        1 public_key: optional<Option<Any>>,
        2 mode_info: optional<Option<ModeInfo>>,
        3 sequence: uint64<u64>,
    }
}

proto_message! {
    /// `cosmos.tx.v1beta1.Fee`.
    Fee = "Fee" {
        1 amount: messages<Vec<Coin>>,
        2 gas_limit: uint64<u64>,
        3 payer: string<String>,
        4 granter: string<String>,
    }
}

proto_message! {
    /// `cosmos.tx.v1beta1.AuthInfo`.
    AuthInfo = "AuthInfo" {
        1 signer_infos: messages<Vec<SignerInfo>>,
        2 fee: optional<Option<Fee>>,
    }
}

proto_message! {
    /// `cosmos.tx.v1beta1.SignDoc`: what SIGN_MODE_DIRECT signs.
    SignDoc = "SignDoc" {
        1 body_bytes: bytes<Vec<u8>>,
        2 auth_info_bytes: bytes<Vec<u8>>,
        3 chain_id: string<String>,
        4 account_number: uint64<u64>,
    }
}

proto_message! {
    /// `cosmos.tx.v1beta1.TxRaw`: what `broadcast_tx_sync` carries.
    TxRaw = "TxRaw" {
        1 body_bytes: bytes<Vec<u8>>,
        2 auth_info_bytes: bytes<Vec<u8>>,
        3 signatures: bytes_list<Vec<Vec<u8>>>,
    }
}

proto_message! {
    /// `cosmos.crypto.secp256k1.PubKey`.
    Secp256k1PubKey = "PubKey" {
        1 key: bytes<Vec<u8>>,
    }
}

/// SIGN_MODE_DIRECT.
pub const SIGN_MODE_DIRECT: i32 = 1;
pub const SECP256K1_PUBKEY_TYPE_URL: &str = "/cosmos.crypto.secp256k1.PubKey";
pub const MSG_CREATE_CLAIM_TYPE_URL: &str = "/pocket.proof.MsgCreateClaim";
pub const MSG_SUBMIT_PROOF_TYPE_URL: &str = "/pocket.proof.MsgSubmitProof";
pub const MSG_STAKE_SUPPLIER_TYPE_URL: &str = "/pocket.supplier.MsgStakeSupplier";
pub const MSG_UNSTAKE_SUPPLIER_TYPE_URL: &str = "/pocket.supplier.MsgUnstakeSupplier";

proto_message! {
    /// `pocket.shared.ServiceRevenueShare`: who receives which percentage of a service's
    /// rewards. (Field 2 is reserved upstream.)
    ServiceRevenueShare = "ServiceRevenueShare" {
        1 address: string<String>,
        3 rev_share_percentage: uint64<u64>,
    }
}

proto_message! {
    /// `pocket.shared.ConfigOption`.
    ConfigOption = "ConfigOption" {
        /// `ConfigOptions`: 1 is TIMEOUT.
        1 key: int32<i32>,
        2 value: string<String>,
    }
}

proto_message! {
    /// `pocket.shared.SupplierEndpoint`: where a supplier serves a service.
    SupplierEndpoint = "SupplierEndpoint" {
        1 url: string<String>,
        /// `RPCType`: 1 gRPC, 2 websocket, 3 JSON-RPC, 4 REST.
        2 rpc_type: int32<i32>,
        3 configs: messages<Vec<ConfigOption>>,
    }
}

proto_message! {
    /// `pocket.shared.SupplierServiceConfig`: one service a supplier stakes for.
    SupplierServiceConfig = "SupplierServiceConfig" {
        1 service_id: string<String>,
        2 endpoints: messages<Vec<SupplierEndpoint>>,
        3 rev_share: messages<Vec<ServiceRevenueShare>>,
    }
}

proto_message! {
    /// `pocket.supplier.MsgStakeSupplier`: stake (or update the stake and services of) a
    /// supplier. The signer is the owner or the operator.
    MsgStakeSupplier = "MsgStakeSupplier" {
        1 signer: string<String>,
        2 owner_address: string<String>,
        3 operator_address: string<String>,
        4 stake: optional<Option<Coin>>,
        5 services: messages<Vec<SupplierServiceConfig>>,
    }
}

proto_message! {
    /// `pocket.supplier.MsgUnstakeSupplier`: begin unbonding at the end of the session.
    MsgUnstakeSupplier = "MsgUnstakeSupplier" {
        1 signer: string<String>,
        2 operator_address: string<String>,
    }
}

impl Any {
    /// Packs a message under its type URL.
    pub fn pack<M: Message>(type_url: &str, m: &M) -> Self {
        Self {
            type_url: type_url.to_string(),
            value: m.encode(),
        }
    }
}

/// Everything that varies between transactions of one signer.
#[derive(Clone, Debug)]
pub struct TxParams {
    pub chain_id: String,
    pub account_number: u64,
    pub sequence: u64,
    pub fee: Vec<Coin>,
    pub gas_limit: u64,
    pub memo: String,
    pub timeout_height: u64,
}

/// The signer info of a single secp256k1 signer in direct mode.
pub fn signer_info(key: &PublicKey, sequence: u64) -> SignerInfo {
    SignerInfo {
        public_key: Some(Any::pack(
            SECP256K1_PUBKEY_TYPE_URL,
            &Secp256k1PubKey {
                key: key.to_compressed().to_vec(),
            },
        )),
        mode_info: Some(ModeInfo {
            single: Some(ModeInfoSingle {
                mode: SIGN_MODE_DIRECT,
            }),
        }),
        sequence,
    }
}

#[cfg(feature = "tx-signing")]
/// Builds and signs (SIGN_MODE_DIRECT) a transaction carrying `messages`; the signature is
/// the Cosmos secp256k1 one over the SignDoc bytes.
pub fn sign_tx(messages: Vec<Any>, params: &TxParams, key: &crate::crypto::SecretKey) -> TxRaw {
    let body = TxBody {
        messages,
        memo: params.memo.clone(),
        timeout_height: params.timeout_height,
    };
    let auth_info = AuthInfo {
        signer_infos: vec![signer_info(&key.public_key(), params.sequence)],
        fee: Some(Fee {
            amount: params.fee.clone(),
            gas_limit: params.gas_limit,
            ..Default::default()
        }),
    };
    let (body_bytes, auth_info_bytes) = (body.encode(), auth_info.encode());
    let sign_doc = SignDoc {
        body_bytes: body_bytes.clone(),
        auth_info_bytes: auth_info_bytes.clone(),
        chain_id: params.chain_id.clone(),
        account_number: params.account_number,
    };
    let signature = supplier::sign(key, &sign_doc.encode());
    TxRaw {
        body_bytes,
        auth_info_bytes,
        signatures: vec![signature.to_vec()],
    }
}

/// Checks a single-signer direct-mode transaction's signature, as the chain's ante handler
/// does for the signer's key, chain id and account number.
pub fn verify_tx(tx: &TxRaw, key: &PublicKey, chain_id: &str, account_number: u64) -> bool {
    let [signature] = tx.signatures.as_slice() else {
        return false;
    };
    let sign_doc = SignDoc {
        body_bytes: tx.body_bytes.clone(),
        auth_info_bytes: tx.auth_info_bytes.clone(),
        chain_id: chain_id.to_string(),
        account_number,
    };
    supplier::verify_key(key, &sign_doc.encode(), signature)
}

/// The transaction hash CometBFT reports: SHA-256 of the `TxRaw` bytes, uppercase hex.
pub fn tx_hash(tx_bytes: &[u8]) -> String {
    use sha2::Digest;
    crate::hex::encode_upper(&sha2::Sha256::digest(tx_bytes))
}
