//! A serde `Serializer` in front of the codec's own, which refuses what a
//! format that is not self-describing would write wrong.
//!
//! Bincode and postcard write a struct's fields by position, with no names
//! and no count. A field left out by `#[serde(skip_serializing_if)]` (serde
//! tells the serializer through `SerializeStruct::skip_field`, which both
//! codecs ignore) therefore shifts every later field: the other side decodes
//! the next field's bytes in its place, and may even succeed with wrong
//! values. Refusing it here turns that silent corruption into an error that
//! names the field and the attribute. A map or a sequence of unknown length
//! (what `#[serde(flatten)]` writes) cannot be written by either codec; it is
//! refused here too, so the message names the likely cause whatever the
//! codec.
//!
//! The guard also keeps the message of a `Serialize` impl's own error, which
//! postcard would otherwise replace with "Serde Serialization Error".
//!
//! Everything else is forwarded unchanged: the bytes are the codec's.

use std::cell::Cell;
use std::fmt::{self, Display};

use serde::ser::{self, Serialize};

/// Why the guard refused a value.
#[derive(Debug)]
pub(super) enum Refusal {
    /// A serde attribute that cannot work with a positional codec.
    Attribute {
        attribute: &'static str,
        detail: String,
    },
    /// A length the codec must know up front was not given.
    UnknownLength(String),
    /// The value's own `Serialize` returned this error.
    Custom(String),
}

impl Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Attribute { detail, .. } => f.write_str(detail),
            Refusal::UnknownLength(detail) | Refusal::Custom(detail) => f.write_str(detail),
        }
    }
}

/// Where the first refusal is kept while the codec unwinds its error.
pub(super) type Slot = Cell<Option<Refusal>>;

fn keep(slot: &Slot, refusal: Refusal) {
    let first = slot.take();
    slot.set(Some(first.unwrap_or(refusal)));
}

/// The field a value is the value of, for messages.
#[derive(Debug, Clone, Copy)]
struct At {
    ty: &'static str,
    field: &'static str,
}

fn describe(at: Option<At>) -> String {
    match at {
        Some(At { ty, field }) => format!("the value of field `{field}` of `{ty}`"),
        None => "the value".to_string(),
    }
}

/// `value`, serialized through the guard by whatever serializer is given.
pub(super) struct Checked<'a, T: ?Sized> {
    value: &'a T,
    slot: &'a Slot,
    at: Option<At>,
    codec: &'static str,
}

impl<'a, T: ?Sized> Checked<'a, T> {
    pub(super) fn new(value: &'a T, slot: &'a Slot, codec: &'static str) -> Self {
        Checked {
            value,
            slot,
            at: None,
            codec,
        }
    }
}

impl<T: Serialize + ?Sized> Serialize for Checked<'_, T> {
    #[inline]
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let guard = Guard {
            inner: serializer,
            slot: self.slot,
            at: self.at,
            codec: self.codec,
        };
        self.value.serialize(guard).map_err(|e| match e {
            GuardError::Codec(e) => e,
            GuardError::Refused(refusal) => {
                let text = refusal.to_string();
                keep(self.slot, refusal);
                ser::Error::custom(text)
            }
        })
    }
}

/// The guard's error: the codec's, or a refusal on its way to the slot.
#[derive(Debug)]
enum GuardError<E> {
    Codec(E),
    Refused(Refusal),
}

impl<E: Display> Display for GuardError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::Codec(e) => e.fmt(f),
            GuardError::Refused(r) => r.fmt(f),
        }
    }
}

impl<E: std::error::Error> std::error::Error for GuardError<E> {}

impl<E: ser::Error> ser::Error for GuardError<E> {
    fn custom<M: Display>(msg: M) -> Self {
        GuardError::Refused(Refusal::Custom(msg.to_string()))
    }
}

struct Guard<'a, S> {
    inner: S,
    slot: &'a Slot,
    at: Option<At>,
    codec: &'static str,
}

impl<'a, S> Guard<'a, S> {
    #[inline]
    fn nested<'v, T: ?Sized>(&self, value: &'v T, at: Option<At>) -> Checked<'v, T>
    where
        'a: 'v,
    {
        Checked {
            value,
            slot: self.slot,
            at,
            codec: self.codec,
        }
    }

    /// What a compound made from this serializer needs of it, taken before
    /// the codec's serializer is consumed.
    fn ctx(&self) -> (&'a Slot, &'static str) {
        (self.slot, self.codec)
    }
}

