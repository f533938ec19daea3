"""The other side of karnna's exports, for crates/exchange/tests/python.rs.

A numpy forward pass written in PyTorch's conventions (nn.LSTM / nn.GRU / nn.RNN + nn.Linear,
gates i,f,g,o and r,z,n), a small safetensors reader and writer (numpy only), and onnxruntime.
Each subcommand exits 0 when karnna's numbers agree and 1 (with the largest difference) when not.

  reference.py safetensors MODEL.safetensors CASE.json   numpy forward vs karnna, within 1e-5
  reference.py onnx MODEL.onnx CASE.json                 onnxruntime vs karnna, two calls, 1e-4
  reference.py write OUT.safetensors CELL SEED VOCAB_MODE PRIME N
        a random model as PyTorch's state_dict would save it; prints its argmax text
  reference.py torch MODEL.safetensors CASE.json         PyTorch itself (examples/pytorch_load.py,
                                                         strict=True) vs karnna, within 1e-5
  reference.py torch-train OUT.safetensors TEXT PRIME N  trains a small nn.LSTM in PyTorch, saves
                                                         it with save_file, prints its argmax text
"""
import json
import os
import struct
import sys

import numpy as np


def read_safetensors(path):
    """Tensors (float64 numpy arrays) and the metadata of a safetensors file."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n :]
    tensors = {}
    for key, info in header.items():
        assert info["dtype"] == "F32", (key, info["dtype"])
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"])
        tensors[key] = arr.astype(np.float64)
    return tensors, meta


def write_safetensors(path, tensors, meta):
    """A safetensors file of float32 `tensors` (a dict) with string metadata `meta`."""
    header, blobs, offset = {}, [], 0
    for key in sorted(tensors):
        b = np.ascontiguousarray(tensors[key], dtype="<f4").tobytes()
        header[key] = {"dtype": "F32", "shape": list(tensors[key].shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def forward(t, cell, ids, h0=None, c0=None):
    """Logits [batch, seq, V] and the final (h, c), each [layers, batch, H], in float64."""
    layers = sum(1 for k in t if k.startswith("lstm.weight_ih_l"))
    V, H = t["fc.weight"].shape
    ids = np.asarray(ids)
    batch, seq = ids.shape
    x = np.eye(V)[ids]  # one-hot [batch, seq, V]
    h0 = np.zeros((layers, batch, H)) if h0 is None else h0
    c0 = np.zeros((layers, batch, H)) if c0 is None else c0
    hs, cs = [], []
    for k in range(layers):
        w_ih, w_hh = t[f"lstm.weight_ih_l{k}"], t[f"lstm.weight_hh_l{k}"]
        b_ih, b_hh = t[f"lstm.bias_ih_l{k}"], t[f"lstm.bias_hh_l{k}"]
        h, c = h0[k], c0[k]
        out = np.zeros((batch, seq, H))
        for s in range(seq):
            gi = x[:, s] @ w_ih.T + b_ih
            gh = h @ w_hh.T + b_hh
            if cell == "lstm":
                i, f, g, o = np.split(gi + gh, 4, axis=1)
                c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
                h = sigmoid(o) * np.tanh(c)
            elif cell == "gru":
                ir, iz, i_n = np.split(gi, 3, axis=1)
                hr, hz, hn = np.split(gh, 3, axis=1)
                r, z = sigmoid(ir + hr), sigmoid(iz + hz)
                n = np.tanh(i_n + r * hn)
                h = (1 - z) * n + z * h
            else:
                h = np.tanh(gi + gh)
            out[:, s] = h
        hs.append(h)
        cs.append(c)
        x = out
    logits = x @ t["fc.weight"].T + t["fc.bias"]
    return logits, np.stack(hs), np.stack(cs)


def compare(name, got, want, tol):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64).reshape(np.shape(got))
    diff = float(np.max(np.abs(got - want)))
    print(f"{name}: max |difference| {diff:.3g} (tolerance {tol:g})")
    return diff <= tol


def check_safetensors(model, case):
    t, meta = read_safetensors(model)
    c = json.load(open(case))
    logits, hn, cn = forward(t, meta["cell"], c["ids"])
    ok = compare("logits", logits, c["logits"], 1e-5)
    ok &= compare("hn", hn, c["hn"], 1e-5)
    if meta["cell"] == "lstm":
        ok &= compare("cn", cn, c["cn"], 1e-5)
    return ok


def check_onnx(model, case):
    import onnxruntime as ort

    c = json.load(open(case))
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    names = [i.name for i in sess.get_inputs()]
    layers, H = int(meta["num_layers"]), int(meta["hidden_size"])
    ids = np.asarray(c["ids"], dtype=np.int64)
    batch, seq = ids.shape
    state = {n: np.zeros((layers, batch, H), np.float32) for n in names if n != "ids"}
    half = seq // 2
    parts = []
    for part in (ids[:, :half], ids[:, half:]):  # the state carried from one call to the next
        outs = sess.run(None, {"ids": part, **state})
        parts.append(outs[0])
        state = {"h0": outs[1]}
        if "c0" in names:
            state["c0"] = outs[2]
    ok = compare("logits", np.concatenate(parts, axis=1), c["logits"], 1e-4)
    ok &= compare("hn", state["h0"], c["hn"], 1e-4)
    if "c0" in names:
        ok &= compare("cn", state["c0"], c["cn"], 1e-4)
    vocab = json.loads(meta["vocab"])
    ok &= len(vocab) == c["vocab_size"]
    return ok


def write_random(out, cell, seed, vocab_mode, prime, n):
    """A model as PyTorch's state_dict holds it, weights from U(-1, 1); prints its argmax text."""
    rng = np.random.default_rng(int(seed))
    text = "It was the best of times, it was the worst of times.\n"
    chars = sorted(set(text))
    if vocab_mode == "shuffled":  # the notebook's tuple(set(text)) order
        rng.shuffle(chars)
    V, H, L = len(chars), 8, 2
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    t = {}
    for k in range(L):
        In = V if k == 0 else H
        t[f"lstm.weight_ih_l{k}"] = rng.uniform(-1, 1, (G * H, In))
        t[f"lstm.weight_hh_l{k}"] = rng.uniform(-1, 1, (G * H, H))
        t[f"lstm.bias_ih_l{k}"] = rng.uniform(-1, 1, (G * H,))
        t[f"lstm.bias_hh_l{k}"] = rng.uniform(-1, 1, (G * H,))
    t["fc.weight"] = rng.uniform(-1, 1, (V, H))
    t["fc.bias"] = rng.uniform(-1, 1, (V,))
    t = {k: v.astype(np.float32) for k, v in t.items()}
    meta = {"vocab": json.dumps(chars), "cell": cell} if vocab_mode != "none" else {}
    write_safetensors(out, t, meta)
    t64 = {k: v.astype(np.float64) for k, v in t.items()}
    index = {ch: i for i, ch in enumerate(chars)}
    ids = [[index[ch] for ch in prime]]
    logits, h, c = forward(t64, cell, ids)
    result = []
    for _ in range(int(n)):
        best = int(np.argmax(logits[0, -1]))
        result.append(chars[best])
        logits, h, c = forward(t64, cell, [[best]], h, c)
    sys.stdout.write("".join(result))
    return True


