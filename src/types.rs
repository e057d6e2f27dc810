//! The type check at the handshake: parent and worker compare the serde
//! shape of the task and output types, so that a stale worker binary is
//! refused at the start instead of silently swapping fields.
//!
//! bincode and postcard are not self-describing: a worker whose task struct
//! has the same fields in another order decodes `width: 1920, height: 1080`
//! as `height: 1920, width: 1080` without an error. So each side traces its
//! types with `serde-reflection` (the formats serde's derive produces: field
//! names and order, variants, primitive types) and renders them as text; the
//! worker appends its rendering to its HELLO and the parent compares.
//!
//! A type that cannot be traced without sample values (a `Deserialize` that
//! validates, such as `NonZeroU32`, or one that is not derived) has no
//! shape; then only the names are shown, and no check is made: a false
//! refusal would be worse than no check.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde_reflection::{ContainerFormat, Format, Named, Tracer, TracerConfig, VariantFormat};

use crate::codec::Limit;
use crate::task::Task;

/// One type as the handshake describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeShape {
    /// `std::any::type_name`, for the error message only (it may differ
    /// between builds of the same type).
    pub(crate) name: String,
    /// Its serde shape, `None` when it cannot be traced.
    pub(crate) shape: Option<String>,
}

/// The task and output types of one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signature {
    pub(crate) task: TypeShape,
    pub(crate) output: TypeShape,
}

/// The two sides' descriptions of a type whose shapes differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mismatch {
    /// `"task"` or `"output"`.
    pub(crate) role: &'static str,
    pub(crate) parent: TypeShape,
    pub(crate) worker: TypeShape,
}

/// What a type's serde shape says about the lengths a decode of it reads
/// from the bytes (of a string, a byte buffer, a sequence or a map): the
/// lengths the codec's limit exists for (`codec::Limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lengths {
    /// None, and the shape is std's types alone (integers, floats, `bool`,
    /// `char`, `()`, `Option`, tuples, arrays), whose `Deserialize` asks for
    /// the same whatever the bytes: nothing a decode of one allocates can be
    /// claimed by the bytes, even a hostile peer's.
    NoneInStd,
    /// None in the traced shape, which has types of the program's own: their
    /// `Deserialize` could ask for more on other bytes than on the tracer's.
    NoneTraced,
    /// Some, or the type was not traced.
    Some,
}

impl Lengths {
    /// The limit for bytes that this program's own encoder made from a
    /// value of this type (a task, in its worker): none needed unless the
    /// shape has lengths. Only a `Deserialize` of the program's own that
    /// reads other things on other bytes than on the tracer's could then
    /// believe a length, and at worst abort that worker (a crash its
    /// parent reports like any other).
    pub(crate) fn trusted(self) -> Limit {
        match self {
            Lengths::NoneInStd | Lengths::NoneTraced => Limit::Off,
            Lengths::Some => Limit::Input,
        }
    }

    /// The limit for bytes from a peer that may be hostile (an output, in
    /// the parent): none only for std's types, whose decode cannot be led
    /// by the bytes to read a length.
    pub(crate) fn untrusted(self) -> Limit {
        match self {
            Lengths::NoneInStd => Limit::Off,
            Lengths::NoneTraced | Lengths::Some => Limit::Input,
        }
    }
}

/// The [`Lengths`] of a task type and of its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TaskLengths {
    pub(crate) task: Lengths,
    pub(crate) output: Lengths,
}

/// One task type's signature, and its lengths.
#[derive(Clone)]
struct Traced {
    signature: Arc<Signature>,
    lengths: TaskLengths,
}

impl Signature {
    /// This program's signature for `T`, traced once per process.
    pub(crate) fn of<T: Task>() -> Arc<Signature> {
        traced::<T>().signature
    }

    /// What the shapes of `T` and its output say about their lengths (see
    /// [`Lengths`]), from the same trace as [`of`](Self::of): `Some` for
    /// both when `T::SHAPE_CHECK` is off.
    pub(crate) fn lengths_of<T: Task>() -> TaskLengths {
        traced::<T>().lengths
    }

