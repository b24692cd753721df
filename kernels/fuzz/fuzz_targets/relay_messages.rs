//! Every protobuf decoder of the relay protocol, and the streamed-response splitter, on
//! arbitrary bytes: errors, never panics; what decodes re-encodes to a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lode_kernels::proto::{
    Claim, Message, MsgCreateClaim, MsgSubmitProof, PoktHttpRequest, PoktHttpResponse, Relay, RelayRequest,
    RelayResponse, SessionHeader,
};
use lode_kernels::relay;

fn check<M: Message + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(m) = M::decode(data) {
        assert_eq!(M::decode(&m.encode()).ok(), Some(m));
    }
}

fuzz_target!(|data: &[u8]| {
    check::<RelayRequest>(data);
    check::<RelayResponse>(data);
    check::<Relay>(data);
    check::<SessionHeader>(data);
    check::<PoktHttpRequest>(data);
    check::<PoktHttpResponse>(data);
    check::<MsgCreateClaim>(data);
    check::<MsgSubmitProof>(data);
    check::<Claim>(data);
    let _ = relay::decode_stream(data);
});
