//! Export and import against karnna itself: the round trip is exact for every cell, and every
//! crafted file is refused with one line before anything is built from it.

mod common;

use std::path::Path;

use common::{greedy, logits, scratch, small_model, B, TEXT};
use karnna_data::Vocab;
use karnna_exchange::safetensors_file::{self, META_VOCAB};
use karnna_exchange::{export, Format, TorchModel};
use karnna_model::Cell;

#[test]
fn safetensors_round_trip_is_bit_exact_for_every_cell() {
    let dir = scratch("round-trip");
    for cell in Cell::ALL {
        let (model, vocab) = small_model(cell, 11);
        let torch = TorchModel::from_model(&model, vocab.clone(), 1234, Some(1.5));
        let path = dir.join(format!("{}.safetensors", cell.name()));
        export(&torch, &path, Format::Safetensors).unwrap();
        let back = safetensors_file::read(&path, None).unwrap();
        assert!(back.notes.is_empty(), "{:?}", back.notes);
        assert_eq!(
            back.model, torch,
            "{cell}: weights, vocabulary and metadata"
        );
        let loaded = back.model.model::<B>(&Default::default());
        let ids = vec![(0..40)
            .map(|i| (i * 7 % vocab.len()) as i64)
            .collect::<Vec<_>>()];
        let (a, _) = logits(&model, &ids);
        let (b, _) = logits(&loaded, &ids);
        assert_eq!(
            a, b,
            "{cell}: the imported model computes the same logits, bit for bit"
        );
        assert_eq!(
            greedy(&model, &vocab, "Happy", 60),
            greedy(&loaded, &vocab, "Happy", 60)
        );
    }
}

#[test]
fn a_vocabulary_in_another_order_is_sorted_with_its_rows() {
    let dir = scratch("shuffled");
    let (model, vocab) = small_model(Cell::Lstm, 3);
    let torch = TorchModel::from_model(&model, vocab.clone(), 0, None);
    let sorted_file = dir.join("sorted.safetensors");
    export(&torch, &sorted_file, Format::Safetensors).unwrap();
    // The same model saved with its vocabulary reversed: columns of weight_ih_l0, rows of
    // fc.weight and fc.bias reversed with it (what the notebook's set() order produces).
    let mut rev = torch.clone();
    let (v, h) = (vocab.len(), torch.hidden());
    let w = &mut rev.layers[0].weight_ih;
    for row in w.chunks_mut(v) {
        row.reverse();
    }
    let rows: Vec<Vec<f32>> = rev.fc_weight.chunks(h).rev().map(|r| r.to_vec()).collect();
    rev.fc_weight = rows.concat();
    rev.fc_bias.reverse();
    let bytes = safetensors_file::to_bytes(&rev).unwrap();
    let reversed: Vec<String> = vocab.chars().iter().rev().map(|c| c.to_string()).collect();
    let file = dir.join("reversed.safetensors");
    std::fs::write(
        &file,
        replace_meta(
            &bytes,
            META_VOCAB,
            &serde_json::to_string(&reversed).unwrap(),
        ),
    )
    .unwrap();
    let back = safetensors_file::read(&file, None).unwrap();
    assert_eq!(back.notes.len(), 1, "{:?}", back.notes);
    assert_eq!(
        back.model, torch,
        "sorted back into the model that was saved"
    );
}

