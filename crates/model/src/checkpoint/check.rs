//! What a checkpoint's records must satisfy before Burn reads them. A checkpoint may come from
//! anyone: its checksum catches accidents, not intent. Burn's record loader trusts what it reads
//! (a parameter id that does not parse, or a tensor whose bytes disagree with its shape,
//! panics), and a model built from the meta allocates what the meta asks. So every value of a
//! record is walked without copying it ([`check_record`]) and the model record's shapes are
//! compared with the meta's model ([`check_model_shapes`]), before Burn sees the bytes or a
//! tensor is allocated (the meta's own fields: `meta.rs`). Each error names the field or tensor
//! at fault. This file knows the model's config, not the checkpoint that holds it.

use std::fmt;

use burn::module::ParamId;
use burn::tensor::DType;
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::model::CharRnnConfig;
use crate::Cell;

/// Deepest nesting a record may have (karnna's are a few levels deep); deeper is refused
/// before it can exhaust a thread's stack.
const MAX_DEPTH: usize = 32;

/// A record's tensor as far as its shape goes (the rest of each value is skipped unread).
#[derive(Deserialize)]
struct TensorShape {
    shape: Vec<usize>,
}

#[derive(Deserialize)]
struct ParamShape {
    param: TensorShape,
}

#[derive(Deserialize)]
struct LayerShapes {
    w_ih: ParamShape,
    w_hh: ParamShape,
    b_ih: ParamShape,
    b_hh: ParamShape,
}

#[derive(Deserialize)]
struct LinearShapes {
    weight: ParamShape,
    bias: Option<ParamShape>,
}

#[derive(Deserialize)]
struct ModelShapes {
    layers: Vec<LayerShapes>,
    output: LinearShapes,
}

#[derive(Deserialize)]
struct RecordShapes {
    item: ModelShapes,
}

/// Checks that the model record (already walked by [`check_record`]) holds exactly the tensors
/// that `model` describes: `num_layers` layers, each `W_ih [input, G·H]`, `W_hh [H, G·H]`,
/// `b_ih` and `b_hh` `[G·H]` (G the cell's gates, the first layer's input the vocabulary), and
/// the output layer `[H, V]` with its bias `[V]`. The message names the meta's field that
/// disagrees with the weights.
pub(crate) fn check_model_shapes(bytes: &[u8], model: &CharRnnConfig) -> Result<(), String> {
    let record: RecordShapes = rmp_serde::from_slice(bytes).map_err(|e| format!("model: {e}"))?;
    let (layers, output) = (record.item.layers, record.item.output);
    let (h, v) = (model.shape.lstm_size, model.vocab_size);
    if layers.len() != model.shape.num_layers {
        return Err(format!(
            "model.num_layers is {} but the weights hold {} layers",
            model.shape.num_layers,
            layers.len()
        ));
    }
    let cell = model.shape.cell;
    let width = cell
        .gates()
        .checked_mul(h)
        .ok_or_else(|| format!("model.lstm_size {h} is too large"))?;
    let meta = Meta { cell, h, v, width };
    for (i, layer) in layers.iter().enumerate() {
        meta.check_layer(i, layer)?;
    }
    if output.weight.param.shape != [h, v] {
        let w = &output.weight.param.shape;
        return meta.mismatch("model.vocab_size", "output weight".into(), w, &[h, v]);
    }
    match &output.bias {
        Some(b) if b.param.shape == [v] => Ok(()),
        Some(b) => meta.mismatch(
            "model.vocab_size",
            "output bias".into(),
            &b.param.shape,
            &[v],
        ),
        None => Err("model: the output layer has no bias".into()),
    }
}

/// What a checkpoint's meta says of the weights' shapes, for [`check_model_shapes`].
struct Meta {
    cell: Cell,
    /// Hidden units.
    h: usize,
    /// Vocabulary size.
    v: usize,
    /// Gate columns, `G·h`.
    width: usize,
}

impl Meta {
    /// Checks layer `i`'s four tensors.
    fn check_layer(&self, i: usize, l: &LayerShapes) -> Result<(), String> {
        let (h, width) = (self.h, self.width);
        let w_hh = &l.w_hh.param.shape;
        if w_hh.first() != Some(&h) {
            let name = format!("layer {i} w_hh");
            return self.mismatch("model.lstm_size", name, w_hh, &[h, width]);
        }
        if w_hh[1..] != [width] {
            return self.mismatch("model.cell", format!("layer {i} w_hh"), w_hh, &[h, width]);
        }
        let (input, field) = match i {
            0 => (self.v, "model.vocab_size"),
            _ => (h, "model.lstm_size"),
        };
        if l.w_ih.param.shape != [input, width] {
            let w_ih = &l.w_ih.param.shape;
            return self.mismatch(field, format!("layer {i} w_ih"), w_ih, &[input, width]);
        }
        for (name, b) in [("b_ih", &l.b_ih), ("b_hh", &l.b_hh)] {
            if b.param.shape != [width] {
                let name = format!("layer {i} {name}");
                return self.mismatch("model.cell", name, &b.param.shape, &[width]);
            }
        }
        Ok(())
    }

    /// The error for a meta `field` that disagrees with tensor `name`'s shape.
    fn mismatch(
        &self,
        field: &str,
        name: String,
        got: &[usize],
        want: &[usize],
    ) -> Result<(), String> {
        let (cell, h, v) = (self.cell, self.h, self.v);
        Err(format!(
            "{field} disagrees with the weights: {name} is {got:?}, the meta's model ({h} {cell} \
             units, {v} characters) needs {want:?}"
        ))
    }
}

