//! The model as a standard ONNX graph (opset [`OPSET`]), for onnxruntime and the runtimes that
//! read ONNX.
//!
//! Inputs: `ids` `[batch, seq]` int64, `h0` `[layers, batch, H]` and, for the LSTM, `c0`;
//! outputs: `logits` `[batch, seq, V]`, `hn` and (LSTM) `cn`, the state to pass to the next
//! call. `batch` and `seq` are dynamic. The graph:
//!
//! ```text
//! ids ─OneHot(V)→ [batch, seq, V] ─Transpose→ [seq, batch, V]
//!     ─LSTM/GRU/RNN layer 0 (h0[0], c0[0])─Squeeze→ ... layer L-1 ─Transpose→ [batch, seq, H]
//!     ─MatMul(fc.weightᵀ)─Add(fc.bias)→ logits;   the layers' Y_h (Y_c) ─Concat→ hn (cn)
//! ```
//!
//! ONNX's recurrent operators have their own gate orders: the LSTM's is i, o, f, c (PyTorch's
//! i, f, g, o: blocks 0, 3, 1, 2), the GRU's z, r, h (PyTorch's r, z, n: blocks 1, 0, 2), with
//! `linear_before_reset = 1`, which is PyTorch's GRU (the reset gate multiplies `W_hn·h + b_hn`).
//! `B` is `[W_b; R_b]`, PyTorch's `bias_ih` then `bias_hh`, each reordered the same way.
//! The vocabulary (a JSON array of one-character strings, in id order) and the sizes are in the
//! model's metadata props, under the keys the safetensors export uses.

use prost::Message;

use crate::layout::TorchModel;
use crate::onnx_proto::*;
use crate::safetensors_file::metadata;
use karnna_model::Cell;

/// The ONNX operator set the graph uses (LSTM, GRU, RNN: version 14).
pub const OPSET: i64 = 14;
/// The IR version of opset 14 (ONNX 1.9).
pub const IR_VERSION: i64 = 7;

/// The gate blocks of PyTorch's weights in ONNX's order: ONNX block `j` is PyTorch block
/// `order[j]`.
pub fn onnx_gate_order(cell: Cell) -> &'static [usize] {
    match cell {
        Cell::Lstm => &[0, 3, 1, 2],
        Cell::Gru => &[1, 0, 2],
        Cell::Rnn => &[0],
    }
}

/// The ONNX operator of a cell.
fn op_type(cell: Cell) -> &'static str {
    match cell {
        Cell::Lstm => "LSTM",
        Cell::Gru => "GRU",
        Cell::Rnn => "RNN",
    }
}

/// `data`'s row blocks of `h` rows each (`[blocks·h, cols]`) in `order`.
fn reorder_blocks(data: &[f32], h: usize, cols: usize, order: &[usize]) -> Vec<f32> {
    let block = h * cols;
    order
        .iter()
        .flat_map(|&b| &data[b * block..(b + 1) * block])
        .copied()
        .collect()
}

fn float_tensor(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        name: name.into(),
        raw_data: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn int_tensor(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![data.len() as i64],
        data_type: INT64,
        name: name.into(),
        raw_data: data.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: name.into(),
        op_type: op.into(),
        attribute: attrs,
    }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_INT,
        i,
        ints: vec![],
    }
}

fn ints_attr(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: ATTR_INTS,
        i: 0,
        ints: ints.to_vec(),
    }
}