def examples():
    """examples/pytorch_load.py's module."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../../examples"))
    import pytorch_load

    return pytorch_load


def check_torch(model, case):
    import torch

    net, vocab = examples().load(model)  # load_state_dict(strict=True)
    c = json.load(open(case))
    with torch.no_grad():
        logits, state = net(torch.tensor(c["ids"]))
    h = state[0] if isinstance(state, tuple) else state
    ok = compare("logits (PyTorch)", logits.numpy(), c["logits"], 1e-5)
    ok &= compare("hn (PyTorch)", h.numpy(), c["hn"], 1e-5)
    return ok and len(vocab) == c["vocab_size"]


def torch_train(out, text_path, prime, n):
    """A 2x32 nn.LSTM trained 40 Adam steps on the text, saved as a plain state_dict (no
    metadata: the importer takes the vocabulary from the text); prints its argmax text."""
    import torch
    from safetensors.torch import save_file

    text = open(text_path, encoding="utf-8").read()
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text])
    torch.manual_seed(0)
    net = examples().CharRNN("lstm", len(chars), 32, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    seq, batch = 32, 8
    for step in range(40):
        starts = torch.randint(0, len(data) - seq - 1, (batch,))
        x = torch.stack([data[s : s + seq] for s in starts])
        y = torch.stack([data[s + 1 : s + seq + 1] for s in starts])
        logits, _ = net(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(chars)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_file(net.state_dict(), out)
    net.eval()
    result = []
    with torch.no_grad():
        logits, state = net(torch.tensor([[index[c] for c in prime]]))
        for _ in range(int(n)):
            best = int(torch.argmax(logits[0, -1]))
            result.append(chars[best])
            logits, state = net(torch.tensor([[best]]), state)
    sys.stdout.write("".join(result))
    return True


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    commands = {
        "safetensors": check_safetensors,
        "onnx": check_onnx,
        "write": write_random,
        "torch": check_torch,
        "torch-train": torch_train,
    }
    ok = commands[cmd](*args)
    sys.exit(0 if ok else 1)
