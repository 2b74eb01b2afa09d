//! Wire formats. By default Avro single-object encoding (`C3 01`, the 8-byte little-endian
//! CRC-64-AVRO fingerprint of the writer schema, then the Avro binary body): it needs no
//! registry, because the fingerprint names the writer schema and every reader ships all of them
//! in [`RELEASED`]. With a Schema Registry, writers use the Confluent framing instead
//! (`00`, the 4-byte big-endian schema id, the body), which `rpk --use-schema-registry` and
//! Redpanda Console decode. Readers accept both; for Confluent ids they ask a [`SchemaLookup`].

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::events::{Event, EventType, Payload, Producer};
use crate::SchemaError;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 4;

/// Value of the `content-type` record header for single-object encoded records.
pub const CONTENT_TYPE: &str = "application/vnd.apache.avro+binary; encoding=single-object";
/// Value of the `content-type` record header for Confluent-framed records.
pub const CONTENT_TYPE_CONFLUENT: &str = "application/vnd.apache.avro+binary; encoding=confluent";

const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

/// Every released version of the event schema, oldest first: the envelope's file, then one file
/// per event record, in payload-union order. Never remove or edit one: records written with it
/// stay in the log forever.
pub const RELEASED: &[(i32, &[&str])] = &[
    (
        1,
        &[
            include_str!("../avro/v1/imgpipe.events.Event.avsc"),
            include_str!("../avro/v1/imgpipe.events.ImageUploaded.avsc"),
            include_str!("../avro/v1/imgpipe.events.ImageProcessed.avsc"),
            include_str!("../avro/v1/imgpipe.events.ImageFailed.avsc"),
            include_str!("../avro/v1/imgpipe.events.ImageDeleted.avsc"),
            include_str!("../avro/v1/imgpipe.events.ObjectsDeleted.avsc"),
            include_str!("../avro/v1/imgpipe.events.OrphanRemoved.avsc"),
            include_str!("../avro/v1/imgpipe.events.ReprocessRequested.avsc"),
        ],
    ),
    (
        2,
        &[
            include_str!("../avro/v2/imgpipe.events.Event.avsc"),
            include_str!("../avro/v2/imgpipe.events.ImageUploaded.avsc"),
            include_str!("../avro/v2/imgpipe.events.ImageProcessed.avsc"),
            include_str!("../avro/v2/imgpipe.events.ImageFailed.avsc"),
            include_str!("../avro/v2/imgpipe.events.ImageDeleted.avsc"),
            include_str!("../avro/v2/imgpipe.events.ObjectsDeleted.avsc"),
            include_str!("../avro/v2/imgpipe.events.OrphanRemoved.avsc"),
            include_str!("../avro/v2/imgpipe.events.ReprocessRequested.avsc"),
        ],
    ),
    (
        3,
        &[
            include_str!("../avro/v3/imgpipe.events.Event.avsc"),
            include_str!("../avro/v3/imgpipe.events.ImageUploaded.avsc"),
            include_str!("../avro/v3/imgpipe.events.ImageProcessed.avsc"),
            include_str!("../avro/v3/imgpipe.events.ImageFailed.avsc"),
            include_str!("../avro/v3/imgpipe.events.ImageDeleted.avsc"),
            include_str!("../avro/v3/imgpipe.events.ObjectsDeleted.avsc"),
            include_str!("../avro/v3/imgpipe.events.OrphanRemoved.avsc"),
            include_str!("../avro/v3/imgpipe.events.ReprocessRequested.avsc"),
        ],
    ),
    (
        4,
        &[
            include_str!("../avro/v4/imgpipe.events.Event.avsc"),
            include_str!("../avro/v4/imgpipe.events.ImageUploaded.avsc"),
            include_str!("../avro/v4/imgpipe.events.ImageProcessed.avsc"),
            include_str!("../avro/v4/imgpipe.events.ImageFailed.avsc"),
            include_str!("../avro/v4/imgpipe.events.ImageDeleted.avsc"),
            include_str!("../avro/v4/imgpipe.events.ObjectsDeleted.avsc"),
            include_str!("../avro/v4/imgpipe.events.OrphanRemoved.avsc"),
            include_str!("../avro/v4/imgpipe.events.ReprocessRequested.avsc"),
            include_str!("../avro/v4/imgpipe.events.WebhookEndpointCreated.avsc"),
            include_str!("../avro/v4/imgpipe.events.WebhookEndpointUpdated.avsc"),
            include_str!("../avro/v4/imgpipe.events.WebhookSecretRotated.avsc"),
            include_str!("../avro/v4/imgpipe.events.WebhookEndpointDeleted.avsc"),
            include_str!("../avro/v4/imgpipe.events.WebhookEndpointDisabled.avsc"),
            include_str!("../avro/v4/imgpipe.events.WebhookDeliveryAttempted.avsc"),
            include_str!("../avro/v4/imgpipe.events.WebhookRedeliveryRequested.avsc"),
        ],
    ),
];

