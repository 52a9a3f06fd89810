//! The OTLP logs wire format, written directly: a [`Record`] becomes the
//! bytes of one protobuf `LogRecord` with no intermediate message structs
//! (no per-field `String` copies), and a batch of encoded records becomes
//! the bytes of one `ExportLogsServiceRequest` by framing them, without
//! decoding or re-encoding anything. The request goes out through tonic as
//! those bytes ([`RawCodec`]); a retry re-sends the same buffer.
//!
//! Field numbers are opentelemetry-proto's (`logs.proto`, `common.proto`,
//! `logs_service.proto`); a unit test checks that what is written decodes
//! to exactly the `LogRecord` the generated structs describe.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::bytes::{BufMut, Bytes};
use prost::encoding::{encode_varint, encoded_len_varint, WireType};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::record::{key, Record, Severity, Value};

// LogRecord
const LR_TIME: u32 = 1;
const LR_SEVERITY_NUMBER: u32 = 2;
const LR_SEVERITY_TEXT: u32 = 3;
const LR_BODY: u32 = 5;
const LR_ATTRIBUTES: u32 = 6;
const LR_OBSERVED_TIME: u32 = 11;
// KeyValue
const KV_KEY: u32 = 1;
const KV_VALUE: u32 = 2;
// AnyValue (oneof)
const AV_STRING: u32 = 1;
const AV_BOOL: u32 = 2;
const AV_INT: u32 = 3;
// ExportLogsServiceRequest / ResourceLogs / ScopeLogs
const REQ_RESOURCE_LOGS: u32 = 1;
const RL_RESOURCE: u32 = 1;
const RL_SCOPE_LOGS: u32 = 2;
const SL_SCOPE: u32 = 1;
const SL_LOG_RECORDS: u32 = 2;
// Every field number here takes one key byte ([`put_key`]).
const _: () = {
    let tags = [
        LR_TIME,
        LR_SEVERITY_NUMBER,
        LR_SEVERITY_TEXT,
        LR_BODY,
        LR_ATTRIBUTES,
        LR_OBSERVED_TIME,
        KV_KEY,
        KV_VALUE,
        AV_STRING,
        AV_BOOL,
        AV_INT,
        REQ_RESOURCE_LOGS,
        RL_RESOURCE,
        RL_SCOPE_LOGS,
        SL_SCOPE,
        SL_LOG_RECORDS,
    ];
    let mut i = 0;
    while i < tags.len() {
        assert!(tags[i] < 16, "a field number past one key byte");
        i += 1;
    }
};

/// The OTLP severity number of a severity (SeverityNumber enum values).
fn severity_number(s: Severity) -> u64 {
    match s {
        Severity::Trace => 1,
        Severity::Debug => 5,
        Severity::Info => 9,
        Severity::Warn => 13,
        Severity::Error => 17,
    }
}

/// A field's key: one byte, every field number here being below 16 (a
/// const assertion above checks them; `encode_key` would loop for it).
#[inline]
fn put_key(tag: u32, wire_type: WireType, buf: &mut Vec<u8>) {
    debug_assert!(tag < 16, "field {tag} takes more than one key byte");
    buf.push(((tag << 3) | wire_type as u32) as u8);
}

/// A varint; the common one-byte case (lengths of keys, short strings,
/// small numbers) without a call.
#[inline]
fn put_varint(n: u64, buf: &mut Vec<u8>) {
    if n < 0x80 {
        buf.push(n as u8);
    } else {
        encode_varint(n, buf);
    }
}

#[inline]
fn len_delimited(tag: u32, len: usize, buf: &mut Vec<u8>) {
    put_key(tag, WireType::LengthDelimited, buf);
    put_varint(len as u64, buf);
}

fn put_str(tag: u32, s: &str, buf: &mut Vec<u8>) {
    len_delimited(tag, s.len(), buf);
    buf.put_slice(s.as_bytes());
}

/// Encoded length of an `AnyValue` holding `v`.
fn any_value_len(v: &Value) -> usize {
    match v {
        Value::Str(s) => 1 + encoded_len_varint(s.len() as u64) + s.len(),
        Value::Int(n) => 1 + encoded_len_varint(*n as u64),
        Value::Bool(_) => 2,
    }
}

