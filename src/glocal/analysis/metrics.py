"""Per-head attention statistics, accumulated block by block (docs/analysis.md defines each).

Shapes used throughout:
    probs:    [B, H, Q, K]   attention probabilities of a block of Q queries over all K keys
    q_rank:   [B, Q]   index of each query among the valid tokens (-1 = padding / not counted)
    k_rank:   [B, K]   index of each key among the valid keys (-1 = padding)
    q_coord:  [B, Q, n]  spatial coordinate of each query (rank for text, (row, col) for a patch
                         grid); NaN = not on the grid (class/register/extra tokens)
    k_coord:  [B, K, n]
    extent:   [B, n]   grid length per axis (valid length for text) for window placement

Every statistic is a sum over queries kept in float64, so summing blocks in any
order gives the same totals as one pass over the full map: that is what lets
``capture(model, streaming=True)`` avoid materialising T x T maps.

Example:
    >>> import torch
    >>> from glocal.analysis.metrics import LayerStats, accumulate, positions_1d
    >>> probs = torch.softmax(torch.randn(1, 2, 6, 6), -1)
    >>> valid = torch.ones(1, 6, dtype=torch.bool)
    >>> pos = positions_1d(valid)
    >>> st = LayerStats("layer0", heads=2, window=3, waad_clip=2)
    >>> accumulate(st, probs, pos, pos, causal=False)
    >>> st.summary()["locality"].shape
    torch.Size([2])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Token positions belong to the attention-call protocol, the window rule to masks; both are
# re-exported here under their old names.
from ..hooks import Positions, positions_1d, positions_grid  # noqa: F401
from ..masks import in_window


@dataclass
class LayerStats:
    """Running sums for one attention layer; ``summary()`` turns them into per-head metrics."""

    name: str
    heads: int
    window: int
    waad_clip: int
    grid: tuple | None = None
    n_queries: torch.Tensor = None  # [H] valid queries counted
    n_grid_queries: torch.Tensor = None  # [H] valid on-grid queries
    distance: torch.Tensor = None  # [H] sum over on-grid queries of sum_k p * dist
    waad: torch.Tensor = None  # [H] sum over on-grid queries of sum_k p * min(dist, W)
    entropy: torch.Tensor = None  # [H] sum over queries of -sum_k p log p
    local: torch.Tensor = None  # [H] sum over on-grid queries of mass in the window
    local_sinks: torch.Tensor = None  # [H] same, window plus first and last valid key
    first: torch.Tensor = None  # [H] sum over queries of mass on the first valid key
    last: torch.Tensor = None  # [H] sum over queries of mass on the last valid key
    key_mass: torch.Tensor = None  # [H, R] sum over queries of mass on the key of rank r
    key_count: torch.Tensor = None  # [R] queries that could see rank r
    future_mass: torch.Tensor = None  # [H, R] mass on rank r from queries of higher rank
    future_count: torch.Tensor = None  # [R] queries of higher rank than r
    maps: list = field(default_factory=list)  # exact probability maps kept for plots (first call only)

    def __post_init__(self):
        z = torch.zeros(self.heads, dtype=torch.float64)
        for name in ("n_queries", "n_grid_queries", "distance", "waad", "entropy", "local", "local_sinks",
                     "first", "last"):
            setattr(self, name, z.clone())
        self.key_mass = torch.zeros(self.heads, 0, dtype=torch.float64)
        self.future_mass = torch.zeros(self.heads, 0, dtype=torch.float64)
        self.key_count = torch.zeros(0, dtype=torch.float64)
        self.future_count = torch.zeros(0, dtype=torch.float64)

    def _grow(self, ranks: int) -> None:
        have = self.key_count.shape[0]
        if ranks > have:
            pad = ranks - have
            self.key_mass = torch.cat([self.key_mass, torch.zeros(self.heads, pad, dtype=torch.float64)], 1)
            self.future_mass = torch.cat([self.future_mass, torch.zeros(self.heads, pad, dtype=torch.float64)], 1)
            self.key_count = torch.cat([self.key_count, torch.zeros(pad, dtype=torch.float64)])
            self.future_count = torch.cat([self.future_count, torch.zeros(pad, dtype=torch.float64)])

    def add_counts(self, q_pos: Positions, k_pos: Positions) -> None:
        """Count, once per call, which queries could see each key rank (denominators of sink/FAI scores)."""
        k_rank, q_rank = k_pos.rank.cpu(), q_pos.rank.cpu()
        self._grow(int(k_rank.max().item()) + 1 if k_rank.numel() else 0)
        ranks = self.key_count.shape[0]
        r = torch.arange(ranks)
        for b in range(k_rank.shape[0]):
            present = torch.zeros(ranks, dtype=torch.bool)
            present[k_rank[b][k_rank[b] >= 0]] = True
            qr = torch.sort(q_rank[b][q_rank[b] >= 0]).values
            self.key_count += present.double() * qr.numel()
            # Queries of higher rank than r, without a [R, Q] comparison (R, Q can be 16k each).
            later = (qr.numel() - torch.searchsorted(qr, r, right=True)).double()
            self.future_count += present.double() * later

    def summary(self) -> dict:
        """Per-head metrics (tensors [H]) and per-rank scores ([H, R])."""
        nq = self.n_queries.clamp_min(1)
        ng = self.n_grid_queries.clamp_min(1)
        sink = self.key_mass / self.key_count.clamp_min(1)
        fai = self.future_mass / self.future_count.clamp_min(1)
        return {
            "mean_distance": self.distance / ng,
            "waad": self.waad / ng,
            "entropy": self.entropy / nq,
            "locality": self.local / ng,
            "locality_with_sinks": self.local_sinks / ng,
            "first_token_mass": self.first / nq,
            "last_token_mass": self.last / nq,
            "sink_scores": sink,
            "future_attention_influence": fai,
        }


def accumulate(stats: LayerStats, probs: torch.Tensor, q_pos: Positions, k_pos: Positions, causal: bool,
               count: bool = True) -> None:
    """Add one block of queries to ``stats``.

    probs: [B, H, Q, K] (rows of padded queries are ignored; padded keys must have probability 0, as
    they do when the mask excluded them); q_pos: positions of the Q queries of this block; k_pos:
    positions of all K keys. ``count`` adds the rank denominators: pass True once per call (with q_pos
    covering all of the call's queries) and False for the other blocks of a streamed call.
    Sums over keys run in the probabilities' dtype, one row at a time; sums over rows in float64.
    """
    f64 = torch.float64
    device = probs.device
    batch = probs.shape[0]
    q_rank, k_rank = q_pos.rank.to(device), k_pos.rank.to(device)
    q_ok = q_rank >= 0  # [B, Q]
    qc, kc = q_pos.coord.to(device), k_pos.coord.to(device)
    on_grid = q_ok & ~torch.isnan(qc).any(-1)  # [B, Q]
    p = probs.masked_fill(~q_ok[:, None, :, None], 0.0)
    dist = torch.nan_to_num(qc[:, :, None, :] - kc[:, None, :, :], nan=0.0)
    dist = (dist[..., 0].abs() if dist.shape[-1] == 1 else dist.pow(2).sum(-1).sqrt()).to(p.dtype)[:, None]
    window = in_window(qc, kc, k_pos.extent.to(device), stats.window, causal)[:, None]  # [B, 1, Q, K]
    # First and last real key of each sequence, and whether each query's window already holds them.
    length = k_pos.length.to(device)
    first_idx = (k_rank == 0).long().argmax(-1)  # [B]
    last_idx = (k_rank == (length - 1)[:, None]).long().argmax(-1)
    expand = lambda idx: idx[:, None, None, None].expand(batch, p.shape[1], p.shape[2], 1)  # noqa: E731
    first_row = p.gather(-1, expand(first_idx))[..., 0]  # [B, H, Q]
    last_row = p.gather(-1, expand(last_idx))[..., 0]
    win_first = window.expand(batch, 1, -1, -1).gather(-1, expand(first_idx)[:, :1])[..., 0]
    win_last = window.expand(batch, 1, -1, -1).gather(-1, expand(last_idx)[:, :1])[..., 0]
    rows = {
        "distance": (p * dist).sum(-1),
        "waad": (p * dist.clamp_max(stats.waad_clip)).sum(-1),
        "entropy": torch.special.entr(p).sum(-1),
        "local": (p * window).sum(-1),
    }
    del dist
    extra = first_row * ~win_first + last_row * (~win_last & (last_idx != first_idx)[:, None, None])
    rows["local_sinks"] = rows["local"] + extra
    grid_w, all_w = on_grid[:, None, :].to(f64), q_ok[:, None, :].to(f64)
    heads = stats.heads
    for name, row in rows.items():
        weight = all_w if name == "entropy" else grid_w
        setattr(stats, name, getattr(stats, name) + (row.to(f64) * weight).sum((0, 2)).cpu())
    stats.first += (first_row.to(f64) * all_w).sum((0, 2)).cpu()
    stats.last += (last_row.to(f64) * all_w).sum((0, 2)).cpu()
    stats.n_queries += q_ok.sum().double().cpu().expand(heads)
    stats.n_grid_queries += on_grid.sum().double().cpu().expand(heads)
    if count:
        stats.add_counts(q_pos, k_pos)
    stats._grow(int(k_rank.max().item()) + 1 if k_rank.numel() else 0)
    index = k_rank.clamp_min(0)  # padded keys carry zero mass
    per_key = p.sum(2, dtype=f64)  # [B, H, K]
    later = q_rank[:, None, :, None] > k_rank[:, None, None, :]
    per_key_future = torch.where(later, p, 0.0).sum(2, dtype=f64)
    mass = torch.zeros(heads, stats.key_count.shape[0], dtype=f64, device=device)
    future = torch.zeros_like(mass)
    for b in range(batch):
        keep = k_rank[b] >= 0
        mass.index_add_(1, index[b][keep], per_key[b][:, keep])
        future.index_add_(1, index[b][keep], per_key_future[b][:, keep])
    stats.key_mass += mass.cpu()
    stats.future_mass += future.cpu()