/// The released versions as self-contained schemas (JSON), oldest first.
pub fn writer_schemas() -> Vec<(i32, String)> {
    RELEASED
        .iter()
        .map(|(version, files)| {
            // Compiled in and covered by tests: a failure here is a build defect.
            #[allow(clippy::expect_used)]
            let schema = compose(files[0], &files[1..]).expect("bundled .avsc files compose");
            (*version, schema)
        })
        .collect()
}

/// Puts each event record's definition into the envelope's payload union, where the envelope
/// names it, giving one self-contained schema (what is fingerprinted and registered).
pub fn compose(envelope: &str, events: &[&str]) -> Result<String, SchemaError> {
    let bad = |what: String| SchemaError::Malformed(format!("composing the schema: {what}"));
    let mut envelope: serde_json::Value =
        serde_json::from_str(envelope).map_err(|e| bad(e.to_string()))?;
    let mut records = HashMap::new();
    for text in events {
        let record: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let full_name = format!(
            "{}.{}",
            record["namespace"].as_str().unwrap_or_default(),
            record["name"].as_str().unwrap_or_default()
        );
        records.insert(full_name, record);
    }
    let union = envelope["fields"]
        .as_array_mut()
        .and_then(|fields| fields.iter_mut().find(|f| f["name"] == "payload"))
        .and_then(|payload| payload["type"].as_array_mut())
        .ok_or_else(|| bad("the envelope has no payload union".into()))?;
    for branch in union.iter_mut() {
        let name = branch
            .as_str()
            .ok_or_else(|| bad("payload branches must be names".into()))?;
        *branch = records
            .remove(name)
            .ok_or_else(|| bad(format!("no file defines {name}")))?;
    }
    if let Some(unused) = records.keys().next() {
        return Err(bad(format!(
            "{unused} is defined but not in the payload union"
        )));
    }
    Ok(envelope.to_string())
}

struct Schemas {
    current: Schema,
    current_fingerprint: [u8; 8],
    by_fingerprint: HashMap<[u8; 8], Schema>,
}

/// The most the Avro decoder may reserve for one collection, or one string or bytes value, of
/// a record. Far above what a real event holds (a record is at most the broker's message size,
/// 1 MiB by default), far below what hurts: a crafted block count is refused with an error
/// before any memory is reserved for it, instead of aborting the process.
pub const MAX_DECODE_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        // Every encode and decode passes here first, so the limit is set before the decoder's
        // first allocation would fix it at the library's default (512 MiB). The library keeps
        // the first value set, process-wide.
        apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION_BYTES);
        let mut by_fingerprint = HashMap::new();
        let mut current = None;
        for (version, text) in writer_schemas() {
            // The schemas are compiled in and covered by tests, so a parse failure is a build
            // defect, not a runtime condition.
            #[allow(clippy::expect_used)]
            let schema = Schema::parse_str(&text).expect("bundled Avro schema parses");
            let fingerprint = fingerprint(&schema);
            if version == SCHEMA_VERSION {
                current = Some((schema.clone(), fingerprint));
            }
            by_fingerprint.insert(fingerprint, schema);
        }
        #[allow(clippy::expect_used)]
        let (current, current_fingerprint) = current.expect("current schema version is bundled");
        Schemas {
            current,
            current_fingerprint,
            by_fingerprint,
        }
    })
}

/// CRC-64-AVRO (Rabin) fingerprint of the schema's parsing canonical form, little-endian.
pub fn fingerprint(schema: &Schema) -> [u8; 8] {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[..8]);
    out
}

/// The schema this build writes.
pub fn current_schema() -> &'static Schema {
    &schemas().current
}

const CONFLUENT_MAGIC: u8 = 0;
const CONFLUENT_HEADER_LEN: usize = 5;

/// Finds the writer schema of a Confluent-framed record by its registry id. The registry
/// client (with IO) lives outside this crate.
pub trait SchemaLookup {
    fn schema_by_id(&self, id: u32) -> Option<&Schema>;
}

