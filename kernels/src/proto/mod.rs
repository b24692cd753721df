//! Protocol-buffer messages of the relay protocol, byte-identical to gogoproto.

/// Declares a message struct and its [`Message`] implementation from a field list:
/// `number name: kind<Type>`, where `kind` names a module of `field`.
macro_rules! proto_message {
    ($(#[$doc:meta])* $name:ident = $proto:literal {
        $($(#[$fdoc:meta])* $num:literal $field:ident : $kind:ident < $ty:ty >),* $(,)?
    }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        impl $crate::proto::Message for $name {
            const NAME: &'static str = $proto;

            fn encoded_len(&self) -> usize {
                0 $(+ $crate::proto::field::$kind::len($num, &self.$field))*
            }

            fn encode_to(&self, out: &mut Vec<u8>) {
                $($crate::proto::field::$kind::put(out, $num, &self.$field);)*
            }

            fn merge_field(
                &mut self,
                number: u32,
                wt: $crate::proto::wire::WireType,
                r: &mut $crate::proto::wire::Reader<'_>,
            ) -> Result<(), $crate::proto::ProtoError> {
                match number {
                    $($num => $crate::proto::field::$kind::merge(&mut self.$field, Self::NAME, $num, wt, r),)*
                    _ => r.skip(wt),
                }
            }
        }
    };
}

pub mod cosmos;
mod field;
mod messages;
#[cfg(feature = "prost")]
mod prost_impl;
pub mod wire;

pub use messages::{
    Claim, Header, MsgCreateClaim, MsgSubmitProof, PoktHttpRequest, PoktHttpResponse, Relay,
    RelayMinerError, RelayRequest, RelayRequestMetadata, RelayResponse, RelayResponseMetadata,
    SessionHeader,
};
pub use wire::{DEFAULT_MAX_MESSAGE_LEN, Message, ProtoError};
