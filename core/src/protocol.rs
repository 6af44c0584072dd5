//! The JSON wire protocol, compatible with fastapi-websocket-rpc 0.1.x.
//!
//! One JSON object per WebSocket text frame, with both envelope keys always written:
//!
//! ```text
//! {"request": {"method": "add", "arguments": {"a": 1}, "call_id": "<32 hex>"}, "response": null}
//! {"request": null, "response": {"result": 3, "result_type": "int", "call_id": "<same id>"}}
//! ```
//!
//! Errors are an extension: `"result": null, "result_type": "error"` and an extra
//! `"error": {"code", "message"}` key, which Python peers ignore.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::error::{ErrorCode, RpcError};

/// Name of the built-in method that returns `"pong"`.
pub const PING_METHOD: &str = "_ping_";
/// Name of the built-in method that returns the responding side's channel id.
pub const GET_CHANNEL_ID_METHOD: &str = "_get_channel_id_";
/// `result_type` written on error responses.
pub const ERROR_RESULT_TYPE: &str = "error";

/// A request as read from the wire.
#[derive(Debug, Deserialize)]
pub struct IncomingRequest {
    /// The method to run.
    pub method: String,
    /// The keyword arguments: `None` when the key is absent, `Some("null")` when it is null.
    #[serde(default, deserialize_with = "present_raw")]
    pub arguments: Option<Box<RawValue>>,
    /// The id to respond with, which browsers may leave out.
    #[serde(default)]
    pub call_id: Option<String>,
}

/// A response as read from the wire.
#[derive(Debug, Deserialize)]
pub struct IncomingResponse {
    /// The result value, kept encoded until the caller decodes it into its own type.
    #[serde(default, deserialize_with = "present_raw")]
    pub result: Option<Box<RawValue>>,
    /// The Python type name of the result, or `"error"`.
    #[serde(default)]
    pub result_type: Option<String>,
    /// The id of the request this responds to.
    #[serde(default)]
    pub call_id: Option<String>,
    /// The error extension.
    #[serde(default)]
    pub error: Option<RpcError>,
}

/// One decoded frame.
#[derive(Debug, Default, Deserialize)]
pub struct IncomingFrame {
    /// The request part, if any.
    #[serde(default)]
    pub request: Option<IncomingRequest>,
    /// The response part, if any.
    #[serde(default)]
    pub response: Option<IncomingResponse>,
}

fn present_raw<'de, D>(deserializer: D) -> Result<Option<Box<RawValue>>, D::Error>
where
    D: Deserializer<'de>,
{
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

/// Decoding failure of a frame.
#[derive(Debug)]
pub struct FrameError {
    /// The call id found in the frame, so the error response reaches the right caller.
    pub call_id: Option<String>,
    /// The error to respond with.
    pub error: RpcError,
}

/// Decodes one text frame.
///
/// A frame that is not JSON, or JSON that is not an envelope object, returns a [`FrameError`]
/// with an `invalid_frame` code. The call id is recovered when the frame is otherwise readable.
pub fn decode_frame(payload: &[u8]) -> Result<IncomingFrame, FrameError> {
    match serde_json::from_slice::<IncomingFrame>(payload) {
        Ok(frame) => Ok(frame),
        Err(error) => {
            let call_id = serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|value| {
                    value
                        .get("request")?
                        .get("call_id")?
                        .as_str()
                        .map(str::to_owned)
                });
            let message = if error.is_syntax() || error.is_eof() {
                format!("frame is not valid JSON: {error}")
            } else {
                format!("frame is not a valid request/response envelope: {error}")
            };
            Err(FrameError {
                call_id,
                error: RpcError::new(ErrorCode::InvalidFrame, message),
            })
        }
    }
}

/// An outgoing request, borrowed for encoding.
#[derive(Serialize)]
struct OutgoingRequest<'a> {
    method: &'a str,
    arguments: &'a RawValue,
    call_id: &'a str,
}

#[derive(Serialize)]
struct RequestEnvelope<'a> {
    request: OutgoingRequest<'a>,
    response: (),
}

