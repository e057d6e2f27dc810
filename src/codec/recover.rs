//! Postcard decoding that keeps the message of a `Deserialize` impl's own
//! error.
//!
//! Postcard's `de::Error::custom` keeps no text ("Serde Deserialization
//! Error"), so a type's own refusal ("this verdict is poison", serde's
//! "invalid value", "unknown variant", "missing field") would reach the user
//! as nothing. Every postcard decode therefore goes through this
//! deserializer, which wraps postcard's at every level (the deserializer,
//! its visitors, seeds and access objects) and gives the type an error type
//! of its own that keeps the message. Decoding twice to find the message
//! only on failure would run the type's `Deserialize` twice, and a
//! `Deserialize` may have side effects. The bytes read are postcard's,
//! untouched: the wrapper only forwards.

use std::cell::Cell;
use std::fmt::{self, Display};

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

/// Where the first message is kept while the codec unwinds its error.
type Slot = Cell<Option<String>>;

/// Why [`decode`] failed.
pub(super) enum Failed {
    /// Postcard's own error.
    Codec(postcard::Error),
    /// The first error the type's `Deserialize` (or serde for it) made.
    Custom(String),
}

/// Decodes a `T` from the start of `bytes`; returns it and the bytes
/// after it.
pub(super) fn decode<T: de::DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), Failed> {
    let slot = Slot::new(None);
    let mut inner = postcard::Deserializer::from_bytes(bytes);
    let result = T::deserialize(Wrap {
        inner: &mut inner,
        slot: &slot,
    });
    let first = slot.take();
    match (result, first) {
        (Ok(value), _) => Ok((value, inner.finalize().map_err(Failed::Codec)?)),
        // The first custom message is the cause; what came after is its echo.
        (Err(_), Some(message)) | (Err(Recovered::Custom(message)), None) => {
            Err(Failed::Custom(message))
        }
        (Err(Recovered::Codec(e)), None) => Err(Failed::Codec(e)),
    }
}

/// The error the wrapped type sees: the codec's, or a message of its own.
#[derive(Debug)]
enum Recovered<E> {
    Codec(E),
    Custom(String),
}

impl<E: Display> Display for Recovered<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recovered::Codec(e) => e.fmt(f),
            Recovered::Custom(m) => f.write_str(m),
        }
    }
}

impl<E: std::error::Error> std::error::Error for Recovered<E> {}

impl<E: de::Error> de::Error for Recovered<E> {
    fn custom<M: Display>(msg: M) -> Self {
        Recovered::Custom(msg.to_string())
    }
}

/// Back to the codec's error at a boundary, keeping a custom message.
fn back<E: de::Error>(slot: &Slot, e: Recovered<E>) -> E {
    match e {
        Recovered::Codec(e) => e,
        Recovered::Custom(message) => {
            let first = slot.take();
            let text = message.clone();
            slot.set(Some(first.unwrap_or(message)));
            E::custom(text)
        }
    }
}

struct Wrap<'s, D> {
    inner: D,
    slot: &'s Slot,
}

