//! Unit tests of the codec, whichever backend this build uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

/// A length claim as the backend writes one in front of a string, a byte
/// buffer or a sequence, with no bytes after it.
fn length_claim(len: u64) -> Vec<u8> {
    if cfg!(feature = "postcard") {
        // LEB128: seven bits a byte, the high bit set on all but the last.
        let mut out = Vec::new();
        let mut rest = len;
        loop {
            let byte = (rest & 0x7f) as u8;
            rest >>= 7;
            if rest == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    } else {
        // Bincode's varint: the tag 253, then a u64.
        let mut out = vec![253u8];
        out.extend_from_slice(&len.to_le_bytes());
        out
    }
}

#[test]
fn round_trips_and_rejects_trailing_bytes() {
    let mut out = encode(&("abc".to_string(), 7u64)).expect("encodes");
    let back: (String, u64) = decode(&out).expect("decodes");
    assert_eq!(back, ("abc".to_string(), 7));
    out.push(0);
    let err = decode::<(String, u64)>(&out).expect_err("trailing byte");
    assert_eq!(err, CodecError::TrailingBytes(1));
    assert!(err.to_string().contains("disagree on the type"), "{err}");
}

#[test]
fn a_huge_claimed_length_is_refused_without_allocating() {
    // 2^62 bytes claimed in a few: allocating it would abort the process.
    for len in [1u64 << 62, 1 << 40, u64::MAX] {
        let bytes = length_claim(len);
        assert!(bytes.len() <= 10, "{bytes:?}");
        let err = decode::<String>(&bytes).expect_err("a string");
        assert!(matches!(err, CodecError::Decode { .. }), "{err:?}");
        let err = decode::<serde_bytes::ByteBuf>(&bytes).expect_err("a byte buffer");
        assert!(matches!(err, CodecError::Decode { .. }), "{err:?}");
        let err = decode::<Vec<u64>>(&bytes).expect_err("a sequence");
        assert!(matches!(err, CodecError::Decode { .. }), "{err:?}");
    }
}

#[test]
fn values_that_claim_more_than_they_encode_still_decode() {
    // u128s encode as one byte each but claim 16.
    let values: Vec<u128> = vec![1; 10_000];
    let out = encode(&values).expect("encodes");
    assert_eq!(decode::<Vec<u128>>(&out).expect("decodes"), values);
    let text = "x".repeat(1 << 20);
    let out = encode(&text).expect("encodes");
    assert_eq!(decode::<String>(&out).expect("decodes"), text);
}

#[test]
fn wrong_type_is_an_error_not_a_panic() {
    let out = encode(&u8::MAX).expect("encodes");
    assert!(decode::<String>(&out).is_err());
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
enum Shape {
    Dot,
    Circle(f64),
    Rect { w: u32, h: u32 },
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Everything {
    name: String,
    tags: Vec<String>,
    maybe: Option<Box<Everything>>,
    shapes: Vec<Shape>,
    pairs: BTreeMap<u8, (i64, char)>,
    #[serde(with = "serde_bytes")]
    blob: Vec<u8>,
    unit: (),
}

fn everything() -> Everything {
    let inner = Everything {
        name: "inner".into(),
        tags: vec![],
        maybe: None,
        shapes: vec![Shape::Dot],
        pairs: BTreeMap::new(),
        blob: vec![],
        unit: (),
    };
    Everything {
        name: "outer ü".into(),
        tags: vec!["a".into(), "b".into()],
        maybe: Some(Box::new(inner)),
        shapes: vec![Shape::Circle(1.5), Shape::Rect { w: 2, h: 3 }, Shape::Dot],
        pairs: BTreeMap::from([(1, (-5, 'x')), (200, (i64::MIN, '€'))]),
        blob: vec![0, 1, 2, 255],
        unit: (),
    }
}

#[test]
fn the_guard_writes_exactly_the_codecs_bytes() {
    let value = everything();
    let guarded = encode(&value).expect("encodes");
    let mut raw = Vec::new();
    backend::encode_into(&value, &mut raw).expect("the codec alone encodes");
    assert_eq!(guarded, raw);
    assert_eq!(decode::<Everything>(&guarded).expect("decodes"), value);
}

#[test]
fn appending_keeps_what_the_buffer_held() {
    let mut out = vec![9, 9];
    encode_into(&7u8, &mut out).expect("encodes");
    assert_eq!(&out[..2], &[9, 9]);
    assert_eq!(decode::<u8>(&out[2..]).expect("decodes"), 7);
}

// --- serde attributes that a positional codec cannot carry ---------------

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct WithSkip {
    id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    size: u64,
}

#[test]
fn skip_serializing_if_is_refused_naming_the_field_and_the_attribute() {
    let err = encode(&WithSkip {
        id: 1,
        note: None,
        size: 2,
    })
    .expect_err("a skipped field shifts the others");
    let CodecError::Unsupported { attribute, .. } = &err else {
        panic!("expected Unsupported, got {err:?}");
    };
    assert_eq!(*attribute, "#[serde(skip_serializing_if)]");
    let text = err.to_string();
    assert!(text.contains("skip_serializing_if"), "{text}");
    assert!(text.contains("field `note` of `WithSkip`"), "{text}");
    assert!(text.contains(NAME), "{text}");
    // Not skipped, the same type travels fine.
    let present = WithSkip {
        id: 1,
        note: Some("n".into()),
        size: 2,
    };
    let bytes = encode(&present).expect("encodes");
    assert_eq!(decode::<WithSkip>(&bytes).expect("decodes"), present);
}

/// What the guard prevents: without it, the skipped field's place is taken
/// by the next one, and the value decodes, wrong, without any error.
#[test]
fn without_the_guard_a_skipped_field_decodes_into_the_wrong_fields() {
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Job {
        #[serde(skip_serializing_if = "Option::is_none")]
        retries: Option<u8>,
        priority: u8,
        weights: Vec<u8>,
    }
    let sent = Job {
        retries: None,
        priority: 0,
        weights: vec![1, 1],
    };
    let mut raw = Vec::new();
    backend::encode_into(&sent, &mut raw).expect("the codec alone takes it");
    // `priority` (0) is read as `retries: None`, the length of `weights` (2)
    // as `priority`, and its first item as its length: every byte used, no
    // error, and the wrong value.
    let received: Job = decode(&raw).expect("decodes, silently wrong");
    assert_eq!(
        received,
        Job {
            retries: None,
            priority: 2,
            weights: vec![1]
        }
    );
    // Through the codec it never gets that far.
    assert!(matches!(
        encode(&sent),
        Err(CodecError::Unsupported {
            attribute: "#[serde(skip_serializing_if)]",
            ..
        })
    ));
}

#[test]
fn skip_serializing_if_deep_inside_is_found_too() {
    #[derive(Serialize)]
    enum Op {
        Put {
            key: String,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            extra: Vec<u8>,
        },
    }
    let err = encode(&vec![Some(Op::Put {
        key: "k".into(),
        extra: vec![],
    })])
    .expect_err("refused");
    assert!(err.to_string().contains("field `extra` of `Op`"), "{err}");
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Inner {
    a: u32,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct WithFlatten {
    id: u32,
    #[serde(flatten)]
    inner: Inner,
}

#[test]
fn flatten_is_refused_naming_the_attribute() {
    let err = encode(&WithFlatten {
        id: 1,
        inner: Inner { a: 2 },
    })
    .expect_err("a map of unknown length");
    assert!(
        matches!(
            err,
            CodecError::Unsupported {
                attribute: "#[serde(flatten)]",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("#[serde(flatten)]"), "{err}");
    // Inside a field of another struct, the message says where.
    #[derive(Serialize)]
    struct Outer {
        job: WithFlatten,
    }
    let err = encode(&Outer {
        job: WithFlatten {
            id: 1,
            inner: Inner { a: 2 },
        },
    })
    .expect_err("refused");
    assert!(err.to_string().contains("field `job` of `Outer`"), "{err}");
}

#[test]
fn flatten_bytes_from_elsewhere_do_not_decode_and_name_the_attribute() {
    // The bytes of the same fields without flatten, read by the flattened
    // type: it reads a map of names, which the codec cannot.
    #[derive(Serialize)]
    struct Plain {
        id: u32,
        a: u32,
    }
    let bytes = encode(&Plain { id: 1, a: 2 }).expect("encodes");
    let err = decode::<WithFlatten>(&bytes).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("#[serde(flatten)]") || text.contains("#[serde(untagged)]"),
        "{text}"
    );
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(untagged)]
enum Untagged {
    Number(u64),
    Text(String),
}

#[test]
fn untagged_encodes_but_does_not_decode_and_the_error_names_the_attribute() {
    let bytes = encode(&Untagged::Text("x".into())).expect("untagged encodes");
    let err = decode::<Untagged>(&bytes).expect_err("needs deserialize_any");
    assert!(
        matches!(
            err,
            CodecError::Unsupported {
                attribute: "#[serde(untagged)]",
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("#[serde(untagged)]"), "{text}");
    assert!(text.contains("externally tagged"), "{text}");
}

#[test]
fn internally_tagged_enums_name_the_attributes_too() {
    #[derive(Serialize, Deserialize, Debug)]
    #[serde(tag = "kind")]
    enum Tagged {
        A { x: u32 },
    }
    let bytes = encode(&Tagged::A { x: 1 }).expect("encodes");
    let err = decode::<Tagged>(&bytes).expect_err("needs deserialize_any");
    assert!(err.to_string().contains("tag = "), "{err}");
}

#[test]
fn a_serialize_error_keeps_its_own_message() {
    struct Refuses;
    impl Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("the printer is on fire"))
        }
    }
    let err = encode(&vec![Refuses]).expect_err("refused");
    assert!(matches!(err, CodecError::Encode { .. }), "{err:?}");
    assert!(err.to_string().contains("the printer is on fire"), "{err}");
}

#[test]
fn a_sequence_of_unknown_length_says_what_to_do() {
    struct Evens(Vec<u32>);
    impl Serialize for Evens {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            // A filter's size hint is not exact: serde passes no length.
            s.collect_seq(self.0.iter().filter(|n| *n % 2 == 0))
        }
    }
    let err = encode(&Evens(vec![1, 2, 4])).expect_err("refused");
    assert!(matches!(err, CodecError::Encode { .. }), "{err:?}");
    assert!(
        err.to_string().contains("collect the items into a Vec"),
        "{err}"
    );
}

#[test]
fn messages_name_the_codec_and_say_what_to_do() {
    let err = decode::<String>(&[0x02, 0xc3, 0x28]).expect_err("not UTF-8");
    let text = err.to_string();
    assert!(text.contains(NAME), "{text}");
    assert!(text.contains("UTF-8"), "{text}");
    assert!(text.contains("same worker-facade features"), "{text}");
}

#[test]
fn a_deserialize_error_keeps_its_own_message_at_any_depth() {
    #[derive(Debug, PartialEq)]
    struct Even(u32);
    impl<'de> Deserialize<'de> for Even {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            match u32::deserialize(d)? {
                n if n % 2 == 0 => Ok(Even(n)),
                n => Err(serde::de::Error::custom(format!("{n} is odd"))),
            }
        }
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)] // only ever refused
    enum Holder {
        Many { items: Vec<Option<(String, Even)>> },
    }
    let top = encode(&3u32).expect("encodes");
    let err = decode::<Even>(&top).expect_err("odd");
    assert!(err.to_string().contains("3 is odd"), "{err}");

    #[derive(Serialize)]
    enum Sent {
        Many { items: Vec<Option<(String, u32)>> },
    }
    let deep = encode(&Sent::Many {
        items: vec![Some(("a".into(), 2)), None, Some(("b".into(), 7))],
    })
    .expect("encodes");
    let err = decode::<Holder>(&deep).expect_err("odd, deep inside");
    assert!(err.to_string().contains("7 is odd"), "{err}");
    // serde's own refusals keep theirs too.
    let err = decode::<Shape>(&encode(&9u32).expect("encodes")).expect_err("no variant 9");
    assert!(err.to_string().contains("expected variant index"), "{err}");
}

#[test]
fn a_failing_deserialize_runs_once() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    #[derive(Debug)]
    struct Counted;
    impl<'de> Deserialize<'de> for Counted {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            RUNS.fetch_add(1, SeqCst);
            let _ = u8::deserialize(d)?;
            Err(serde::de::Error::custom("never"))
        }
    }
    let err = decode::<Counted>(&encode(&1u8).expect("encodes")).expect_err("refused");
    assert!(err.to_string().contains("never"), "{err}");
    // A Deserialize may have side effects: finding its message must not
    // run it again.
    assert_eq!(RUNS.load(SeqCst), 1);
}

/// Without the limit, a value with no length in its shape decodes to the
/// same value, and wrong bytes are refused the same way, as with it.
#[test]
fn a_decode_without_the_limit_agrees_with_the_limited_one() {
    type Fixed = (u64, [u8; 16], Option<(char, i32)>);
    let values: [Fixed; 3] = [
        (0, [0; 16], None),
        (u64::MAX, [7; 16], Some(('é', -1))),
        (300, [255; 16], Some(('x', i32::MIN))),
    ];
    for value in values {
        let bytes = encode(&value).expect("encodes");
        let limited: Fixed = decode_with(&bytes, Limit::Input).expect("decodes");
        let unlimited: Fixed = decode_with(&bytes, Limit::Off).expect("decodes");
        assert_eq!(limited, value);
        assert_eq!(unlimited, value);
        for cut in 0..bytes.len() {
            let short = &bytes[..cut];
            assert!(
                decode_with::<Fixed>(short, Limit::Off).is_err(),
                "{cut} bytes of {value:?} are not a value"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode_with::<Fixed>(&long, Limit::Off),
            Err(CodecError::TrailingBytes(1))
        ));
    }
}
