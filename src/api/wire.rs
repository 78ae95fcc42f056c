//! The request codec of `Inspect` and `InspectStream`. tonic's prost codec turns a message that
//! does not decode into INTERNAL and, inside a stream, leaves the stream unreadable; this one
//! always yields the message, decoded or not, so the handler can answer the client's bad bytes
//! as its error (INVALID_ARGUMENT) and a stream can go on past them. Frame-level failures (a
//! message over `max_message_bytes`, a broken length prefix) are still tonic's.

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use super::proto;

/// A request message that protobuf could not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the request message could not be decoded as a linesight.v1.InspectRequest: {0}")]
pub struct UndecodableMessage(pub String);

/// One `InspectRequest` message as it came off the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum WireRequest {
    Decoded(proto::InspectRequest),
    Undecodable(UndecodableMessage),
}

/// Decodes one whole message body.
pub fn decode_inspect_request(message: Bytes) -> WireRequest {
    match proto::InspectRequest::decode(message) {
        Ok(request) => WireRequest::Decoded(request),
        Err(error) => WireRequest::Undecodable(UndecodableMessage(error.to_string())),
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct InspectCodec;

impl Codec for InspectCodec {
    type Encode = proto::InspectResponse;
    type Decode = WireRequest;
    type Encoder = ProstEncoder<proto::InspectResponse>;
    type Decoder = WireDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct WireDecoder;

impl Decoder for WireDecoder {
    type Item = WireRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        // The whole body is taken before decoding: tonic reads the next message's header right
        // after this one's end and does not skip what a failed decode left unread. Zero-copy: the
        // buffer is split, and `image.data` is a slice of it.
        let message = buf.copy_to_bytes(buf.remaining());
        Ok(Some(decode_inspect_request(message)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_bytes_decode_and_bad_ones_keep_the_decoders_message() {
        let request = proto::InspectRequest { camera_id: "cam".into(), sequence: 7, ..Default::default() };
        assert_eq!(decode_inspect_request(request.encode_to_vec().into()), WireRequest::Decoded(request));
        // camera_id (field 1, length-delimited) holding invalid UTF-8.
        let WireRequest::Undecodable(error) = decode_inspect_request(Bytes::from_static(&[0x0a, 0x02, 0xff, 0xfe]))
        else {
            panic!("invalid UTF-8 decoded");
        };
        assert!(error.0.contains("camera_id") && error.0.contains("UTF-8"), "{error}");
        assert!(error.to_string().starts_with("the request message could not be decoded"), "{error}");
        assert!(matches!(decode_inspect_request(Bytes::from_static(&[0xff; 12])), WireRequest::Undecodable(_)));
    }
}
