//! The protobuf codec of every generated arbiter service and client: prost's, except that a
//! message that cannot be decoded (invalid UTF-8 in a string, a malformed varint, nesting beyond
//! prost's recursion limit) is INVALID_ARGUMENT, which it is, rather than tonic's INTERNAL.
//! Generated clients share the codec (tonic names one per build), so a client that receives an
//! undecodable answer sees INVALID_ARGUMENT as well; the message says what could not be decoded.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// See the module documentation; named by `build.rs` as the generated code's codec.
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder { _type: PhantomData }
    }
}

/// Decodes one `U`, mapping decode errors to INVALID_ARGUMENT.
#[derive(Debug)]
pub struct MessageDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("message could not be decoded: {e}")))
    }
}