fn put_any_value(v: &Value, buf: &mut Vec<u8>) {
    match v {
        Value::Str(s) => put_str(AV_STRING, s, buf),
        Value::Int(n) => {
            put_key(AV_INT, WireType::Varint, buf);
            put_varint(*n as u64, buf);
        }
        Value::Bool(b) => {
            put_key(AV_BOOL, WireType::Varint, buf);
            buf.push(u8::from(*b));
        }
    }
}

fn put_attribute(k: &str, v: &Value, buf: &mut Vec<u8>) {
    let value_len = any_value_len(v);
    let kv_len = 1 + encoded_len_varint(k.len() as u64) + k.len() // key
        + 1 + encoded_len_varint(value_len as u64) + value_len; // value
    len_delimited(LR_ATTRIBUTES, kv_len, buf);
    put_str(KV_KEY, k, buf);
    len_delimited(KV_VALUE, value_len, buf);
    put_any_value(v, buf);
}

/// Encodes records as OTLP `LogRecord` bytes, one after another, into
/// buffers it reuses.
#[derive(Default)]
pub struct RecordEncoder {
    body: String,
    buf: Vec<u8>,
}

impl RecordEncoder {
    /// One record as the bytes of an OTLP `LogRecord`. Timestamp is the
    /// event time (never 0: `observed` stands in for an unknown one).
    pub fn log_record(&mut self, r: &Record, observed: u64) -> &[u8] {
        let event_time = match r.unix_nanos() {
            0 => observed,
            t => t,
        };
        let buf = &mut self.buf;
        buf.clear();
        put_key(LR_TIME, WireType::SixtyFourBit, buf);
        buf.put_u64_le(event_time);
        let sev = r.severity();
        put_key(LR_SEVERITY_NUMBER, WireType::Varint, buf);
        put_varint(severity_number(sev), buf);
        put_str(LR_SEVERITY_TEXT, sev.name(), buf);
        self.body.clear();
        r.write_body(&mut self.body);
        let body_len = 1 + encoded_len_varint(self.body.len() as u64) + self.body.len();
        len_delimited(LR_BODY, body_len, buf);
        put_str(AV_STRING, &self.body, buf);
        put_attribute(key::SOURCE, &Value::from(r.source.name()), buf);
        for (k, v) in r.fields() {
            put_attribute(k, v, buf);
        }
        put_key(LR_OBSERVED_TIME, WireType::SixtyFourBit, buf);
        buf.put_u64_le(observed);
        &self.buf
    }
}

/// The parts of every request that do not change: resource and scope,
/// encoded once.
pub struct RequestFrame {
    resource: Vec<u8>,
    scope: Vec<u8>,
    buf: Vec<u8>,
}

impl RequestFrame {
    pub fn new(resource: &Resource, scope: &InstrumentationScope) -> Self {
        RequestFrame {
            resource: resource.encode_to_vec(),
            scope: scope.encode_to_vec(),
            buf: Vec::new(),
        }
    }

    /// The bytes of an `ExportLogsServiceRequest` carrying `records`
    /// (each the bytes of one `LogRecord`).
    pub fn request<R: AsRef<[u8]>>(&mut self, records: &[R]) -> Bytes {
        let field = |len: usize| 1 + encoded_len_varint(len as u64) + len;
        let records_len: usize = records.iter().map(|r| field(r.as_ref().len())).sum();
        let scope_logs_len = field(self.scope.len()) + records_len;
        let resource_logs_len = field(self.resource.len()) + field(scope_logs_len);
        let buf = &mut self.buf;
        buf.clear();
        buf.reserve(field(resource_logs_len));
        len_delimited(REQ_RESOURCE_LOGS, resource_logs_len, buf);
        len_delimited(RL_RESOURCE, self.resource.len(), buf);
        buf.put_slice(&self.resource);
        len_delimited(RL_SCOPE_LOGS, scope_logs_len, buf);
        len_delimited(SL_SCOPE, self.scope.len(), buf);
        buf.put_slice(&self.scope);
        for r in records {
            let r = r.as_ref();
            len_delimited(SL_LOG_RECORDS, r.len(), buf);
            buf.put_slice(r);
        }
        Bytes::copy_from_slice(buf)
    }
}

