//! A few bytes that claim a huge length are refused by the codec without
//! allocating what they claim, whichever codec this build uses (bincode 2,
//! or postcard 1 with the `postcard` feature).
//!
//! This file is its own process, so it can count allocations: a global
//! allocator notes the largest single allocation each thread makes, and
//! every decode here must stay under a bound that has nothing to do with
//! the length claimed (serde itself preallocates at most 1 MiB for a
//! sequence whose length it was told). The same claims reach a real parent
//! from a real worker in `tests/hostile.rs` and `tests/decoder_props.rs`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;

use common::hand_wire::length_claim;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use worker_facade::{CodecError, codec};

/// Passes every call to the system allocator, noting the largest size.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // A const-initialised Cell with no destructor: no allocation here, and
    // nothing to do during a thread's teardown.
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every method hands its arguments to `System` unchanged, which
// upholds GlobalAlloc's contract; `note` neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's block, layout and size, as realloc requires.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's block and layout, as dealloc requires.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What serde itself may preallocate for a sequence or map whose length it
/// was told (`size_hint::cautious`: 1 MiB of elements), with room for a hash
/// table's spare buckets (up to 8/7, rounded up to a power of two: just
/// under 2.3 x) and control bytes. It is the same for any claimed length.
const SERDE_CAP: usize = 3 << 20;

/// Decodes `bytes` as a `T` and returns the result and the largest single
/// allocation made meanwhile.
fn decode_counting<T: DeserializeOwned>(bytes: &[u8]) -> (Result<T, CodecError>, usize) {
    LARGEST.with(|l| l.set(0));
    let result = codec::decode::<T>(bytes);
    (result, LARGEST.with(Cell::get))
}

/// `bytes` must not decode as a `T`, and must not make the codec allocate
/// more than serde's cap.
fn assert_refused_small<T: DeserializeOwned + Debug>(what: &str, bytes: &[u8]) {
    let (result, largest) = decode_counting::<T>(bytes);
    assert!(
        result.is_err(),
        "{what}: {} bytes decoded as {result:?}",
        bytes.len()
    );
    assert!(
        largest <= SERDE_CAP,
        "{what}: {} bytes made the codec allocate {largest} bytes at once",
        bytes.len()
    );
}

fn assert_every_type_refuses(bytes: &[u8]) {
    assert_refused_small::<String>("String", bytes);
    assert_refused_small::<serde_bytes::ByteBuf>("ByteBuf", bytes);
    assert_refused_small::<Vec<u8>>("Vec<u8>", bytes);
    assert_refused_small::<Vec<u64>>("Vec<u64>", bytes);
    assert_refused_small::<Vec<String>>("Vec<String>", bytes);
    assert_refused_small::<Vec<Vec<u128>>>("Vec<Vec<u128>>", bytes);
    assert_refused_small::<BTreeMap<u64, u64>>("BTreeMap", bytes);
    assert_refused_small::<HashMap<String, String>>("HashMap", bytes);
}

#[test]
fn the_counting_allocator_sees_what_a_decode_allocates() {
    // Without this, a bound that holds trivially would prove nothing.
    let text = "x".repeat(3 << 20);
    let bytes = codec::encode(&text).expect("encodes");
    let (back, largest) = decode_counting::<String>(&bytes);
    assert_eq!(back.expect("decodes"), text);
    assert!(largest >= 3 << 20, "saw only {largest} bytes");
}

#[test]
fn a_tiny_input_claiming_a_huge_length_is_refused_without_allocating_it() {
    for len in [
        (1u64 << 24) + 1,
        1 << 32,
        1 << 40,
        1 << 62,
        isize::MAX as u64,
        u64::MAX,
    ] {
        let bytes = length_claim(len);
        assert!(
            bytes.len() <= 10,
            "a claim of {len} is {} bytes",
            bytes.len()
        );
        assert_every_type_refuses(&bytes);
        // A tuple whose second item makes the claim, as a struct would.
        let mut tuple = codec::encode(&7u32).expect("encodes");
        tuple.extend_from_slice(&bytes);
        assert_refused_small::<(u32, String)>("(u32, String)", &tuple);
        assert_refused_small::<(u32, Vec<u64>)>("(u32, Vec<u64>)", &tuple);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any length claim followed by up to 32 bytes: decoded or refused, never
    /// an allocation beyond serde's cap plus the input's own size.
    #[test]
    fn any_length_claim_with_a_short_tail_stays_within_the_input(
        len in any::<u64>(),
        tail in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let bytes = [length_claim(len), tail].concat();
        for largest in [
            decode_counting::<String>(&bytes).1,
            decode_counting::<serde_bytes::ByteBuf>(&bytes).1,
            decode_counting::<Vec<u64>>(&bytes).1,
            decode_counting::<Vec<String>>(&bytes).1,
            decode_counting::<HashMap<u64, String>>(&bytes).1,
        ] {
            prop_assert!(
                largest <= SERDE_CAP + bytes.len(),
                "{} bytes made the codec allocate {} bytes at once", bytes.len(), largest
            );
        }
    }
}
