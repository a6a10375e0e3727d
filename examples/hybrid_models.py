"""Hybrid models from pattern strings, trained for a few steps on the CPU.

Two models, each a few lines of glocal:

- a ModernBERT-like encoder (``HybridEncoder.modernbert``: global attention every third layer, a band of
  keys otherwise) learning masked-token prediction on random sequences with a repeated motif;
- a hybrid decoder (``HybridDecoder`` with the pattern "LLRG": two sliding-window layers, a RAT layer and a
  global layer) learning next-token prediction of a copy task, where the second half repeats the first, so
  the last tokens need attention that reaches back across the whole sequence.

The trained decoder then continues a copy prompt greedily, token by token with its decoding caches
(``new_cache`` / ``step``: each layer keeps only what it reads), and the same continuation is computed by
running the whole forward again for every new token: the two agree.

Run: ``python examples/hybrid_models.py`` (``--steps``, ``--tokens``, ``--dim``). The tests run ``main`` at a
tiny size and check that both losses fall and that the two continuations are equal.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import glocal


class TokenModel(nn.Module):
    """Embeddings, a glocal schedule, a tied output head: ids [B, T] -> logits [B, T, vocab]."""

    def __init__(self, vocab: int, body: nn.Module, dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        nn.init.normal_(self.embed.weight, std=dim ** -0.5)  # logits of order 1 through the tied head
        self.body = body

    def forward(self, ids):
        return self.body(self.embed(ids)) @ self.embed.weight.T


def copy_batch(gen, batch: int, tokens: int, vocab: int):
    """Sequences whose second half repeats the first: next-token targets are predictable after the middle."""
    half = torch.randint(2, vocab, (batch, tokens // 2), generator=gen)
    return torch.cat([half, half], 1)


def train(model, batches, loss_of, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        loss = loss_of(model, batches(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def continue_with_caches(model: TokenModel, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy continuation of ``prompt [B, T]`` by ``new_tokens``: a prefill, then one ``step`` per token."""
    cache = model.body.new_cache(prompt.shape[0])
    hidden = model.body(model.embed(prompt), cache=cache)[:, -1]
    ids = [prompt]
    for _ in range(new_tokens):
        ids.append((hidden @ model.embed.weight.T).argmax(-1, keepdim=True))
        hidden = model.body.step(model.embed(ids[-1][:, 0]), cache)
    return torch.cat(ids, 1)


@torch.no_grad()
def continue_by_forward(model: TokenModel, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The same continuation, the slow way: the whole forward again for every new token."""
    ids = prompt
    for _ in range(new_tokens):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


def main(steps: int = 60, tokens: int = 128, dim: int = 64, vocab: int = 32, seed: int = 0, verbose: bool = True):
    """Train both models; returns {"encoder": losses, "decoder": losses, "continuations": (cached, by forward)}."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    mask_id = 1

    encoder = TokenModel(vocab, glocal.nn.HybridEncoder.modernbert(dim=dim, num_heads=4, depth=3, local_window=16),
                         dim)

    def masked_loss(model, ids):
        hidden = torch.rand(ids.shape, generator=gen) < 0.15
        logits = model(ids.masked_fill(hidden, mask_id))
        return nn.functional.cross_entropy(logits[hidden], ids[hidden])

    decoder = TokenModel(vocab, glocal.nn.HybridDecoder(dim, 4, depth=4, pattern="LLRG",
                                                        settings={"L": {"window": 16}, "R": {"chunk_size": 8}}), dim)

    def next_token_loss(model, ids):
        logits = model(ids[:, :-1])
        return nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())

    batches = {step: copy_batch(gen, 8, tokens, vocab) for step in range(steps)}
    losses = {"encoder": train(encoder, batches.__getitem__, masked_loss, steps),
              "decoder": train(decoder, batches.__getitem__, next_token_loss, steps)}
    decoder.eval()
    prompt = copy_batch(gen, 2, tokens, vocab)[:, :tokens // 2 + 4]
    losses["continuations"] = (continue_with_caches(decoder, prompt, tokens // 2 - 4),
                               continue_by_forward(decoder, prompt, tokens // 2 - 4))
    if verbose:
        cached, again = losses["continuations"]
        print(f"decoder continuation: {'equal' if torch.equal(cached, again) else 'DIFFERENT'} by step() and by "
              f"re-running the forward ({cached.shape[1] - prompt.shape[1]} new tokens)")
        for name, model in (("encoder", encoder), ("decoder", decoder)):
            first, last = losses[name][:5], losses[name][-5:]
            print(f"{name} ({model.body.kinds}): loss {sum(first) / len(first):.3f} -> {sum(last) / len(last):.3f} "
                  f"over {steps} steps")
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    main(args.steps, args.tokens, args.dim)
