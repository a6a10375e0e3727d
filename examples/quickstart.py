"""A small worked example of glocal's neighborhood attention (run by `make demo`).

It builds a 2-D problem, runs neighborhood attention with several options,
checks two identities of the semantics, and trains a tiny layer for a few steps.
"""

import torch

import glocal
import glocal.nn

torch.manual_seed(0)
B, X, Y, H, D = 1, 24, 24, 4, 32
q, k, v = (torch.randn(B, X, Y, H, D) for _ in range(3))

out, lse = glocal.na2d(q, k, v, kernel_size=7, return_lse=True)
print(f"na2d K=7                 out {tuple(out.shape)}  lse {tuple(lse.shape)}")
for name, args in [("dilated d=2", dict(dilation=2)), ("strided s=3", dict(stride=3)),
                   ("causal on X", dict(is_causal=(True, False)))]:
    o = glocal.na2d(q, k, v, kernel_size=7, **args)
    print(f"na2d K=7 {name:15s} mean |out - plain| = {(o - out).abs().mean():.4f}")

# K = L is full self-attention over the flattened grid.
full = glocal.na2d(q, k, v, kernel_size=(X, Y)).flatten(1, 2)
dense = glocal.attention(q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2))
print(f"K = L equals full attention: max |diff| = {(full - dense).abs().max():.2e}")

# Extra tokens are one softmax with the neighborhood: merging two results by lse gives the same.
extra_k, extra_v = torch.randn(B, 3, H, D), torch.randn(B, 3, H, D)
joint = glocal.na2d(q, k, v, kernel_size=7, additional_keys=extra_k, additional_values=extra_v)
g_out, g_lse = glocal.attention(q.flatten(1, 2), extra_k, extra_v, return_lse=True)
merged, _ = glocal.merge_attentions([out, g_out.unflatten(1, (X, Y))], [lse, g_lse.unflatten(1, (X, Y))])
print(f"extra keys equal an lse merge: max |diff| = {(joint - merged).abs().max():.2e}")

layer = glocal.nn.NeighborhoodAttention2D(dim=64, num_heads=4, kernel_size=5)
opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
x = torch.randn(2, 16, 16, 64)
target = x.roll(1, dims=1)  # learn to look one row up: inside every 5x5 window
for step in range(30):
    loss = (layer(x) - target).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 10 == 0 or step == 29:
        print(f"train step {step:2d}: loss {loss.item():.4f}")
