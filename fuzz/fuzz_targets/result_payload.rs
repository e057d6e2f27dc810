//! Arbitrary bytes as the payload of a worker's OK frame, decoded as the
//! parent does (`codec::decode`), for a `String` output and a structured one.
//! Must return an error, never panic or abort on an allocation the payload
//! merely claims.
#![no_main]
#![allow(dead_code)]

#[path = "../../src/codec/mod.rs"]
mod codec;

use libfuzzer_sys::fuzz_target;

#[derive(Debug, serde::Deserialize)]
struct Report {
    name: String,
    values: Vec<u64>,
    nested: Option<Vec<(String, Vec<u8>)>>,
}

fuzz_target!(|data: &[u8]| {
    let _ = codec::decode::<String>(data);
    let _ = codec::decode::<Report>(data);
});