fn compound<'a, C>(
    (slot, codec): (&'a Slot, &'static str),
    inner: C,
    ty: &'static str,
) -> Compound<'a, C> {
    Compound {
        inner,
        slot,
        ty,
        codec,
    }
}

/// Forwards a scalar to the codec's serializer.
macro_rules! forward {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(
            #[inline]
            fn $method(self, v: $ty) -> Result<S::Ok, Self::Error> {
                self.inner.$method(v).map_err(GuardError::Codec)
            }
        )*
    };
}

impl<'a, S: ser::Serializer> ser::Serializer for Guard<'a, S> {
    type Ok = S::Ok;
    type Error = GuardError<S::Error>;
    type SerializeSeq = Compound<'a, S::SerializeSeq>;
    type SerializeTuple = Compound<'a, S::SerializeTuple>;
    type SerializeTupleStruct = Compound<'a, S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<'a, S::SerializeTupleVariant>;
    type SerializeMap = Compound<'a, S::SerializeMap>;
    type SerializeStruct = Compound<'a, S::SerializeStruct>;
    type SerializeStructVariant = Compound<'a, S::SerializeStructVariant>;

    forward! {
        serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32),
        serialize_i64(i64), serialize_i128(i128), serialize_u8(u8), serialize_u16(u16),
        serialize_u32(u32), serialize_u64(u64), serialize_u128(u128), serialize_f32(f32),
        serialize_f64(f64), serialize_char(char), serialize_str(&str), serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    }

    fn serialize_none(self) -> Result<S::Ok, Self::Error> {
        self.inner.serialize_none().map_err(GuardError::Codec)
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<S::Ok, Self::Error> {
        let value = self.nested(value, self.at);
        self.inner.serialize_some(&value).map_err(GuardError::Codec)
    }

    fn serialize_unit(self) -> Result<S::Ok, Self::Error> {
        self.inner.serialize_unit().map_err(GuardError::Codec)
    }

    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<S::Ok, Self::Error> {
        self.inner
            .serialize_unit_variant(name, index, variant)
            .map_err(GuardError::Codec)
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<S::Ok, Self::Error> {
        let value = self.nested(value, self.at);
        self.inner
            .serialize_newtype_struct(name, &value)
            .map_err(GuardError::Codec)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, Self::Error> {
        let value = self.nested(value, self.at);
        self.inner
            .serialize_newtype_variant(name, index, variant, &value)
            .map_err(GuardError::Codec)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, Self::Error> {
        if len.is_none() {
            return Err(GuardError::Refused(Refusal::UnknownLength(format!(
                "{} is a sequence of unknown length (a Serialize that collects an iterator \
                 without an exact size), and {} writes every length before the items: \
                 collect the items into a Vec first",
                describe(self.at),
                self.codec
            ))));
        }
        let ctx = self.ctx();
        let inner = self.inner.serialize_seq(len).map_err(GuardError::Codec)?;
        Ok(compound(ctx, inner, "a sequence"))
    }

    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, Self::Error> {
        let ctx = self.ctx();
        let inner = self.inner.serialize_tuple(len).map_err(GuardError::Codec)?;
        Ok(compound(ctx, inner, "a tuple"))
    }

    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, Self::Error> {
        let ctx = self.ctx();
        let inner = self
            .inner
            .serialize_tuple_struct(name, len)
            .map_err(GuardError::Codec)?;
        Ok(compound(ctx, inner, name))
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Self::Error> {
        let ctx = self.ctx();
        let inner = self
            .inner
            .serialize_tuple_variant(name, index, variant, len)
            .map_err(GuardError::Codec)?;
        Ok(compound(ctx, inner, name))
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, Self::Error> {
        if len.is_none() {
            return Err(GuardError::Refused(Refusal::Attribute {
                attribute: "#[serde(flatten)]",
                detail: format!(
                    "{} is written as a map of unknown length, which is what \
                     #[serde(flatten)] does (the likely cause); {} is not self-describing and \
                     writes every length before the items: nest the struct instead of \
                     flattening it in task and output types",
                    describe(self.at),
                    self.codec
                ),
            }));
        }
        let ctx = self.ctx();
        let inner = self.inner.serialize_map(len).map_err(GuardError::Codec)?;
        Ok(compound(ctx, inner, "a map"))
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, Self::Error> {
        let ctx = self.ctx();
        let inner = self
            .inner
            .serialize_struct(name, len)
            .map_err(GuardError::Codec)?;
        Ok(compound(ctx, inner, name))
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, Self::Error> {
        let ctx = self.ctx();
        let inner = self
            .inner
            .serialize_struct_variant(name, index, variant, len)
            .map_err(GuardError::Codec)?;
        Ok(compound(ctx, inner, name))
    }

    fn collect_str<T: Display + ?Sized>(self, value: &T) -> Result<S::Ok, Self::Error> {
        self.inner.collect_str(value).map_err(GuardError::Codec)
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// Any of the codec's compound serializers, its items guarded.
struct Compound<'a, C> {
    inner: C,
    slot: &'a Slot,
    /// The struct's name, or what kind of compound this is.
    ty: &'static str,
    codec: &'static str,
}

impl<'a, C> Compound<'a, C> {
    #[inline]
    fn item<'v, T: ?Sized>(&self, value: &'v T, field: Option<&'static str>) -> Checked<'v, T>
    where
        'a: 'v,
    {
        Checked {
            value,
            slot: self.slot,
            at: field.map(|field| At { ty: self.ty, field }),
            codec: self.codec,
        }
    }

    fn skipped<E>(&self, field: &'static str) -> Result<(), GuardError<E>> {
        Err(GuardError::Refused(Refusal::Attribute {
            attribute: "#[serde(skip_serializing_if)]",
            detail: format!(
                "field `{field}` of `{}` was left out by #[serde(skip_serializing_if)]: {} \
                 writes a struct's fields by position, not by name, so the other side would \
                 read the next field's bytes in its place (wrong values, or an error); remove \
                 the attribute from task and output types (a None costs one byte)",
                self.ty, self.codec
            ),
        }))
    }
}

impl<C: ser::SerializeSeq> ser::SerializeSeq for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = GuardError<C::Error>;

    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        let value = self.item(value, None);
        self.inner
            .serialize_element(&value)
            .map_err(GuardError::Codec)
    }

    fn end(self) -> Result<C::Ok, Self::Error> {
        self.inner.end().map_err(GuardError::Codec)
    }
}

impl<C: ser::SerializeTuple> ser::SerializeTuple for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = GuardError<C::Error>;

    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        let value = self.item(value, None);
        self.inner
            .serialize_element(&value)
            .map_err(GuardError::Codec)
    }

    fn end(self) -> Result<C::Ok, Self::Error> {
        self.inner.end().map_err(GuardError::Codec)
    }
}

impl<C: ser::SerializeTupleStruct> ser::SerializeTupleStruct for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = GuardError<C::Error>;

    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        let value = self.item(value, None);
        self.inner
            .serialize_field(&value)
            .map_err(GuardError::Codec)
    }

    fn end(self) -> Result<C::Ok, Self::Error> {
        self.inner.end().map_err(GuardError::Codec)
    }
}

impl<C: ser::SerializeTupleVariant> ser::SerializeTupleVariant for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = GuardError<C::Error>;

    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        let value = self.item(value, None);
        self.inner
            .serialize_field(&value)
            .map_err(GuardError::Codec)
    }

    fn end(self) -> Result<C::Ok, Self::Error> {
        self.inner.end().map_err(GuardError::Codec)
    }
}