/// Encodes a request frame. `arguments` must already be a JSON object.
pub fn encode_request(method: &str, arguments: &RawValue, call_id: &str) -> Bytes {
    let envelope = RequestEnvelope {
        request: OutgoingRequest {
            method,
            arguments,
            call_id,
        },
        response: (),
    };
    to_bytes(&envelope, method.len() + arguments.get().len() + 96)
}

#[derive(Serialize)]
struct OutgoingResponse<'a> {
    result: &'a RawValue,
    result_type: Option<&'a str>,
    call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RpcError>,
}

#[derive(Serialize)]
struct ResponseEnvelope<'a> {
    request: (),
    response: OutgoingResponse<'a>,
}

/// Encodes a successful response frame whose `result` is already encoded JSON.
pub fn encode_result(call_id: Option<&str>, result: &RawValue) -> Bytes {
    let envelope = ResponseEnvelope {
        response: OutgoingResponse {
            result,
            result_type: Some(result_type_of(result.get())),
            call_id,
            error: None,
        },
        request: (),
    };
    to_bytes(&envelope, result.get().len() + 96)
}

/// Encodes an error response frame.
pub fn encode_error(call_id: Option<&str>, error: &RpcError) -> Bytes {
    let null = RawValue::NULL;
    let envelope = ResponseEnvelope {
        response: OutgoingResponse {
            result: null,
            result_type: Some(ERROR_RESULT_TYPE),
            call_id,
            error: Some(error),
        },
        request: (),
    };
    to_bytes(&envelope, error.message.len() + 160)
}

fn to_bytes<T: Serialize>(value: &T, capacity: usize) -> Bytes {
    let mut buffer = BytesMut::with_capacity(capacity).writer();
    // Serializing these borrowed structs cannot fail: every map key is a string and every
    // value is already valid JSON or a plain string.
    if serde_json::to_writer(&mut buffer, value).is_err() {
        unreachable!("envelope serialization is infallible");
    }
    buffer.into_inner().freeze()
}

/// Returns the Python type name that fastapi-websocket-rpc would write for an encoded value.
///
/// The Python client reads `result` and ignores `result_type`, so this only keeps frames
/// looking familiar to people who read them.
pub fn result_type_of(encoded: &str) -> &'static str {
    match encoded.as_bytes().first() {
        Some(b'"') => "str",
        Some(b't' | b'f') => "bool",
        Some(b'n') => "None",
        Some(b'{') => "dict",
        Some(b'[') => "list",
        Some(_) if encoded.contains(['.', 'e', 'E']) => "float",
        Some(_) => "int",
        None => "None",
    }
}

/// Generates a new 32-character lowercase hex id, the format Python peers use for ids.
pub fn new_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// Call ids for one channel: a random 64-bit prefix plus a counter, 32 hex characters in all.
///
/// Cheaper than a random id per call and unique within the channel's lifetime.
#[derive(Debug)]
pub(crate) struct CallIds {
    prefix: u64,
    counter: std::sync::atomic::AtomicU64,
}

impl CallIds {
    pub(crate) fn new() -> Self {
        Self {
            prefix: fastrand::u64(..),
            counter: std::sync::atomic::AtomicU64::new(fastrand::u32(..) as u64),
        }
    }

    pub(crate) fn next(&self) -> CallId {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        CallId::from_parts(self.prefix, n)
    }
}

/// A 32-character hex call id kept on the stack.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallId([u8; 32]);

