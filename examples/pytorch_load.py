"""Load a karnna model into PyTorch and write text with it.

    karnna export --run artifacts/anna --out anna.safetensors
    python3 examples/pytorch_load.py anna.safetensors --prime "Anna" --len 300

Needs torch and safetensors (pip install torch safetensors). The export holds PyTorch's own
keys (nn.LSTM, nn.GRU or nn.RNN named `lstm`, nn.Linear named `fc`), so `load_state_dict` takes
it with strict=True; the vocabulary, the cell and the sizes are in the file's metadata.
"""
import argparse
import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn


class CharRNN(nn.Module):
    """The notebook's model: one-hot characters, stacked recurrent layers, linear to logits."""

    def __init__(self, cell, vocab_size, hidden_size, num_layers):
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.vocab_size = vocab_size
        self.lstm = rnn(vocab_size, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, vocab_size)

    def forward(self, ids, state=None):
        x = nn.functional.one_hot(ids, self.vocab_size).float()
        out, state = self.lstm(x, state)
        return self.fc(out), state


def load(path):
    """The model (in eval mode) and its vocabulary, in id order."""
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    vocab = json.loads(meta["vocab"])
    model = CharRNN(meta["cell"], len(vocab), int(meta["hidden_size"]), int(meta["num_layers"]))
    model.load_state_dict(load_file(path), strict=True)
    return model.eval(), vocab


@torch.no_grad()
def sample(model, vocab, prime, length, top_n, seed):
    """The prime, then `length` characters, each drawn from the `top_n` likeliest (as karnna's
    sampler does; top_n = 1 is the argmax)."""
    index = {c: i for i, c in enumerate(vocab)}
    unknown = sorted(set(prime) - set(index))
    if unknown:
        raise SystemExit(f"prime has characters the model does not know: {unknown}")
    gen = torch.Generator().manual_seed(seed)
    logits, state = model(torch.tensor([[index[c] for c in prime]]))
    out = []
    for _ in range(length):
        probs = torch.softmax(logits[0, -1], dim=-1)
        top = torch.topk(probs, min(top_n, len(vocab)))
        pick = top.indices[torch.multinomial(top.values / top.values.sum(), 1, generator=gen)]
        out.append(vocab[int(pick)])
        logits, state = model(pick.view(1, 1), state)
    return prime + "".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a karnna export (.safetensors)")
    p.add_argument("--prime", default="The ")
    p.add_argument("--len", type=int, default=300)
    p.add_argument("--top-n", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    model, vocab = load(a.model)
    print(sample(model, vocab, a.prime, a.len, a.top_n, a.seed))


if __name__ == "__main__":
    main()