macro_rules! forward_deserialize {
    ($($method:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                let slot = self.slot;
                self.inner
                    .$method(WrapVisitor { inner: visitor, slot })
                    .map_err(Recovered::Codec)
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Wrap<'_, D> {
    type Error = Recovered<D::Error>;

    forward_deserialize! {
        deserialize_any, deserialize_bool, deserialize_i8, deserialize_i16, deserialize_i32,
        deserialize_i64, deserialize_i128, deserialize_u8, deserialize_u16, deserialize_u32,
        deserialize_u64, deserialize_u128, deserialize_f32, deserialize_f64, deserialize_char,
        deserialize_str, deserialize_string, deserialize_bytes, deserialize_byte_buf,
        deserialize_option, deserialize_unit, deserialize_seq, deserialize_map,
        deserialize_identifier, deserialize_ignored_any,
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let slot = self.slot;
        self.inner
            .deserialize_unit_struct(
                name,
                WrapVisitor {
                    inner: visitor,
                    slot,
                },
            )
            .map_err(Recovered::Codec)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let slot = self.slot;
        self.inner
            .deserialize_newtype_struct(
                name,
                WrapVisitor {
                    inner: visitor,
                    slot,
                },
            )
            .map_err(Recovered::Codec)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let slot = self.slot;
        self.inner
            .deserialize_tuple(
                len,
                WrapVisitor {
                    inner: visitor,
                    slot,
                },
            )
            .map_err(Recovered::Codec)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let slot = self.slot;
        self.inner
            .deserialize_tuple_struct(
                name,
                len,
                WrapVisitor {
                    inner: visitor,
                    slot,
                },
            )
            .map_err(Recovered::Codec)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let slot = self.slot;
        self.inner
            .deserialize_struct(
                name,
                fields,
                WrapVisitor {
                    inner: visitor,
                    slot,
                },
            )
            .map_err(Recovered::Codec)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let slot = self.slot;
        self.inner
            .deserialize_enum(
                name,
                variants,
                WrapVisitor {
                    inner: visitor,
                    slot,
                },
            )
            .map_err(Recovered::Codec)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

struct WrapVisitor<'s, V> {
    inner: V,
    slot: &'s Slot,
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                let slot = self.slot;
                self.inner.$method::<Recovered<E>>(v).map_err(|e| back(slot, e))
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for WrapVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool), visit_i8(i8), visit_i16(i16), visit_i32(i32), visit_i64(i64),
        visit_i128(i128), visit_u8(u8), visit_u16(u16), visit_u32(u32), visit_u64(u64),
        visit_u128(u128), visit_f32(f32), visit_f64(f64), visit_char(char), visit_str(&str),
        visit_borrowed_str(&'de str), visit_string(String), visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]), visit_byte_buf(Vec<u8>),
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        let slot = self.slot;
        self.inner
            .visit_none::<Recovered<E>>()
            .map_err(|e| back(slot, e))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        let slot = self.slot;
        self.inner
            .visit_unit::<Recovered<E>>()
            .map_err(|e| back(slot, e))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let slot = self.slot;
        self.inner
            .visit_some(Wrap { inner: d, slot })
            .map_err(|e| back(slot, e))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let slot = self.slot;
        self.inner
            .visit_newtype_struct(Wrap { inner: d, slot })
            .map_err(|e| back(slot, e))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let slot = self.slot;
        self.inner
            .visit_seq(WrapAccess { inner: seq, slot })
            .map_err(|e| back(slot, e))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let slot = self.slot;
        self.inner
            .visit_map(WrapAccess { inner: map, slot })
            .map_err(|e| back(slot, e))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let slot = self.slot;
        self.inner
            .visit_enum(WrapAccess { inner: data, slot })
            .map_err(|e| back(slot, e))
    }
}

/// A seed whose value is deserialized through the wrapper.
struct WrapSeed<'s, S> {
    inner: S,
    slot: &'s Slot,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for WrapSeed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        let slot = self.slot;
        self.inner
            .deserialize(Wrap { inner: d, slot })
            .map_err(|e| back(slot, e))
    }
}

/// Any of the codec's access objects, what it hands out wrapped.
struct WrapAccess<'s, A> {
    inner: A,
    slot: &'s Slot,
}

impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for WrapAccess<'_, A> {
    type Error = Recovered<A::Error>;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Self::Error> {
        let slot = self.slot;
        self.inner
            .next_element_seed(WrapSeed { inner: seed, slot })
            .map_err(Recovered::Codec)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for WrapAccess<'_, A> {
    type Error = Recovered<A::Error>;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let slot = self.slot;
        self.inner
            .next_key_seed(WrapSeed { inner: seed, slot })
            .map_err(Recovered::Codec)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let slot = self.slot;
        self.inner
            .next_value_seed(WrapSeed { inner: seed, slot })
            .map_err(Recovered::Codec)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, 's, A: de::EnumAccess<'de>> de::EnumAccess<'de> for WrapAccess<'s, A> {
    type Error = Recovered<A::Error>;
    type Variant = WrapAccess<'s, A::Variant>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Self::Error> {
        let slot = self.slot;
        let (value, variant) = self
            .inner
            .variant_seed(WrapSeed { inner: seed, slot })
            .map_err(Recovered::Codec)?;
        Ok((
            value,
            WrapAccess {
                inner: variant,
                slot,
            },
        ))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for WrapAccess<'_, A> {
    type Error = Recovered<A::Error>;

    fn unit_variant(self) -> Result<(), Self::Error> {
        self.inner.unit_variant().map_err(Recovered::Codec)
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        let slot = self.slot;
        self.inner
            .newtype_variant_seed(WrapSeed { inner: seed, slot })
            .map_err(Recovered::Codec)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let slot = self.slot;
        self.inner
            .tuple_variant(
                len,
                WrapVisitor {
                    inner: visitor,
                    slot,
                },
            )
            .map_err(Recovered::Codec)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let slot = self.slot;
        self.inner
            .struct_variant(
                fields,
                WrapVisitor {
                    inner: visitor,
                    slot,
                },
            )
            .map_err(Recovered::Codec)
    }
}
