//! [`prost::Message`] for [`SessionHeader`], so that the protobuf code generated for the
//! chain's queries and the store's protocol (`extern_path`) carries this one definition
//! of a session header instead of declaring its own and converting. Field by field the
//! encoding is the one [`super::Message`] writes (ascending numbers, proto3 defaults
//! left out), so both encoders give the same bytes.

use prost::DecodeError;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, int64, skip_field, string};

use super::SessionHeader;

impl prost::Message for SessionHeader {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for (tag, s) in [
            (1, &self.application_address),
            (2, &self.service_id),
            (3, &self.session_id),
        ] {
            if !s.is_empty() {
                string::encode(tag, s, buf);
            }
        }
        for (tag, h) in [
            (4, &self.session_start_block_height),
            (5, &self.session_end_block_height),
        ] {
            if *h != 0 {
                int64::encode(tag, h, buf);
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => string::merge(wire_type, &mut self.application_address, buf, ctx),
            2 => string::merge(wire_type, &mut self.service_id, buf, ctx),
            3 => string::merge(wire_type, &mut self.session_id, buf, ctx),
            4 => int64::merge(wire_type, &mut self.session_start_block_height, buf, ctx),
            5 => int64::merge(wire_type, &mut self.session_end_block_height, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let s = |tag, v: &String| {
            if v.is_empty() {
                0
            } else {
                string::encoded_len(tag, v)
            }
        };
        let h = |tag, v: &i64| {
            if *v == 0 {
                0
            } else {
                int64::encoded_len(tag, v)
            }
        };
        s(1, &self.application_address)
            + s(2, &self.service_id)
            + s(3, &self.session_id)
            + h(4, &self.session_start_block_height)
            + h(5, &self.session_end_block_height)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::super::Message as _;
    use super::*;

    #[test]
    fn prost_and_the_kernels_encode_and_decode_alike() {
        let headers = [
            SessionHeader::default(),
            SessionHeader {
                application_address: "pokt1app".into(),
                service_id: "llm".into(),
                session_id: "a".repeat(64),
                session_start_block_height: 1,
                session_end_block_height: -7,
            },
            SessionHeader {
                session_id: "only the id".into(),
                session_end_block_height: i64::MAX,
                ..Default::default()
            },
        ];
        for h in headers {
            let ours = h.encode();
            let theirs = prost::Message::encode_to_vec(&h);
            assert_eq!(ours, theirs, "{h:?}");
            assert_eq!(prost::Message::encoded_len(&h), ours.len());
            let back: SessionHeader = prost::Message::decode(ours.as_slice()).expect("decodes");
            assert_eq!(back, h);
        }
        // Unknown fields are skipped; a non-UTF-8 string is refused, as by the kernels.
        let mut with_unknown = SessionHeader::default().encode();
        with_unknown.extend_from_slice(&[0x30, 0x05]);
        assert_eq!(
            <SessionHeader as prost::Message>::decode(with_unknown.as_slice()).expect("ok"),
            SessionHeader::default()
        );
        let bad_utf8 = [0x0a, 0x01, 0xff];
        assert!(<SessionHeader as prost::Message>::decode(&bad_utf8[..]).is_err());
        assert!(SessionHeader::decode(&bad_utf8).is_err());
    }
}