/// Sends pre-encoded request bytes; decodes the response with prost.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct ResponseDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportLogsServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = ExportLogsServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        ExportLogsServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable export response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use crate::record::Source;

    /// The same record built with the generated structs: the reference.
    fn reference(r: &Record, observed: u64) -> LogRecord {
        let kv = |k: &str, v: &Value| KeyValue {
            key: k.to_owned(),
            value: Some(AnyValue {
                value: Some(match v {
                    Value::Str(s) => any_value::Value::StringValue(s.to_string()),
                    Value::Int(n) => any_value::Value::IntValue(*n),
                    Value::Bool(b) => any_value::Value::BoolValue(*b),
                }),
            }),
            ..Default::default()
        };
        let mut attributes = vec![kv(key::SOURCE, &Value::from(r.source.name()))];
        attributes.extend(r.fields().map(|(k, v)| kv(k, v)));
        LogRecord {
            time_unix_nano: match r.unix_nanos() {
                0 => observed,
                t => t,
            },
            observed_time_unix_nano: observed,
            severity_number: severity_number(r.severity()) as i32,
            severity_text: r.severity().name().into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(r.body())),
            }),
            attributes,
            ..Default::default()
        }
    }

    fn sample(time: SystemTime) -> Record {
        let mut r = Record::new(time, Source::Egress);
        r.set(key::VERDICT, "allowed");
        r.set(key::L4_PROTO, "tcp");
        r.set(key::COMM, "curl\u{7}é");
        r.set(key::DST_IP, "2001:db8::1");
        r.set(key::DST_PORT, 443u16);
        r.set(key::PID, 0u32);
        r.set(key::DST_HOST, "");
        r.set(key::BYTES_OUT, u64::MAX);
        r.set(key::ERRNO, -111i64);
        r.set(key::ENFORCED, false);
        r.set(key::DNS_ANSWERED, true);
        r.set(key::AGENT, "a".repeat(300));
        r
    }

    #[test]
    fn written_bytes_decode_to_the_reference_log_record() {
        let mut enc = RecordEncoder::default();
        let observed = 1_700_000_000_123_456_789;
        for time in [
            UNIX_EPOCH + Duration::from_nanos(1_600_000_000_000_000_001),
            UNIX_EPOCH,
        ] {
            let r = sample(time);
            let bytes = enc.log_record(&r, observed).to_vec();
            let got = LogRecord::decode(bytes.as_slice()).expect("decodes");
            assert_eq!(got, reference(&r, observed));
            // prost's own encoding of the reference has the same length.
            assert_eq!(bytes.len(), reference(&r, observed).encoded_len());
        }
        let body = Record::new(UNIX_EPOCH, Source::ControlPlane)
            .with_severity(Severity::Warn)
            .with_body("line\nbreak");
        let got = LogRecord::decode(enc.log_record(&body, observed)).unwrap();
        assert_eq!(got, reference(&body, observed));
    }

    #[test]
    fn a_framed_request_decodes_to_resource_scope_and_every_record() {
        let resource = Resource {
            attributes: vec![KeyValue {
                key: "host.name".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("h".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "clawker-egress".into(),
            version: "1".into(),
            ..Default::default()
        };
        let mut enc = RecordEncoder::default();
        let records: Vec<Record> = (0..3).map(|_| sample(UNIX_EPOCH)).collect();
        let encoded: Vec<Vec<u8>> = records
            .iter()
            .map(|r| enc.log_record(r, 7).to_vec())
            .collect();
        let mut frame = RequestFrame::new(&resource, &scope);
        for n in [0, 3] {
            let bytes = frame.request(&encoded[..n]);
            let got = ExportLogsServiceRequest::decode(bytes).expect("decodes");
            let want = ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: Some(resource.clone()),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(scope.clone()),
                        log_records: records[..n].iter().map(|r| reference(r, 7)).collect(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            assert_eq!(got, want);
        }
    }
}