    /// The first type whose shape differs between `self` (the parent) and
    /// `worker`; `None` if they agree or either shape is unknown.
    pub(crate) fn mismatch(&self, worker: &Signature) -> Option<Mismatch> {
        [
            ("task", &self.task, &worker.task),
            ("output", &self.output, &worker.output),
        ]
        .into_iter()
        .find_map(
            |(role, parent, worker)| match (&parent.shape, &worker.shape) {
                (Some(a), Some(b)) if a != b => Some(Mismatch {
                    role,
                    parent: parent.clone(),
                    worker: worker.clone(),
                }),
                _ => None,
            },
        )
    }

    /// Appends the wire form: for the task, then the output, a `u32` length
    /// and the name, then a `u32` length and the shape (`u32::MAX`: none).
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        for t in [&self.task, &self.output] {
            put(out, Some(&t.name));
            put(out, t.shape.as_deref());
        }
    }

    /// Reads the wire form; `None` if it is malformed. Every length is
    /// checked against the bytes there are before anything is copied.
    pub(crate) fn decode(mut bytes: &[u8]) -> Option<Signature> {
        let mut take = || -> Option<Option<String>> {
            let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
            bytes = &bytes[4..];
            if len == u32::MAX {
                return Some(None);
            }
            let text = bytes.get(..len as usize)?;
            let text = String::from_utf8_lossy(text).into_owned();
            bytes = &bytes[len as usize..];
            Some(Some(text))
        };
        let task = TypeShape {
            name: take()??,
            shape: take()?,
        };
        let output = TypeShape {
            name: take()??,
            shape: take()?,
        };
        Some(Signature { task, output })
    }
}

fn put(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        // Names and shapes are far below 4 GiB; a longer one is cut.
        Some(text) => {
            let text = &text.as_bytes()[..text.len().min(u32::MAX as usize - 1)];
            out.extend_from_slice(&(text.len() as u32).to_le_bytes());
            out.extend_from_slice(text);
        }
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
}

/// `T`'s signature and lengths, traced once per process.
fn traced<T: Task>() -> Traced {
    static CACHE: Mutex<Option<HashMap<TypeId, Traced>>> = Mutex::new(None);
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .get_or_insert_with(HashMap::new)
        .entry(TypeId::of::<T>())
        .or_insert_with(|| {
            let ((task, task_lengths), (output, output_lengths)) = if T::SHAPE_CHECK {
                (shape_of::<T>(), shape_of::<T::Output>())
            } else {
                (unchecked::<T>(), unchecked::<T::Output>())
            };
            Traced {
                signature: Arc::new(Signature { task, output }),
                lengths: TaskLengths {
                    task: task_lengths,
                    output: output_lengths,
                },
            }
        })
        .clone()
}

/// Traces `T` and renders its shape. The trace runs `T`'s `Deserialize`
/// (user code) against the tracer, so a panic there means "unknown".
fn shape_of<T: DeserializeOwned>() -> (TypeShape, Lengths) {
    let traced = std::panic::catch_unwind(|| {
        let mut tracer = Tracer::new(TracerConfig::default());
        let (root, _) = tracer.trace_simple_type::<T>().ok()?;
        let registry = tracer.registry().ok()?;
        let mut text = String::new();
        render(&mut text, &root);
        for (name, container) in &registry {
            text.push_str("; ");
            render_container(&mut text, name, container);
        }
        let lengths = if has_lengths(&root) || registry.values().any(container_has_lengths) {
            Lengths::Some
        } else if registry.is_empty() {
            Lengths::NoneInStd
        } else {
            Lengths::NoneTraced
        };
        Some((text, lengths))
    });
    let (shape, lengths) = match traced {
        Ok(Some((text, lengths))) => (Some(text), lengths),
        _ => (None, Lengths::Some),
    };
    let shape = TypeShape {
        name: std::any::type_name::<T>().to_string(),
        shape,
    };
    (shape, lengths)
}

/// Whether a decode of `format` may read a length from the bytes (or
/// `format` is not fully known). A named container counts as none here:
/// the registry holds its own format.
fn has_lengths(format: &Format) -> bool {
    match format {
        Format::Str | Format::Bytes | Format::Seq(_) | Format::Map { .. } => true,
        Format::Variable(_) => true,
        Format::Option(inner) | Format::TupleArray { content: inner, .. } => has_lengths(inner),
        Format::Tuple(items) => items.iter().any(has_lengths),
        Format::TypeName(_)
        | Format::Unit
        | Format::Bool
        | Format::I8
        | Format::I16
        | Format::I32
        | Format::I64
        | Format::I128
        | Format::U8
        | Format::U16
        | Format::U32
        | Format::U64
        | Format::U128
        | Format::F32
        | Format::F64
        | Format::Char => false,
    }
}

