"""Write text with a karnna model in onnxruntime, the state carried from one call to the next.

    karnna export --run artifacts/anna --out anna.onnx
    python3 examples/onnx_sample.py anna.onnx --prime "Anna" --len 300

Needs numpy and onnxruntime (pip install onnxruntime). The graph takes `ids` [batch, seq]
(int64) and the state `h0` (and `c0` for an LSTM), each [layers, batch, hidden], and returns
`logits` [batch, seq, vocab] and the state after the last character (`hn`, `cn`). The
vocabulary and sizes are in the model's metadata.
"""
import argparse
import json

import numpy as np
import onnxruntime as ort


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a karnna export (.onnx)")
    p.add_argument("--prime", default="The ")
    p.add_argument("--len", type=int, default=300)
    p.add_argument("--top-n", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    sess = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    vocab = json.loads(meta["vocab"])
    index = {c: i for i, c in enumerate(vocab)}
    layers, hidden = int(meta["num_layers"]), int(meta["hidden_size"])
    names = [i.name for i in sess.get_inputs()]
    state = {n: np.zeros((layers, 1, hidden), np.float32) for n in names if n != "ids"}
    unknown = sorted(set(a.prime) - set(index))
    if unknown:
        raise SystemExit(f"prime has characters the model does not know: {unknown}")

    rng = np.random.default_rng(a.seed)
    ids = np.array([[index[c] for c in a.prime]], dtype=np.int64)
    out = [a.prime]
    for _ in range(a.len):
        logits, *next_state = sess.run(None, {"ids": ids, **state})
        state = dict(zip([n for n in names if n != "ids"], next_state))
        last = logits[0, -1].astype(np.float64)
        top = np.argsort(last)[::-1][: a.top_n]  # karnna's top-n: the n likeliest, renormalised
        p_top = np.exp(last[top] - last[top].max())
        pick = int(rng.choice(top, p=p_top / p_top.sum()))
        out.append(vocab[pick])
        ids = np.array([[pick]], dtype=np.int64)
    print("".join(out))


if __name__ == "__main__":
    main()
