//! Protocol-buffer messages of the relay protocol, byte-identical to gogoproto.

mod field;
mod messages;
pub mod wire;

pub use messages::{
    Claim, Header, MsgCreateClaim, MsgSubmitProof, PoktHttpRequest, PoktHttpResponse, Relay,
    RelayMinerError, RelayRequest, RelayRequestMetadata, RelayResponse, RelayResponseMetadata,
    SessionHeader,
};
pub use wire::{DEFAULT_MAX_MESSAGE_LEN, Message, ProtoError};