fn container_has_lengths(container: &ContainerFormat) -> bool {
    let fields = |fields: &[Named<Format>]| fields.iter().any(|f| has_lengths(&f.value));
    match container {
        ContainerFormat::UnitStruct => false,
        ContainerFormat::NewTypeStruct(inner) => has_lengths(inner),
        ContainerFormat::TupleStruct(items) => items.iter().any(has_lengths),
        ContainerFormat::Struct(named) => fields(named),
        ContainerFormat::Enum(variants) => variants.values().any(|v| match &v.value {
            VariantFormat::Unit => false,
            VariantFormat::NewType(inner) => has_lengths(inner),
            VariantFormat::Tuple(items) => items.iter().any(has_lengths),
            VariantFormat::Struct(named) => fields(named),
            VariantFormat::Variable(_) => true,
        }),
    }
}

/// A type whose shape is not traced (`Task::SHAPE_CHECK` is off).
fn unchecked<T>() -> (TypeShape, Lengths) {
    let shape = TypeShape {
        name: std::any::type_name::<T>().to_string(),
        shape: None,
    };
    (shape, Lengths::Some)
}

fn render_container(out: &mut String, name: &str, container: &ContainerFormat) {
    out.push_str(name);
    match container {
        ContainerFormat::UnitStruct => {}
        ContainerFormat::NewTypeStruct(inner) => {
            out.push('(');
            render(out, inner);
            out.push(')');
        }
        ContainerFormat::TupleStruct(items) => render_tuple(out, items),
        ContainerFormat::Struct(fields) => render_fields(out, fields),
        ContainerFormat::Enum(variants) => {
            out.push_str(" {");
            for (i, variant) in variants.values().enumerate() {
                out.push_str(if i == 0 { " " } else { " | " });
                out.push_str(&variant.name);
                match &variant.value {
                    VariantFormat::NewType(inner) => {
                        out.push('(');
                        render(out, inner);
                        out.push(')');
                    }
                    VariantFormat::Tuple(items) => render_tuple(out, items),
                    VariantFormat::Struct(fields) => render_fields(out, fields),
                    VariantFormat::Unit | VariantFormat::Variable(_) => {}
                }
            }
            out.push_str(" }");
        }
    }
}

fn render_fields(out: &mut String, fields: &[Named<Format>]) {
    out.push_str(" {");
    for (i, field) in fields.iter().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        out.push_str(&field.name);
        out.push_str(": ");
        render(out, &field.value);
    }
    out.push_str(" }");
}

fn render_tuple(out: &mut String, items: &[Format]) {
    out.push('(');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        render(out, item);
    }
    out.push(')');
}