#[test]
fn vocab_from_a_text_replaces_missing_metadata_and_must_match_in_size() {
    let dir = scratch("vocab-from");
    let (model, vocab) = small_model(Cell::Rnn, 5);
    let torch = TorchModel::from_model(&model, vocab.clone(), 0, None);
    let bytes = safetensors_file::to_bytes(&torch).unwrap();
    let bare = dir.join("bare.safetensors");
    std::fs::write(&bare, strip_meta(&bytes)).unwrap();
    let e = safetensors_file::read(&bare, None).unwrap_err().to_string();
    assert!(
        e.contains("no vocabulary") && e.contains("--vocab-from"),
        "{e}"
    );
    let back = safetensors_file::read(&bare, Some(&Vocab::from_text(TEXT))).unwrap();
    assert_eq!(back.model.layers, torch.layers);
    let e = safetensors_file::read(&bare, Some(&Vocab::from_text("abc")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("3 distinct characters") && e.contains("rows"),
        "{e}"
    );
}

/// `bytes` (a safetensors file) with metadata `key` set to `value`.
fn replace_meta(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    let (mut header, data) = split(bytes);
    header["__metadata__"][key] = serde_json::Value::String(value.into());
    join(&header, data)
}

/// `bytes` with no `__metadata__` at all (as a plain `safetensors.torch.save_file` writes).
fn strip_meta(bytes: &[u8]) -> Vec<u8> {
    let (mut header, data) = split(bytes);
    header.as_object_mut().unwrap().remove("__metadata__");
    join(&header, data)
}

fn split(bytes: &[u8]) -> (serde_json::Value, &[u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
        &bytes[8 + n..],
    )
}

fn join(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

/// A valid export's bytes, changed by `edit` on its parsed header; the file at `dir/name`.
fn crafted(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> std::path::PathBuf {
    let (model, vocab) = small_model(Cell::Gru, 1);
    let bytes =
        safetensors_file::to_bytes(&TorchModel::from_model(&model, vocab, 0, None)).unwrap();
    let (mut header, data) = split(&bytes);
    edit(&mut header);
    let path = dir.join(name);
    std::fs::write(&path, join(&header, data)).unwrap();
    path
}

/// A well-formed safetensors file of a GRU's tensors, changed by `edit` (keys, shapes, values)
/// before it is written: what a file of another model, or a hand-made one, looks like.
fn rebuilt(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>),
) -> std::path::PathBuf {
    let (model, vocab) = small_model(Cell::Gru, 1);
    let torch = TorchModel::from_model(&model, vocab, 0, None);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = torch
        .tensors()
        .into_iter()
        .map(|(k, s, d)| (k, s, d.to_vec()))
        .collect();
    edit(&mut tensors);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, s, d)| (k, s, d.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = bytes.iter().map(|(k, s, b)| {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
        (k.as_str(), view.unwrap())
    });
    let meta = safetensors_file::metadata(&torch);
    let path = dir.join(name);
    std::fs::write(&path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    path
}

#[test]
fn crafted_files_are_refused_with_one_line() {
    let dir = scratch("hostile");
    let refused = |path: &Path, expect: &str| {
        let e = safetensors_file::read(path, None).unwrap_err().to_string();
        assert!(
            e.contains(expect),
            "{}: expected {expect:?} in {e:?}",
            path.display()
        );
        assert!(e.starts_with(&path.display().to_string()), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    };
    let (model, vocab) = small_model(Cell::Gru, 1);
    let good = safetensors_file::to_bytes(&TorchModel::from_model(&model, vocab, 0, None)).unwrap();

    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &good[..good.len() - 10]).unwrap();
    refused(&truncated, "not a readable safetensors file");

    let mut past = good.clone();
    past[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
    let header_past = dir.join("header-past.safetensors");
    std::fs::write(&header_past, past).unwrap();
    refused(&header_past, "not a readable safetensors file");

    let tiny = dir.join("tiny.safetensors");
    std::fs::write(&tiny, b"\x01\x00").unwrap();
    refused(&tiny, "not a readable safetensors file");

    let overlap = crafted(&dir, "overlap.safetensors", |h| {
        let first = h["fc.bias"]["data_offsets"].clone();
        h["fc.weight"]["data_offsets"] = first;
    });
    refused(&overlap, "not a readable safetensors file");

    let huge = crafted(&dir, "huge.safetensors", |h| {
        h["fc.bias"]["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40]);
    });
    refused(&huge, "not a readable safetensors file");

    let zero = crafted(&dir, "zero-dim.safetensors", |h| {
        // 2^40 times zero elements fits any byte range: the model's checks must catch it.
        let range = h["fc.bias"]["data_offsets"].clone();
        let start = range[0].clone();
        h["fc.bias"]["shape"] = serde_json::json!([1u64 << 40, 0]);
        h["fc.bias"]["data_offsets"] = serde_json::json!([start, start]);
    });
    let e = safetensors_file::read(&zero, None).unwrap_err().to_string();
    assert!(
        e.starts_with(&zero.display().to_string()) && !e.contains('\n'),
        "{e}"
    );

    let missing = rebuilt(&dir, "missing.safetensors", |t| {
        t.retain(|(k, _, _)| k != "lstm.bias_hh_l1");
    });
    refused(&missing, "missing lstm.bias_hh_l1");
    let renamed = crafted(&dir, "renamed.safetensors", |h| {
        let t = h.as_object_mut().unwrap().remove("fc.weight").unwrap();
        h["decoder.weight"] = t;
    });
    refused(&renamed, "unexpected decoder.weight");

    let disagree = crafted(&dir, "disagree.safetensors", |h| {
        // Same bytes, another factorisation: [G·H, H] read as [H, G·H].
        let s = h["lstm.weight_hh_l1"]["shape"].clone();
        h["lstm.weight_hh_l1"]["shape"] = serde_json::json!([s[1], s[0]]);
    });
    refused(
        &disagree,
        "lstm.weight_hh_l1: shape [8, 24], expected [24, 8]",
    );

    let vocab_short = crafted(&dir, "vocab.safetensors", |h| {
        h["__metadata__"][META_VOCAB] = serde_json::json!("[\"a\",\"b\"]");
    });
    refused(&vocab_short, "has 2 characters but fc.weight has");

    let cell = crafted(&dir, "cell.safetensors", |h| {
        h["__metadata__"]["cell"] = serde_json::json!("lstm");
    });
    refused(&cell, "metadata says cell lstm");

    let deep = rebuilt(&dir, "layers.safetensors", |t| {
        let extra = t
            .iter()
            .find(|(k, _, _)| k == "lstm.bias_hh_l1")
            .unwrap()
            .clone();
        t.push(("lstm.bias_hh_l100".into(), extra.1, extra.2));
    });
    refused(&deep, "more than 64 layers");

    let pickle = dir.join("model.pt");
    std::fs::write(&pickle, b"PK\x03\x04").unwrap();
    refused(&pickle, "save_file(torch.load('");

    let zip = dir.join("model.safetensors.zip");
    std::fs::write(&zip, b"PK\x03\x04rest").unwrap();
    refused(&zip, "torch.save");
}

#[test]
fn onnx_export_is_a_model_proto_with_the_vocabulary() {
    // The graph's numbers are checked against onnxruntime in python.rs; here, that the file is
    // written atomically and carries the metadata a user needs to decode its output.
    let dir = scratch("onnx");
    for cell in Cell::ALL {
        let (model, vocab) = small_model(cell, 2);
        let path = dir.join(format!("{}.onnx", cell.name()));
        export(
            &TorchModel::from_model(&model, vocab.clone(), 0, None),
            &path,
            Format::Onnx,
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let vocab_json: Vec<String> = vocab.chars().iter().map(|c| c.to_string()).collect();
        let needle = serde_json::to_string(&vocab_json).unwrap();
        assert!(bytes.windows(needle.len()).any(|w| w == needle.as_bytes()));
        let op = match cell {
            Cell::Lstm => "LSTM",
            Cell::Gru => "GRU",
            Cell::Rnn => "RNN",
        };
        assert!(bytes.windows(op.len()).any(|w| w == op.as_bytes()));
        assert!(!path.with_extension("tmp").exists());
    }
}