/// A graph input or output: element type and dimensions, a name for a dynamic one.
fn value_info(name: &str, elem_type: i32, dims: &[Result<usize, &str>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Ok(n) => DimensionValue::DimValue(*n as i64),
                Err(p) => DimensionValue::DimParam(p.to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

/// The ONNX graph of `model`.
fn graph(model: &TorchModel) -> GraphProto {
    let (cell, h, v) = (model.cell(), model.hidden(), model.config.vocab_size);
    let layers = model.layers.len();
    let lstm = cell == Cell::Lstm;
    let order = onnx_gate_order(cell);
    let mut init = Vec::new();
    let mut nodes = Vec::new();

    // One-hot input: OneHot(ids, depth V, values [0, 1]) along a new last axis.
    init.push(int_tensor("vocab_size", &[v as i64]));
    init.push(float_tensor("off_on", &[2], &[0.0, 1.0]));
    init.push(int_tensor("axis_0", &[0]));
    init.push(int_tensor("axis_1", &[1]));
    nodes.push(node(
        "OneHot",
        "one_hot",
        &["ids", "vocab_size", "off_on"],
        &["x_one_hot"],
        vec![int_attr("axis", -1)],
    ));
    nodes.push(node(
        "Transpose",
        "time_major",
        &["x_one_hot"],
        &["x_0"],
        vec![ints_attr("perm", &[1, 0, 2])],
    ));

    let (mut hs, mut cs) = (Vec::new(), Vec::new());
    for (k, l) in model.layers.iter().enumerate() {
        let input = model.input_size(k);
        let (w, r, b) = (format!("W_{k}"), format!("R_{k}"), format!("B_{k}"));
        let gh = cell.gates() * h;
        init.push(float_tensor(
            &w,
            &[1, gh, input],
            &reorder_blocks(&l.weight_ih, h, input, order),
        ));
        init.push(float_tensor(
            &r,
            &[1, gh, h],
            &reorder_blocks(&l.weight_hh, h, h, order),
        ));
        let mut bias = reorder_blocks(&l.bias_ih, h, 1, order);
        bias.extend(reorder_blocks(&l.bias_hh, h, 1, order));
        init.push(float_tensor(&b, &[1, 2 * gh], &bias));
        init.push(int_tensor(&format!("layer_{k}"), &[k as i64]));
        init.push(int_tensor(&format!("layer_{k}_end"), &[k as i64 + 1]));
        let slice = |state: &str| {
            let out = format!("{state}_{k}");
            let n = node(
                "Slice",
                &out,
                &[
                    state,
                    &format!("layer_{k}"),
                    &format!("layer_{k}_end"),
                    "axis_0",
                ],
                &[&out],
                vec![],
            );
            (n, out)
        };
        let (n, h0) = slice("h0");
        nodes.push(n);
        let (x, y, yh, yc) = (
            format!("x_{k}"),
            format!("y_{k}"),
            format!("hn_{k}"),
            format!("cn_{k}"),
        );
        let mut inputs: Vec<String> = vec![x.clone(), w, r, b, String::new(), h0];
        let mut outputs = vec![y.clone(), yh.clone()];
        if lstm {
            let (n, c0) = slice("c0");
            nodes.push(n);
            inputs.push(c0);
            outputs.push(yc.clone());
            cs.push(yc);
        }
        hs.push(yh);
        let mut attrs = vec![int_attr("hidden_size", h as i64)];
        if cell == Cell::Gru {
            attrs.push(int_attr("linear_before_reset", 1));
        }
        let inputs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
        let outputs: Vec<&str> = outputs.iter().map(|s| s.as_str()).collect();
        nodes.push(node(
            op_type(cell),
            &format!("layer_{k}_{}", cell.name()),
            &inputs,
            &outputs,
            attrs,
        ));
        // Y is [seq, num_directions = 1, batch, H].
        nodes.push(node(
            "Squeeze",
            &format!("y_{k}_squeeze"),
            &[&y, "axis_1"],
            &[&format!("x_{}", k + 1)],
            vec![],
        ));
    }
    let concat = |parts: &[String], out: &str| {
        let parts: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
        node("Concat", out, &parts, &[out], vec![int_attr("axis", 0)])
    };
    nodes.push(concat(&hs, "hn"));
    if lstm {
        nodes.push(concat(&cs, "cn"));
    }
    let top = format!("x_{layers}");
    nodes.push(node(
        "Transpose",
        "batch_major",
        &[&top],
        &["top"],
        vec![ints_attr("perm", &[1, 0, 2])],
    ));
    init.push(float_tensor(
        "fc_weight_t",
        &[h, v],
        &karnna_kernels::transpose(v, h, &model.fc_weight),
    ));
    init.push(float_tensor("fc_bias", &[v], &model.fc_bias));
    nodes.push(node(
        "MatMul",
        "fc",
        &["top", "fc_weight_t"],
        &["fc_out"],
        vec![],
    ));
    nodes.push(node(
        "Add",
        "fc_bias_add",
        &["fc_out", "fc_bias"],
        &["logits"],
        vec![],
    ));

    let state = [Ok(layers), Err("batch"), Ok(h)];
    let mut inputs = vec![
        value_info("ids", INT64, &[Err("batch"), Err("seq")]),
        value_info("h0", FLOAT, &state),
    ];
    let mut outputs = vec![
        value_info("logits", FLOAT, &[Err("batch"), Err("seq"), Ok(v)]),
        value_info("hn", FLOAT, &state),
    ];
    if lstm {
        inputs.push(value_info("c0", FLOAT, &state));
        outputs.push(value_info("cn", FLOAT, &state));
    }
    GraphProto {
        node: nodes,
        name: format!("karnna_char_{}", cell.name()),
        initializer: init,
        input: inputs,
        output: outputs,
    }
}

/// The ONNX model of `model`, serialized.
pub fn to_bytes(model: &TorchModel) -> Result<Vec<u8>, String> {
    let mut props: Vec<StringStringEntryProto> = metadata(model)
        .into_iter()
        .filter(|(k, _)| k != "format")
        .map(|(key, value)| StringStringEntryProto { key, value })
        .collect();
    props.sort_by(|a, b| a.key.cmp(&b.key));
    let proto = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "karnna".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "A character-level {} ({} layers x {} units) trained by karnna. Feed ids (the vocabulary's \
             indices, metadata `vocab`) and the state; pass hn{} back as h0{} to continue.",
            model.cell().name().to_uppercase(),
            model.layers.len(),
            model.hidden(),
            if model.cell() == Cell::Lstm { ", cn" } else { "" },
            if model.cell() == Cell::Lstm { ", c0" } else { "" },
        ),
        graph: Some(graph(model)),
        metadata_props: props,
    };
    Ok(proto.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_blocks_move_as_onnx_orders_them() {
        // Four blocks of one row of two columns: block b holds b.
        let data = [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0];
        let lstm = reorder_blocks(&data, 1, 2, onnx_gate_order(Cell::Lstm));
        assert_eq!(lstm, [0.0, 0.0, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0]); // i, o, f, c
        let gru = reorder_blocks(&data[..6], 1, 2, onnx_gate_order(Cell::Gru));
        assert_eq!(gru, [1.0, 1.0, 0.0, 0.0, 2.0, 2.0]); // z, r, h
    }
}