impl<C: ser::SerializeMap> ser::SerializeMap for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = GuardError<C::Error>;

    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Self::Error> {
        let key = self.item(key, None);
        self.inner.serialize_key(&key).map_err(GuardError::Codec)
    }

    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Self::Error> {
        let value = self.item(value, None);
        self.inner
            .serialize_value(&value)
            .map_err(GuardError::Codec)
    }

    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), Self::Error> {
        let key = self.item(key, None);
        let value = self.item(value, None);
        self.inner
            .serialize_entry(&key, &value)
            .map_err(GuardError::Codec)
    }

    fn end(self) -> Result<C::Ok, Self::Error> {
        self.inner.end().map_err(GuardError::Codec)
    }
}

impl<C: ser::SerializeStruct> ser::SerializeStruct for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = GuardError<C::Error>;

    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Self::Error> {
        let value = self.item(value, Some(key));
        self.inner
            .serialize_field(key, &value)
            .map_err(GuardError::Codec)
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), Self::Error> {
        self.skipped(key)
    }

    fn end(self) -> Result<C::Ok, Self::Error> {
        self.inner.end().map_err(GuardError::Codec)
    }
}

impl<C: ser::SerializeStructVariant> ser::SerializeStructVariant for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = GuardError<C::Error>;

    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Self::Error> {
        let value = self.item(value, Some(key));
        self.inner
            .serialize_field(key, &value)
            .map_err(GuardError::Codec)
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), Self::Error> {
        self.skipped(key)
    }

    fn end(self) -> Result<C::Ok, Self::Error> {
        self.inner.end().map_err(GuardError::Codec)
    }
}