fn render(out: &mut String, format: &Format) {
    match format {
        Format::TypeName(name) => out.push_str(name),
        Format::Option(inner) => {
            out.push_str("Option<");
            render(out, inner);
            out.push('>');
        }
        Format::Seq(inner) => {
            out.push_str("Seq<");
            render(out, inner);
            out.push('>');
        }
        Format::Map { key, value } => {
            out.push_str("Map<");
            render(out, key);
            out.push_str(", ");
            render(out, value);
            out.push('>');
        }
        Format::Tuple(items) => render_tuple(out, items),
        Format::TupleArray { content, size } => {
            out.push('[');
            render(out, content);
            let _ = write!(out, "; {size}]");
        }
        // Primitives read as serde names them: U32, Str, Bytes, ...
        other => {
            let _ = write!(out, "{other:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    mod v1 {
        use super::*;
        #[derive(Serialize, Deserialize)]
        pub(super) struct Frame {
            pub(super) width: u32,
            pub(super) height: u32,
        }
        impl Task for Frame {
            type Output = Option<Vec<(u8, String)>>;
        }
    }

    mod v2 {
        use super::*;
        #[derive(Serialize, Deserialize)]
        pub(super) struct Frame {
            pub(super) height: u32,
            pub(super) width: u32,
        }
        impl Task for Frame {
            type Output = Option<Vec<(u8, String)>>;
        }
    }

    #[derive(Serialize, Deserialize)]
    enum Shape {
        Dot,
        Line(u8),
        Box { w: u16, h: u16 },
    }
    impl Task for Shape {
        type Output = std::num::NonZeroU32;
    }

    #[test]
    fn fields_in_another_order_are_a_mismatch_naming_both_shapes() {
        let a = Signature::of::<v1::Frame>();
        let b = Signature::of::<v2::Frame>();
        assert_eq!(
            a.task.shape.as_deref(),
            Some("Frame; Frame { width: U32, height: U32 }")
        );
        assert_eq!(
            a.output.shape.as_deref(),
            Some("Option<Seq<(U8, Str)>>"),
            "{a:?}"
        );
        let m = a.mismatch(&b).expect("a mismatch");
        assert_eq!(m.role, "task");
        assert!(
            m.worker
                .shape
                .as_deref()
                .is_some_and(|s| s.contains("height: U32, width"))
        );
        assert!(a.mismatch(&a).is_none());
    }

    #[test]
    fn enums_trace_every_variant_and_an_untraceable_type_is_not_checked() {
        let s = Signature::of::<Shape>();
        assert_eq!(
            s.task.shape.as_deref(),
            Some("Shape; Shape { Dot | Line(U8) | Box { w: U16, h: U16 } }")
        );
        // NonZeroU32's Deserialize refuses the tracer's zero: no shape.
        assert_eq!(s.output.shape, None);
        let mut other = (*s).clone();
        other.output.shape = Some("U32".into());
        assert!(
            s.mismatch(&other).is_none(),
            "an unknown shape is not checked"
        );
    }

    #[derive(Serialize, Deserialize)]
    struct Tiny {
        id: u64,
        payload: [u8; 16],
        maybe: Option<(char, bool)>,
    }
    impl Task for Tiny {
        type Output = (u64, [i16; 4]);
    }

    #[derive(Serialize, Deserialize)]
    enum Deep {
        Plain(u8),
        Named { inner: Option<Box<Inner>> },
    }
    #[derive(Serialize, Deserialize)]
    struct Inner {
        tags: [(u8, std::collections::BTreeMap<u8, u8>); 1],
    }
    impl Task for Deep {
        type Output = u64;
    }

    #[derive(Serialize, Deserialize)]
    struct Unchecked(u64);
    impl Task for Unchecked {
        type Output = u64;
        const SHAPE_CHECK: bool = false;
    }

    /// Only a shape with no length anywhere is decoded without the limit:
    /// a task (trusted bytes) when it is traced whole, an output (a
    /// hostile worker's bytes) only when it is std's types alone.
    #[test]
    fn lengths_are_found_at_any_depth_and_only_std_shapes_skip_the_limit_for_outputs() {
        assert_eq!(
            Signature::lengths_of::<Tiny>(),
            TaskLengths {
                task: Lengths::NoneTraced,
                output: Lengths::NoneInStd
            }
        );
        assert_eq!(Lengths::NoneTraced.trusted(), Limit::Off);
        assert_eq!(Lengths::NoneTraced.untrusted(), Limit::Input);
        assert_eq!(Lengths::NoneInStd.untrusted(), Limit::Off);
        assert_eq!(Lengths::Some.trusted(), Limit::Input);
        // A map inside an array inside a tuple inside a boxed option inside
        // an enum's variant still counts.
        assert_eq!(
            Signature::lengths_of::<Deep>(),
            TaskLengths {
                task: Lengths::Some,
                output: Lengths::NoneInStd
            }
        );
        // Strings, sequences; an untraceable output; an unchecked type.
        let frame = Signature::lengths_of::<v1::Frame>();
        assert_eq!(frame.output, Lengths::Some);
        assert_eq!(frame.task, Lengths::NoneTraced);
        assert_eq!(Signature::lengths_of::<Shape>().output, Lengths::Some);
        assert_eq!(
            Signature::lengths_of::<Unchecked>(),
            TaskLengths {
                task: Lengths::Some,
                output: Lengths::Some
            }
        );
    }

    #[test]
    fn the_wire_form_round_trips_and_malformed_bytes_are_refused() {
        let s = Signature::of::<v1::Frame>();
        let mut out = Vec::new();
        s.encode_into(&mut out);
        assert_eq!(Signature::decode(&out).as_ref(), Some(&*s));
        for cut in 0..out.len() {
            assert_eq!(Signature::decode(&out[..cut]), None, "cut at {cut}");
        }
        let mut huge = Vec::new();
        huge.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
        assert_eq!(Signature::decode(&huge), None);
    }
}