/// How a record's value is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    SingleObject,
    Confluent { schema_id: u32 },
}

/// Tells the framing of a record from its first bytes.
pub fn framing(bytes: &[u8]) -> Result<Framing, SchemaError> {
    if bytes.len() >= 2 && bytes[..2] == SINGLE_OBJECT_MARKER {
        return Ok(Framing::SingleObject);
    }
    if bytes.first() == Some(&CONFLUENT_MAGIC) {
        if bytes.len() < CONFLUENT_HEADER_LEN {
            return Err(SchemaError::TooShort(bytes.len()));
        }
        let mut id = [0u8; 4];
        id.copy_from_slice(&bytes[1..CONFLUENT_HEADER_LEN]);
        return Ok(Framing::Confluent {
            schema_id: u32::from_be_bytes(id),
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(SchemaError::TooShort(bytes.len()));
    }
    Err(SchemaError::BadMagic)
}

/// Encodes an event with the current schema in the Confluent framing, under the id the
/// registry gave the current schema.
pub fn encode_confluent(event: &Event, schema_id: u32) -> Result<Vec<u8>, SchemaError> {
    let body = write_datum(&schemas().current, event_to_value(event)?)?;
    let mut out = Vec::with_capacity(CONFLUENT_HEADER_LEN + body.len());
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a record in either framing; Confluent ids are resolved through `lookup`.
pub fn decode_with(bytes: &[u8], lookup: &dyn SchemaLookup) -> Result<Event, SchemaError> {
    match framing(bytes)? {
        Framing::SingleObject => decode(bytes),
        Framing::Confluent { schema_id } => {
            let writer = lookup
                .schema_by_id(schema_id)
                .ok_or(SchemaError::UnknownSchemaId(schema_id))?;
            let is_current = fingerprint(writer) == schemas().current_fingerprint;
            decode_body(writer, is_current, &bytes[CONFLUENT_HEADER_LEN..])
        }
    }
}

/// Encodes an event with the current schema (single-object encoding).
pub fn encode(event: &Event) -> Result<Vec<u8>, SchemaError> {
    let schemas = schemas();
    let body = write_datum(&schemas.current, event_to_value(event)?)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&SINGLE_OBJECT_MARKER);
    out.extend_from_slice(&schemas.current_fingerprint);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a record written with any released schema version into the current model.
pub fn decode(bytes: &[u8]) -> Result<Event, SchemaError> {
    if bytes.len() < HEADER_LEN {
        return Err(SchemaError::TooShort(bytes.len()));
    }
    if bytes[..2] != SINGLE_OBJECT_MARKER {
        return Err(SchemaError::BadMagic);
    }
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&bytes[2..HEADER_LEN]);
    let schemas = schemas();
    let writer = schemas
        .by_fingerprint
        .get(&fingerprint)
        .ok_or_else(|| SchemaError::UnknownSchema(hex_string(&fingerprint)))?;
    decode_body(
        writer,
        fingerprint == schemas.current_fingerprint,
        &bytes[HEADER_LEN..],
    )
}

/// Decodes an Avro body written with `writer` into the current model.
///
/// A body the current schema wrote is read as written, without resolving it against the
/// current schema: resolution picks a union branch by the first record the value fits, not by
/// the branch index written, and two payload records whose fields overlap (a `WebhookSecretRotated`
/// fits `WebhookEndpointUpdated`, whose extra fields have defaults) would be confused. Older
/// writers only know the union's first branches, which come first in the current union too.
fn decode_body(writer: &Schema, is_current: bool, mut body: &[u8]) -> Result<Event, SchemaError> {
    let builder = GenericDatumReader::builder(writer);
    let reader = if is_current {
        builder.build()?
    } else {
        builder.reader_schema(&schemas().current).build()?
    };
    let value = reader.read_value(&mut body)?;
    if !body.is_empty() {
        return Err(SchemaError::TrailingBytes(body.len()));
    }
    value_to_event(value)
}

/// A value as an Avro body of `schema` (validated against it).
fn write_datum(schema: &Schema, value: Value) -> Result<Vec<u8>, SchemaError> {
    Ok(GenericDatumWriter::builder(schema)
        .build()?
        .write_value_to_vec(value)?)
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn micros(at: OffsetDateTime) -> i64 {
    // i64 microseconds cover ±292,000 years; the cast cannot truncate for real clocks.
    (at.unix_timestamp_nanos() / 1_000) as i64
}

fn event_to_value(event: &Event) -> Result<Value, SchemaError> {
    let event_type = event.event_type();
    let payload = event.payload.to_avro()?;
    let causation = match event.causation_id {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(id) => Value::Union(1, Box::new(Value::Uuid(id))),
    };
    Ok(Value::Record(vec![
        ("event_id".into(), Value::Uuid(event.event_id)),
        (
            "event_type".into(),
            Value::String(event_type.as_str().into()),
        ),
        ("schema_version".into(), Value::Int(SCHEMA_VERSION)),
        ("image_id".into(), Value::Uuid(event.image_id)),
        (
            "occurred_at".into(),
            Value::TimestampMicros(micros(event.occurred_at)),
        ),
        (
            "correlation_id".into(),
            Value::String(event.correlation_id.clone()),
        ),
        ("causation_id".into(), causation),
        (
            "producer".into(),
            Value::Record(vec![
                (
                    "service".into(),
                    Value::String(event.producer.service.clone()),
                ),
                (
                    "version".into(),
                    Value::String(event.producer.version.clone()),
                ),
            ]),
        ),
        (
            "payload".into(),
            Value::Union(event_type.union_index(), Box::new(payload)),
        ),
    ]))
}

fn malformed(what: impl Into<String>) -> SchemaError {
    SchemaError::Malformed(what.into())
}

/// Field access on a decoded record, with errors that say which field was wrong.
struct Fields(HashMap<String, Value>);

impl Fields {
    fn of(value: Value, what: &str) -> Result<Self, SchemaError> {
        match value {
            Value::Record(fields) => Ok(Self(fields.into_iter().collect())),
            other => Err(malformed(format!("{what} is not a record: {other:?}"))),
        }
    }

    fn take(&mut self, name: &str) -> Result<Value, SchemaError> {
        self.0
            .remove(name)
            .ok_or_else(|| malformed(format!("missing field {name}")))
    }

    fn uuid(&mut self, name: &str) -> Result<Uuid, SchemaError> {
        match self.take(name)? {
            Value::Uuid(id) => Ok(id),
            Value::String(s) => Uuid::parse_str(&s).map_err(|e| malformed(format!("{name}: {e}"))),
            other => Err(malformed(format!("{name} is not a uuid: {other:?}"))),
        }
    }

    fn string(&mut self, name: &str) -> Result<String, SchemaError> {
        match self.take(name)? {
            Value::String(s) => Ok(s),
            other => Err(malformed(format!("{name} is not a string: {other:?}"))),
        }
    }
}

fn value_to_event(value: Value) -> Result<Event, SchemaError> {
    let mut fields = Fields::of(value, "event")?;
    let event_id = fields.uuid("event_id")?;
    let image_id = fields.uuid("image_id")?;
    let occurred_at = match fields.take("occurred_at")? {
        Value::TimestampMicros(us) | Value::Long(us) => {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
                .map_err(|e| malformed(format!("occurred_at: {e}")))?
        }
        other => return Err(malformed(format!("occurred_at: {other:?}"))),
    };
    let correlation_id = fields.string("correlation_id")?;
    let causation_id = match fields.take("causation_id")? {
        Value::Union(_, inner) => match *inner {
            Value::Null => None,
            Value::Uuid(id) => Some(id),
            other => return Err(malformed(format!("causation_id: {other:?}"))),
        },
        other => return Err(malformed(format!("causation_id: {other:?}"))),
    };
    let producer: Producer = apache_avro::from_value(&fields.take("producer")?)?;
    let payload = match fields.take("payload")? {
        Value::Union(index, inner) => payload_from_union(index, *inner)?,
        other => return Err(malformed(format!("payload is not a union: {other:?}"))),
    };
    let declared = fields.string("event_type")?;
    if declared != payload.event_type().as_str() {
        return Err(malformed(format!(
            "event_type {declared} does not match payload {}",
            payload.event_type()
        )));
    }
    Ok(Event {
        event_id,
        image_id,
        occurred_at,
        correlation_id,
        causation_id,
        producer,
        payload,
    })
}

fn payload_from_union(index: u32, value: Value) -> Result<Payload, SchemaError> {
    let event_type = EventType::ALL
        .into_iter()
        .find(|t| t.union_index() == index)
        .ok_or_else(|| malformed(format!("unknown payload union branch {index}")))?;
    Ok(Payload::from_avro(event_type, &value)?)
}
