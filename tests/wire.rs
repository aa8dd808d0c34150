//! The wire contract of `quota.v1`, read from the descriptor set the server
//! reflects: the fields of every message the product contract spells out
//! (name, number, type, singular) and the methods of both services. A field
//! renumbered or retyped still compiles, and breaks every client built from
//! the contract.
#![allow(clippy::expect_used)]

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};

const STRING: Type = Type::String;
const INT64: Type = Type::Int64;
const BOOL: Type = Type::Bool;

/// A field as the contract writes it, `type name = number;`.
type Field = (Type, &'static str, i32);

/// The messages the contract writes out whole, `Name { type name = number; … }`,
/// each field as it writes it: every one singular (neither `repeated` nor
/// `optional`).
const WHOLE_MESSAGES: &[(&str, &[Field])] = &[
    (
        "ConsumeRequest",
        &[
            (STRING, "token", 1),
            (INT64, "quota", 2),
            (STRING, "request_id", 3),
        ],
    ),
    (
        "ReserveRequest",
        &[
            (STRING, "token", 1),
            (INT64, "quota", 2),
            (STRING, "request_id", 3),
            (INT64, "ttl_seconds", 4),
        ],
    ),
    (
        "ReserveResponse",
        &[
            (INT64, "remaining", 1),
            (INT64, "used", 2),
            (INT64, "held", 3),
            (BOOL, "repeat", 4),
            (INT64, "expires_at", 5),
            (BOOL, "unlimited", 6),
        ],
    ),
    (
        "SettleRequest",
        &[
            (STRING, "token", 1),
            (STRING, "request_id", 2),
            (INT64, "quota", 3),
        ],
    ),
    (
        "SettleResponse",
        &[
            (INT64, "remaining", 1),
            (INT64, "used", 2),
            (INT64, "held", 3),
            (BOOL, "repeat", 4),
            (INT64, "overdraft", 5),
        ],
    ),
    (
        "ReleaseRequest",
        &[(STRING, "token", 1), (STRING, "request_id", 2)],
    ),
    (
        "ReleaseResponse",
        &[
            (INT64, "remaining", 1),
            (INT64, "used", 2),
            (INT64, "held", 3),
        ],
    ),
];

/// Fields the contract names in messages that may have more: `Subscription`
/// has the six fields of the REST answer under the same names, int64 for
/// numbers (their numbers are not given), and gains `int64 held_units = 11`;
/// `Token` gains `int64 held = 11`. All singular.
const NAMED_FIELDS: &[(&str, Type, &str, Option<i32>)] = &[
    ("Subscription", STRING, "object", None),
    ("Subscription", BOOL, "has_payment_method", None),
    ("Subscription", INT64, "soft_limit_usd", None),
    ("Subscription", INT64, "hard_limit_usd", None),
    ("Subscription", INT64, "system_hard_limit_usd", None),
    ("Subscription", INT64, "access_until", None),
    ("Subscription", INT64, "held_units", Some(11)),
    ("Token", INT64, "held", Some(11)),
];

/// `service QuotaService`: each method with its request and response, unary.
const QUOTA_SERVICE: &[(&str, &str, &str)] = &[
    ("GetSubscription", "GetSubscriptionRequest", "Subscription"),
    ("GetUsage", "GetUsageRequest", "Usage"),
    ("Consume", "ConsumeRequest", "ConsumeResponse"),
    ("Reserve", "ReserveRequest", "ReserveResponse"),
    ("Settle", "SettleRequest", "SettleResponse"),
    ("Release", "ReleaseRequest", "ReleaseResponse"),
];

/// `service TokenAdmin`: the contract names its methods, not their messages.
const TOKEN_ADMIN: &[&str] = &[
    "CreateToken",
    "GetToken",
    "ListTokens",
    "GrantQuota",
    "UpdateToken",
    "DeleteToken",
];

fn api() -> FileDescriptorSet {
    FileDescriptorSet::decode(quota::pb::FILE_DESCRIPTOR_SET).expect("descriptor set decodes")
}

fn message<'a>(set: &'a FileDescriptorSet, name: &str) -> &'a DescriptorProto {
    set.file
        .iter()
        .filter(|file| file.package() == "quota.v1")
        .flat_map(|file| &file.message_type)
        .find(|message| message.name() == name)
        .unwrap_or_else(|| panic!("no message quota.v1.{name}"))
}

fn field<'a>(message: &'a DescriptorProto, name: &str) -> &'a FieldDescriptorProto {
    message
        .field
        .iter()
        .find(|field| field.name() == name)
        .unwrap_or_else(|| panic!("no field {name} in {}", message.name()))
}

/// Declared as `type name = number;`: not `repeated`, not `optional`, in no `oneof`.
fn singular(field: &FieldDescriptorProto) -> bool {
    field.label() == Label::Optional && !field.proto3_optional() && field.oneof_index.is_none()
}

#[test]
fn messages_the_contract_writes_out_have_exactly_its_fields() {
    let set = api();
    for (name, fields) in WHOLE_MESSAGES {
        let message = message(&set, name);
        let mut actual: Vec<_> = message
            .field
            .iter()
            .map(|f| (f.r#type(), f.name(), f.number(), singular(f)))
            .collect();
        actual.sort_by_key(|&(_, _, number, _)| number);
        let expected: Vec<_> = fields
            .iter()
            .map(|&(kind, field, number)| (kind, field, number, true))
            .collect();
        assert_eq!(actual, expected, "quota.v1.{name}");
    }
}

#[test]
fn fields_the_contract_names_have_its_types_and_numbers() {
    let set = api();
    for &(name, kind, field_name, number) in NAMED_FIELDS {
        let field = field(message(&set, name), field_name);
        let at = format!("quota.v1.{name}.{field_name}");
        assert_eq!(field.r#type(), kind, "{at}");
        assert!(singular(field), "{at} is singular");
        if let Some(number) = number {
            assert_eq!(field.number(), number, "{at}");
        }
    }
}

#[test]
fn services_have_the_contracts_methods() {
    let set = api();
    let service = |name: &str| {
        set.file
            .iter()
            .filter(|file| file.package() == "quota.v1")
            .flat_map(|file| &file.service)
            .find(|service| service.name() == name)
            .unwrap_or_else(|| panic!("no service quota.v1.{name}"))
    };

    let mut methods: Vec<_> = service("QuotaService")
        .method
        .iter()
        .map(|m| {
            let unary = !m.client_streaming() && !m.server_streaming();
            let types = (m.input_type().to_owned(), m.output_type().to_owned());
            (m.name(), types, unary)
        })
        .collect();
    methods.sort();
    let qualified = |message| format!(".quota.v1.{message}");
    let mut expected: Vec<_> = QUOTA_SERVICE
        .iter()
        .map(|&(name, input, output)| (name, (qualified(input), qualified(output)), true))
        .collect();
    expected.sort();
    assert_eq!(methods, expected, "quota.v1.QuotaService");

    let mut methods: Vec<_> = service("TokenAdmin")
        .method
        .iter()
        .map(|m| m.name())
        .collect();
    methods.sort_unstable();
    let mut expected = TOKEN_ADMIN.to_vec();
    expected.sort_unstable();
    assert_eq!(methods, expected, "quota.v1.TokenAdmin");
}
