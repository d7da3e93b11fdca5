"""Token reduction (issue 13): ToMe inside the native tower, top-k pruning (and PruMerge-style merging) after it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hf_parity import perturb_
from torch import nn

from vtlab.models.layers import MAPHead
from vtlab.models.reduction.prune import AttentionProbe, probe_attention, prune_tokens, token_scores
from vtlab.models.reduction.tome import (
    ToMeTower,
    bipartite_soft_matching,
    match,
    merge_wavg,
    proportional_attention,
    tokens_after,
    tome_block_forward,
    tome_forward,
)
from vtlab.models.towers import VisionTower

DEPTH, N = 4, 64


def tiny_tower() -> VisionTower:
    torch.manual_seed(0)
    tower = VisionTower(
        image_size=32, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=DEPTH, num_heads=4
    )
    return perturb_(tower).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------- ToMe
def test_r0_is_bit_identical_to_the_plain_tower(pixels):
    tower = tiny_tower()
    with torch.no_grad():
        tokens, size = tome_forward(tower, pixels, 0)
        plain = tower(pixels)
    assert torch.equal(tokens, plain)
    assert torch.equal(size, torch.ones(2, N, 1))


@pytest.mark.parametrize(("r", "expected"), [(1, 60), (4, 48), (8, 32), (20, 6), (40, 4)])
def test_token_count_after_the_blocks(pixels, r, expected):
    """N - L*r while every block can merge r; a block never merges more than half its tokens (r <= t // 2)."""
    with torch.no_grad():
        tokens, size = ToMeTower(tiny_tower(), r)(pixels)
    assert tokens.shape == (2, expected, 32) and size.shape == (2, expected, 1)
    assert tokens_after(N, r, DEPTH) == expected
    if r <= (N - (DEPTH - 1) * r) // 2:  # the last block still holds 2r tokens: no cap anywhere
        assert expected == N - DEPTH * r
    print(f"[tome] r={r}: {N} -> {expected} tokens after {DEPTH} blocks")


def test_per_block_schedule(pixels):
    with torch.no_grad():
        tokens, _ = tome_forward(tiny_tower(), pixels, [16, 0, 8, 4])
    assert tokens.shape[1] == N - 28 == tokens_after(N, [16, 0, 8, 4], DEPTH)


@pytest.mark.parametrize("r", [4, 13, 40])
def test_sizes_sum_to_the_patch_count_after_every_block(pixels, r):
    tower = tiny_tower()
    with torch.no_grad():
        x, size = tower.embed(pixels), None
        for i, blk in enumerate(tower.blocks):
            x, size = tome_block_forward(blk, x, size, r)
            assert size.shape == (*x.shape[:2], 1)
            assert torch.equal(size.sum(dim=1), torch.full((2, 1), float(N))), f"block {i}"
            assert (size >= 1).all()


def test_tome_never_merges_two_tokens_of_the_same_side():
    """A = even, B = odd positions. Every merge is A -> B; tracking sources through one merge, each output token
    holds at most one B token, and a token holding several inputs holds exactly one B token."""
    torch.manual_seed(0)
    for t, r in [(64, 20), (63, 31), (10, 5), (64, 1)]:
        metric = torch.randn(3, t, 8)
        m = match(metric, r)
        assert m.r == min(r, t // 2)
        a_pos, b_pos = 2 * m.src_idx[..., 0], 2 * m.dst_idx[..., 0] + 1
        assert (a_pos % 2 == 0).all() and (b_pos % 2 == 1).all() and (b_pos < t).all()
        src = m.merge(torch.eye(t).expand(3, t, t).contiguous(), mode="sum")  # (3, t - r, t) source sets
        assert src.shape == (3, t - m.r, t) and torch.equal(src.sum(dim=1), torch.ones(3, t))
        b_count = src[..., 1::2].sum(-1)
        assert (b_count <= 1).all()
        assert (b_count[src.sum(-1) > 1] == 1).all()
        # each merged A token joins its most similar B token (cosine similarity)
        mn = F.normalize(metric, dim=-1)
        best = (mn[:, ::2] @ mn[:, 1::2].transpose(1, 2)).argmax(-1)
        assert torch.equal(m.dst_idx[..., 0], best.gather(1, m.src_idx[..., 0]))


def test_bipartite_soft_matching_merge_and_unmerge():
    """unmerge(merge(x)) gives every input position the value of the token it was merged into."""
    torch.manual_seed(0)
    metric, x = torch.randn(2, 21, 8), torch.randn(2, 21, 5)
    merge, unmerge = bipartite_soft_matching(metric, 6)
    merged = merge(x)
    assert merged.shape == (2, 15, 5)
    restored = unmerge(merged)
    assert restored.shape == x.shape
    m = match(metric, 6)
    n_unm = m.unm_idx.shape[1]
    for b in range(2):
        for j, a in enumerate(m.unm_idx[b, :, 0].tolist()):  # kept A tokens come back unchanged
            assert torch.equal(restored[b, 2 * a], x[b, 2 * a]) and torch.equal(merged[b, j], x[b, 2 * a])
        for a, dst in zip(m.src_idx[b, :, 0].tolist(), m.dst_idx[b, :, 0].tolist(), strict=True):
            assert torch.equal(restored[b, 2 * a], merged[b, n_unm + dst])  # merged A -> its B token's value
        assert torch.equal(restored[b, 1::2], merged[b, n_unm:])
    ident, _ = bipartite_soft_matching(metric[:, :1], 4)  # one token: nothing to merge
    assert ident(x) is x


def test_merge_wavg_is_size_weighted():
    x = torch.tensor([[[1.0], [10.0], [3.0], [20.0]]])  # A = {1, 3}, B = {10, 20}
    size = torch.tensor([[[1.0], [1.0], [3.0], [1.0]]])
    metric = torch.tensor([[[0.0, -1.0], [0.0, 1.0], [1.0, 0.1], [1.0, 0.0]]])  # token 2 ~ token 3
    m = match(metric, 1)
    out, new_size = merge_wavg(m.merge, x, size)
    assert torch.allclose(out, torch.tensor([[[1.0], [10.0], [(3 * 3 + 20) / 4]]]))
    assert torch.equal(new_size, torch.tensor([[[1.0], [1.0], [4.0]]]))


def test_proportional_attention_with_unit_sizes_is_plain_attention(pixels):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 17, 8).unbind(0)
    plain = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(proportional_attention(q, k, v, torch.ones(2, 17, 1)), plain, atol=1e-6)
    assert torch.equal(proportional_attention(q, k, v, None), plain)
    tower = tiny_tower()
    with torch.no_grad():
        x = tower.embed(pixels)
        out, size = tome_block_forward(tower.blocks[0], x, torch.ones(2, N, 1), 0)
        diff = (out - tower.blocks[0](x)).abs().max().item()
    print(f"[tome] proportional attention, sizes 1 vs plain block max|diff| = {diff:.2e}")
    assert diff <= 1e-5 and torch.equal(size, torch.ones(2, N, 1))


def test_proportional_attention_equals_duplicated_keys():
    """A key of size s weighs like s copies of that key: the defining property of proportional attention."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    sizes = torch.tensor([1, 3, 1, 2, 1])
    out = proportional_attention(q, k, v, sizes.float().expand(2, 5)[..., None])
    rep = torch.repeat_interleave(torch.arange(5), sizes)
    ref = F.scaled_dot_product_attention(q, k[:, :, rep], v[:, :, rep])
    assert torch.allclose(out, ref, atol=1e-6)


def test_tome_backward_is_finite(pixels):
    tower = tiny_tower().train()
    tokens, size = tome_forward(tower, pixels, 8)
    (tokens * size).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tower.parameters())


@pytest.mark.slow
def test_tome_compiles_fullgraph(pixels):
    """About 26 s on 2 CPU cores."""
    tower = tiny_tower()
    compiled = torch.compile(lambda p: tome_forward(tower, p, 8), fullgraph=True)
    with torch.no_grad():
        (a, size_a), (b, size_b) = compiled(pixels), tome_forward(tower, pixels, 8)
    diff = (a - b).abs().max().item()
    print(f"[compile] tome_forward r=8 fullgraph max|diff| vs eager = {diff:.2e}")
    assert diff <= 1e-5 and torch.equal(size_a, size_b)


def test_tome_refuses_a_tower_with_feature_taps(pixels):
    tower = VisionTower(
        image_size=32,
        patch_size=4,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        feature_layers=[-1],
    )
    with pytest.raises(ValueError, match="feature_layers=None"):
        tome_forward(tower, pixels, 2)


# ---------------------------------------------------------------------- top-k pruning
@pytest.fixture()
def feats() -> torch.Tensor:
    return torch.randn(3, N, 32, generator=torch.Generator().manual_seed(2))


def map_head() -> MAPHead:
    torch.manual_seed(0)
    return perturb_(MAPHead(32, 4, 64, 1e-6, "gelu_tanh"), scale=0.3)


@pytest.mark.parametrize("k", [1, 4, 16, 63, 64])
@pytest.mark.parametrize("score", ["norm", "probe", "map_head"])
def test_prune_keeps_the_top_k_in_their_original_order(feats, k, score):
    probe = {"norm": None, "probe": AttentionProbe(32, num_heads=4), "map_head": map_head()}[score]
    kind = "norm" if probe is None else "attention"
    out = prune_tokens(feats, k, score=kind, probe=probe)
    assert out.tokens.shape == (3, k, 32) and out.index.shape == (3, k)
    assert (out.index.diff(dim=1) > 0).all()  # original order
    assert torch.equal(out.tokens, feats.gather(1, out.index[..., None].expand(-1, -1, 32)))
    s = token_scores(feats, kind, probe)
    top = s.argsort(dim=-1, descending=True)[:, :k]
    for b in range(3):
        assert set(out.index[b].tolist()) == set(top[b].tolist())
    assert torch.equal(out.size, torch.ones(3, k, 1))


def test_map_head_probe_attention_matches_nn_multihead_attention(feats):
    """The MAP head's attention weights (nn.MultiheadAttention layout, averaged over heads)."""
    head = map_head()
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(head.in_proj.weight)
        mha.in_proj_bias.copy_(head.in_proj.bias)
        _, ref = mha(head.probe.expand(3, 1, 32), feats, feats, need_weights=True, average_attn_weights=True)
    ours = probe_attention(feats, head)
    assert torch.allclose(ours, ref[:, 0], atol=1e-6)
    assert torch.allclose(ours.sum(-1), torch.ones(3))


def test_prune_gradients_flow(feats):
    x = feats.clone().requires_grad_(True)
    out = prune_tokens(x, 16)
    out.tokens.square().sum().backward()
    touched = x.grad.abs().sum(-1) > 0
    expected = torch.zeros(3, N, dtype=torch.bool).scatter_(1, out.index, True)
    assert torch.equal(touched, expected) and torch.isfinite(x.grad).all()
    x.grad = None
    merged = prune_tokens(x, 16, merge=True)
    merged.tokens.square().sum().backward()
    assert (x.grad.abs().sum(-1) > 0).all()  # every token reaches the output through its merge


def test_prune_merge_is_size_weighted_into_the_most_similar_kept_token(feats):
    k = 8
    out = prune_tokens(feats, k, merge=True)
    assert torch.equal(out.size.sum(1), torch.full((3, 1), float(N)))
    kept = feats.gather(1, out.index[..., None].expand(-1, -1, 32))
    group = (F.normalize(feats, dim=-1) @ F.normalize(kept, dim=-1).transpose(1, 2)).argmax(-1)
    group.scatter_(1, out.index, torch.arange(k).expand(3, k))  # kept tokens are their own group
    for b in range(3):
        for j in range(k):
            members = feats[b, group[b] == j]
            assert out.size[b, j, 0] == len(members)
            assert torch.allclose(out.tokens[b, j], members.mean(0), atol=1e-6)
    same = prune_tokens(feats, N, merge=True)
    assert torch.equal(same.tokens, feats)


def test_prune_refuses_a_bad_budget_or_score(feats):
    with pytest.raises(ValueError, match="k=0"):
        prune_tokens(feats, 0)
    with pytest.raises(ValueError, match="needs a probe"):
        prune_tokens(feats, 4, score="attention")
    with pytest.raises(ValueError, match="unknown"):
        prune_tokens(feats, 4, score="cls")