impl CallId {
    fn from_parts(high: u64, low: u64) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let value = (u128::from(high) << 64) | u128::from(low);
        let mut out = [0u8; 32];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = (31 - i) * 4;
            *slot = HEX[((value >> shift) & 0xf) as usize];
        }
        Self(out)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn as_str(&self) -> &str {
        // The array holds only ASCII hex digits.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Appends `text` to `out` as a JSON string literal.
pub(crate) fn put_json_str(out: &mut BytesMut, text: &str) {
    let mut writer = out.writer();
    if serde_json::to_writer(&mut writer, text).is_err() {
        unreachable!("writing a string into memory is infallible");
    }
}

/// Encodes `value` as a JSON object for use as call arguments.
pub(crate) fn encode_arguments<T: Serialize + ?Sized>(
    value: &T,
) -> Result<Box<RawValue>, Option<serde_json::Error>> {
    let raw = serde_json::value::to_raw_value(value).map_err(Some)?;
    if raw.get().starts_with('{') {
        Ok(raw)
    } else {
        Err(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frame_matches_python_layout() {
        let args = serde_json::value::to_raw_value(&serde_json::json!({"a": 1})).unwrap();
        let frame = encode_request("add", &args, "0e7431beb11b4be4b27861d261fb0b39");
        assert_eq!(
            &frame[..],
            br#"{"request":{"method":"add","arguments":{"a":1},"call_id":"0e7431beb11b4be4b27861d261fb0b39"},"response":null}"#
        );
    }

    #[test]
    fn result_frame_has_both_keys() {
        let frame = encode_result(
            Some("ab"),
            &RawValue::from_string("\"pong\"".into()).unwrap(),
        );
        assert_eq!(
            &frame[..],
            br#"{"request":null,"response":{"result":"pong","result_type":"str","call_id":"ab"}}"#
        );
    }

    #[test]
    fn error_frame_carries_extension() {
        let frame = encode_error(None, &RpcError::method_not_found("nope"));
        let value: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(value["response"]["result"], serde_json::Value::Null);
        assert_eq!(value["response"]["result_type"], "error");
        assert_eq!(value["response"]["call_id"], serde_json::Value::Null);
        assert_eq!(value["response"]["error"]["code"], "method_not_found");
        assert_eq!(value["request"], serde_json::Value::Null);
    }

    #[test]
    fn decode_distinguishes_missing_and_null_arguments() {
        let missing = decode_frame(br#"{"request":{"method":"m"}}"#).unwrap();
        assert!(missing.request.unwrap().arguments.is_none());
        let null = decode_frame(br#"{"request":{"method":"m","arguments":null}}"#).unwrap();
        assert_eq!(null.request.unwrap().arguments.unwrap().get(), "null");
    }

    #[test]
    fn decode_rejects_non_json_and_non_envelope() {
        let not_json = decode_frame(b"hello").unwrap_err();
        assert_eq!(not_json.error.code, ErrorCode::InvalidFrame);
        let array = decode_frame(b"[1,2]").unwrap_err();
        assert_eq!(array.error.code, ErrorCode::InvalidFrame);
        let numeric_id = decode_frame(br#"{"request":{"method":"m","call_id":5}}"#).unwrap_err();
        assert_eq!(numeric_id.error.code, ErrorCode::InvalidFrame);
    }

    #[test]
    fn decode_recovers_call_id_of_bad_request() {
        let bad = decode_frame(br#"{"request":{"method":7,"call_id":"abc"}}"#).unwrap_err();
        assert_eq!(bad.call_id.as_deref(), Some("abc"));
    }

    #[test]
    fn empty_object_is_an_empty_frame() {
        let frame = decode_frame(b"{}").unwrap();
        assert!(frame.request.is_none());
        assert!(frame.response.is_none());
    }

    #[test]
    fn result_types_follow_python_names() {
        assert_eq!(result_type_of("1"), "int");
        assert_eq!(result_type_of("-1.5"), "float");
        assert_eq!(result_type_of("true"), "bool");
        assert_eq!(result_type_of("\"x\""), "str");
        assert_eq!(result_type_of("{}"), "dict");
        assert_eq!(result_type_of("[]"), "list");
        assert_eq!(result_type_of("null"), "None");
    }

    #[test]
    fn call_ids_are_32_hex_and_distinct() {
        let ids = CallIds::new();
        let first = ids.next();
        let second = ids.next();
        assert_eq!(first.as_str().len(), 32);
        assert!(first.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(first.as_str(), second.as_str());
        assert_eq!(new_id().len(), 32);
    }
}