/// Walks every value of a Burn record (named MessagePack) without copying it, and checks what
/// Burn's loader takes on trust: each tensor (a map with `bytes`, `shape` and `dtype`) is f32
/// with exactly `4 · Π shape` bytes; each parameter id (an `id` field, and with `id_keys` the
/// keys of the record's `item` map, as in an optimizer's record) parses; nesting stays within
/// `MAX_DEPTH` (32). Any length in the record is then within the bytes given.
pub fn check_record(bytes: &[u8], id_keys: bool) -> Result<(), String> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    let top = Node {
        depth: 0,
        id_keys: false,
        item_id_keys: id_keys,
    };
    top.deserialize(&mut de)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// One value of the record being walked, at `depth`. `id_keys`: the keys of this map must be
/// parameter ids; `item_id_keys`: those of the map under this map's `item` key.
#[derive(Clone, Copy)]
struct Node {
    depth: usize,
    id_keys: bool,
    item_id_keys: bool,
}

/// What a walked value was, as far as a map needs to know: a string (a key or an id), or
/// anything else.
enum Walked {
    Str(String),
    Other,
}

impl Node {
    fn child(self) -> Self {
        Self {
            depth: self.depth + 1,
            id_keys: false,
            item_id_keys: false,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Node {
    type Value = Walked;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Walked, D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(D::Error::custom("nested too deeply"));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node {
    type Value = Walked;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Burn record value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Walked, E> {
        Ok(Walked::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Walked, E> {
        Ok(Walked::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Walked, E> {
        Ok(Walked::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Walked, E> {
        Ok(Walked::Other)
    }
    fn visit_str<E>(self, s: &str) -> Result<Walked, E> {
        Ok(Walked::Str(s.to_owned()))
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Walked, E> {
        Ok(Walked::Other)
    }
    fn visit_unit<E>(self) -> Result<Walked, E> {
        Ok(Walked::Other)
    }
    fn visit_none<E>(self) -> Result<Walked, E> {
        Ok(Walked::Other)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Walked, D::Error> {
        self.child().deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Walked, D::Error> {
        self.child().deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Walked, A::Error> {
        while seq.next_element_seed(self.child())?.is_some() {}
        Ok(Walked::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Walked, A::Error> {
        let mut tensor = TensorFields::default();
        while let Some(key) = map.next_key_seed(self.child())? {
            let key = match key {
                Walked::Str(k) => k,
                Walked::Other if self.id_keys => {
                    return Err(A::Error::custom("a parameter id that is not a string"))
                }
                Walked::Other => {
                    map.next_value_seed(self.child())?;
                    continue;
                }
            };
            if self.id_keys {
                check_id(&key).map_err(A::Error::custom)?;
            }
            match key.as_str() {
                "bytes" if !self.id_keys => tensor.bytes = Some(map.next_value::<ByteLen>()?.0),
                "shape" if !self.id_keys => tensor.shape = Some(map.next_value()?),
                "dtype" if !self.id_keys => tensor.dtype = Some(map.next_value()?),
                "id" if !self.id_keys => {
                    let id: String = map.next_value()?;
                    check_id(&id).map_err(A::Error::custom)?;
                }
                "item" if self.item_id_keys => {
                    let items = Node {
                        id_keys: true,
                        ..self.child()
                    };
                    map.next_value_seed(items)?;
                }
                _ => {
                    map.next_value_seed(self.child())?;
                }
            }
        }
        tensor.check().map_err(A::Error::custom)?;
        Ok(Walked::Other)
    }
}

/// A tensor's fields, as far as they were found in one map.
#[derive(Default)]
struct TensorFields {
    bytes: Option<usize>,
    shape: Option<Vec<usize>>,
    dtype: Option<DType>,
}

impl TensorFields {
    /// Nothing when the map is not a tensor; else its bytes must be exactly its f32 values.
    fn check(self) -> Result<(), String> {
        let (bytes, shape, dtype) = match (self.bytes, self.shape, self.dtype) {
            (None, None, None) => return Ok(()),
            (Some(b), Some(s), Some(d)) => (b, s, d),
            _ => return Err("a tensor without its bytes, shape or dtype".into()),
        };
        if dtype != DType::F32 {
            return Err(format!("a tensor of type {dtype:?} (karnna writes f32)"));
        }
        let values = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|&n| n.checked_mul(4) == Some(bytes));
        match values {
            Some(_) => Ok(()),
            None => Err(format!("a tensor of shape {shape:?} holds {bytes} bytes")),
        }
    }
}

/// The length of a byte string (or of a sequence of bytes), read without copying it.
struct ByteLen(usize);

impl<'de> Deserialize<'de> for ByteLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Len;
        impl<'de> Visitor<'de> for Len {
            type Value = ByteLen;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, b: &[u8]) -> Result<ByteLen, E> {
                Ok(ByteLen(b.len()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteLen, A::Error> {
                let mut n = 0;
                while seq.next_element::<u8>()?.is_some() {
                    n += 1;
                }
                Ok(ByteLen(n))
            }
        }
        d.deserialize_bytes(Len)
    }
}

/// The symbols of Burn's parameter ids (base32, DNSSEC alphabet, either case).
fn base32_symbol(c: char) -> bool {
    c.is_ascii_digit() || ('a'..='v').contains(&c.to_ascii_lowercase())
}

/// Checks that Burn parses `id` without panicking: its parser copies a base32 id of more than
/// 14 symbols (more than 8 bytes) into 8 bytes, and panics on an id it cannot parse.
fn check_id(id: &str) -> Result<(), String> {
    let parses = (id.len() <= 14 || !id.chars().all(base32_symbol))
        && ParamId::try_deserialize(id).is_some();
    match parses {
        true => Ok(()),
        false => Err(format!("a parameter id that does not parse: {id:?}")),
    }
}
