"""Connector zoo (issue 13): perceiver resampler, Q-Former, C-Abstractor, LDPv2, average pooling.

Parity: perceiver vs transformers' `Idefics2Connector` / `Idefics2Model.get_image_features`, Q-Former vs
`Blip2QFormerModel` / `Blip2ForConditionalGeneration.get_image_features`, C-Abstractor vs a Honeybee-style
stack of timm `RegStage`s, bilinear pooling vs `LlavaOnevisionModel.apply_pooling`; all fp32, tiny configs,
random weights (perturbed so that norms are not 1 and biases not 0), max |diff| printed and held to 1e-5.
Then for every connector: the common interface, shapes per budget, closed-form FLOPs == torch's flop
counter, a finite one-step backward and torch.compile(fullgraph=True).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hf_parity import force_eager, hf_tower_state_to_native, max_diff, perturb_
from safetensors.torch import load_file
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vtlab.models.connectors.avgpool import AvgPoolConnector
from vtlab.models.connectors.c_abstractor import CAbstractor
from vtlab.models.connectors.ldp import LDPv2
from vtlab.models.connectors.perceiver import PerceiverResampler, idefics2_to_native, native_to_idefics2
from vtlab.models.connectors.qformer import TEXT_BRANCH, QFormer, blip2_to_native, native_to_blip2

TOL = 1e-5
GRID = (8, 8)
N = 64
C_IN, C_OUT = 32, 48


# ---------------------------------------------------------------------- tiny HF configs
def tiny_idefics2_config(n_latents: int = 8):
    from transformers import Idefics2Config

    text = dict(
        model_type="mistral",
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        hidden_act="gelu",  # the modality projection's act (the perceiver's own MLP uses its config's silu)
        rms_norm_eps=1e-5,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=4,
        attention_dropout=0.0,
    )
    perceiver = dict(
        hidden_size=64,
        resampler_n_latents=n_latents,
        resampler_depth=2,
        resampler_n_heads=4,
        resampler_head_dim=12,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        hidden_act="silu",
    )
    return Idefics2Config(vision_config=vision, perceiver_config=perceiver, text_config=text, image_token_id=127)


def native_perceiver(cfg) -> PerceiverResampler:
    p = cfg.perceiver_config
    return PerceiverResampler(
        cfg.vision_config.hidden_size,
        cfg.text_config.hidden_size,
        p.resampler_n_latents,
        depth=p.resampler_depth,
        num_heads=p.resampler_n_heads,
        head_dim=p.resampler_head_dim,
        num_kv_heads=p.num_key_value_heads,
        proj_hidden=cfg.text_config.intermediate_size,
        proj_act=cfg.text_config.hidden_act,
        act=p.hidden_act,
        eps=p.rms_norm_eps,
    )


def tiny_blip2_config():
    from transformers import Blip2Config

    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=4,
        attention_dropout=0.0,
    )
    qformer = dict(
        hidden_size=40,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=56,
        cross_attention_frequency=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    text = dict(
        model_type="opt",
        hidden_size=48,
        ffn_dim=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        vocab_size=128,
        word_embed_proj_dim=48,
        max_position_embeddings=64,
    )
    return Blip2Config(
        vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=6, image_token_index=127
    )


def native_qformer(cfg) -> QFormer:
    q = cfg.qformer_config
    return QFormer(
        cfg.vision_config.hidden_size,
        cfg.text_config.hidden_size,
        cfg.num_query_tokens,
        hidden=q.hidden_size,
        depth=q.num_hidden_layers,
        num_heads=q.num_attention_heads,
        intermediate=q.intermediate_size,
        cross_attention_frequency=q.cross_attention_frequency,
        eps=q.layer_norm_eps,
    )


# ---------------------------------------------------------------------- perceiver (Idefics2)
@pytest.mark.parametrize("padded", [False, True])
def test_perceiver_matches_idefics2_connector(padded):
    from transformers.models.idefics2.modeling_idefics2 import Idefics2Connector

    cfg = tiny_idefics2_config()
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = perturb_(Idefics2Connector(cfg).eval())
    ours = native_perceiver(cfg).eval()
    ours.load_state_dict(idefics2_to_native(hf.state_dict(), prefix=""), strict=True)
    x = torch.randn(2, N, 32)
    mask = torch.ones(2, N, dtype=torch.bool)
    if padded:
        mask[1, 40:] = False
    with torch.no_grad():
        ref = hf(x, attention_mask=mask.long())
        out = ours(x, GRID, mask=mask if padded else None)
        unmasked = ours(x, GRID)
    if padded:  # the mask matters: padding patches are not attended
        assert max_diff(out[1], unmasked[1]) > 1e-3 and max_diff(out[0], unmasked[0]) <= TOL
    diff = max_diff(out, ref)
    print(f"[parity] perceiver vs Idefics2Connector (padded={padded}) max|diff| = {diff:.2e}")
    assert out.shape == (2, 8, 64)
    assert diff <= TOL


def test_perceiver_keys_of_a_saved_idefics2(tmp_path):
    from transformers import Idefics2ForConditionalGeneration

    cfg = tiny_idefics2_config()
    torch.manual_seed(0)
    Idefics2ForConditionalGeneration(cfg).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    conn = {k: v for k, v in state.items() if k.startswith("model.connector.")}
    expected = {
        "model.connector.modality_projection.gate_proj.weight",
        "model.connector.perceiver_resampler.latents",
        "model.connector.perceiver_resampler.norm.weight",
        "model.connector.perceiver_resampler.layers.1.self_attn.k_proj.weight",
        "model.connector.perceiver_resampler.layers.1.input_context_norm.weight",
        "model.connector.perceiver_resampler.layers.1.mlp.down_proj.weight",
    }
    assert expected <= set(conn), sorted(conn)
    ours = native_perceiver(cfg)
    native = idefics2_to_native(state)  # prefix model.connector. by default; other keys ignored
    ours.load_state_dict(native, strict=True)
    back = native_to_idefics2(ours.state_dict())
    assert set(back) == set(conn)
    assert all(torch.equal(back[k], conn[k]) for k in conn)
    print(f"[keys] Idefics2ForConditionalGeneration: {len(conn)} model.connector.* keys -> {len(native)} native keys")


@pytest.mark.parametrize("padded", [False, True])
def test_idefics2_feature_path_matches_get_image_features(padded):
    """HF vision tower -> our resampler == `Idefics2Model.get_image_features` (pixel mask included)."""
    from transformers.models.idefics2.modeling_idefics2 import Idefics2Model

    cfg = tiny_idefics2_config()
    torch.manual_seed(0)
    hf = perturb_(Idefics2Model(cfg).eval())
    force_eager(hf)
    ours = native_perceiver(cfg).eval()
    ours.load_state_dict(idefics2_to_native(hf.state_dict(), prefix="connector."), strict=True)
    pixels = torch.randn(2, 1, 3, 32, 32)
    pmask = torch.ones(2, 1, 32, 32, dtype=torch.long)
    if padded:  # second image is 20 x 24 px, zero-padded to 32 x 32 (5 x 6 real patches)
        pmask[1, 0, 20:] = 0
        pmask[1, 0, :, 24:] = 0
        pixels[1, 0] *= pmask[1, 0]
    with torch.no_grad():
        ref = hf.get_image_features(pixels, pixel_attention_mask=pmask).pooler_output
        patch_mask = pmask[:, 0].unfold(1, 4, 4).unfold(2, 4, 4).sum((-1, -2)) == 16
        feats = hf.vision_model(pixels[:, 0], patch_attention_mask=patch_mask).last_hidden_state
        out = ours(feats, GRID, mask=patch_mask.view(2, -1))
        unmasked = ours(feats, GRID)
    assert (max_diff(out[1], unmasked[1]) > 1e-3) == padded
    diff = max(max_diff(out[b], ref[b]) for b in range(2))
    print(f"[parity] Idefics2 tower + perceiver vs get_image_features (padded={padded}) max|diff| = {diff:.2e}")
    assert diff <= TOL


def test_idefics2_vision_tower_vs_native_siglip_tower():
    """Idefics2VisionTransformer == SigLIP numerics on full (unpadded) images at the native size. It differs on
    padded images (masked keys; position ids bucketed from each image's own fractional coordinates) and at other
    sizes (the position table is looked up by bucket, where the native tower interpolates it bicubically)."""
    from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionTransformer

    from vtlab.models.towers import VisionTower

    cfg = tiny_idefics2_config().vision_config
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = perturb_(Idefics2VisionTransformer(cfg).eval())
    tower = VisionTower(image_size=32, patch_size=4, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4)
    tower.load_state_dict(hf_tower_state_to_native(hf.state_dict(), prefix=""), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = max_diff(tower(x), hf(x).last_hidden_state)
        mask = torch.ones(2, 8, 8, dtype=torch.bool)
        mask[1, 5:] = False
        padded = hf(x, patch_attention_mask=mask).last_hidden_state
        pad_diff = max_diff(tower(x)[1].view(8, 8, -1)[:5], padded[1].view(8, 8, -1)[:5])
        big = torch.randn(1, 3, 48, 48)  # 12 x 12 grid on an 8 x 8 table: bucketed ids vs bicubic interpolation
        size_diff = max_diff(tower(big), hf(big).last_hidden_state)
    print(
        f"[parity] Idefics2VisionTransformer vs native SigLIP tower: native size {full:.2e}; "
        f"padded image (valid rows) {pad_diff:.2e}; 48 px input {size_diff:.2e}"
    )
    assert full <= TOL
    assert pad_diff > 1e-3  # padded images are NOT SigLIP numerics: the tower needs the patch mask for those
    assert size_diff > 1e-3  # nor other sizes: Idefics2 looks positions up by bucket, SigLIP interpolates


# ---------------------------------------------------------------------- Q-Former (BLIP-2)
def test_qformer_matches_blip2_qformer_model():
    from transformers import Blip2QFormerConfig
    from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel

    cfg = Blip2QFormerConfig(
        hidden_size=40,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=56,
        encoder_hidden_size=32,
        cross_attention_frequency=2,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = perturb_(Blip2QFormerModel(cfg).eval())
    ours = QFormer(32, 48, 6, hidden=40, depth=4, num_heads=4, intermediate=56).eval()
    state = {f"qformer.{k}": v for k, v in hf.state_dict().items()}
    state |= {f"language_projection.{k}": v for k, v in ours.out_proj.state_dict().items()}
    state["query_tokens"] = torch.randn(1, 6, 40)
    ours.load_state_dict(blip2_to_native(state), strict=True)
    assert [layer.has_cross for layer in ours.layers] == [True, False, True, False]
    x = torch.randn(2, N, 32)
    with torch.no_grad():
        ref = hf(
            query_embeds=state["query_tokens"].expand(2, -1, -1),
            encoder_hidden_states=x,
            encoder_attention_mask=torch.ones(2, N, dtype=torch.long),
        ).last_hidden_state
        out = ours.query_states(x)
    diff = max_diff(out, ref)
    print(f"[parity] QFormer vs Blip2QFormerModel max|diff| = {diff:.2e}")
    assert diff <= TOL


def test_qformer_matches_blip2_get_image_features_and_saved_keys(tmp_path):
    from transformers import Blip2ForConditionalGeneration

    cfg = tiny_blip2_config()
    torch.manual_seed(0)
    hf = perturb_(Blip2ForConditionalGeneration(cfg).eval())
    force_eager(hf)
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    mine = {k for k in state if k.startswith(("qformer.", "query_tokens", "language_projection."))}
    assert {
        "query_tokens",
        "language_projection.weight",
        "qformer.layernorm.weight",
        "qformer.encoder.layer.0.crossattention.attention.key.weight",
        "qformer.encoder.layer.1.output_query.LayerNorm.bias",
    } <= mine
    assert not any(TEXT_BRANCH.fullmatch(k) for k in mine)  # use_qformer_text_input=False: no text branch saved
    assert not any(".crossattention." in k for k in mine if k.startswith("qformer.encoder.layer.1."))
    ours = native_qformer(cfg).eval()
    ours.load_state_dict(blip2_to_native(state), strict=True)
    back = native_to_blip2(ours.state_dict())
    assert set(back) == mine and all(torch.equal(back[k], state[k]) for k in mine)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf.get_image_features(x).pooler_output
        out = ours(hf.vision_model(x).last_hidden_state, GRID)
    diff = max_diff(out, ref)
    print(f"[parity] BLIP-2 vision + QFormer vs get_image_features max|diff| = {diff:.2e}; {len(mine)} keys mapped")
    assert diff <= TOL


# ---------------------------------------------------------------------- C-Abstractor (Honeybee)
def honeybee_reference_net(cin: int, hidden: int, side: int, depth: int) -> nn.Module:
    """The C-Abstractor `net` as Honeybee builds it, from timm's RegStage (the test's reference only)."""
    from timm.layers import LayerNorm2d
    from timm.models.regnet import RegStage

    def stage(i: int, o: int) -> nn.Module:
        return RegStage(depth, i, o, stride=1, dilation=1, act_layer=nn.SiLU, norm_layer=LayerNorm2d)

    return nn.Sequential(stage(cin, hidden), nn.AdaptiveAvgPool2d((side, side)), stage(hidden, hidden))


@pytest.mark.parametrize("hidden", [32, 40])  # 40: the first block has a conv1x1 + LN shortcut
def test_c_abstractor_matches_timm_regstage_stack(hidden):
    torch.manual_seed(0)
    ours = perturb_(CAbstractor(C_IN, C_OUT, 16, hidden=hidden, depth=2)).eval()
    ref = honeybee_reference_net(C_IN, hidden, 4, 2).eval()
    ref.load_state_dict(ours.net.state_dict(), strict=True)
    x = torch.randn(2, N, C_IN)
    with torch.no_grad():
        out = ours.net(x.transpose(1, 2).reshape(2, C_IN, 8, 8))
        expect = ref(x.transpose(1, 2).reshape(2, C_IN, 8, 8))
    diff = max_diff(out, expect)
    print(f"[parity] CAbstractor.net vs timm RegStage stack (hidden {hidden}) max|diff| = {diff:.2e}")
    assert diff <= TOL


def test_c_abstractor_parameter_count_of_the_honeybee_reference():
    """Honeybee-C 7B: CLIP ViT-L/14 (C=1024) at 336 px (576 tokens, pos_emb), hidden 1024, depth 3, mlp_depth 2,
    Vicuna-7B width 4096. The paper does not publish the projector's parameter count: the closed form is checked
    against the module and against the same net built from timm's RegStage (Honeybee's own construction)."""
    with torch.device("meta"):
        ours = CAbstractor(1024, 4096, 144, hidden=1024, depth=3, mlp_depth=2, input_tokens=576)
        ref = honeybee_reference_net(1024, 1024, 12, 3)
    count = sum(p.numel() for p in ours.parameters())
    ref_count = (
        sum(p.numel() for p in ref.parameters()) + sum(p.numel() for p in ours.readout.parameters()) + 576 * 1024
    )
    formula = CAbstractor.param_count(1024, 4096, 1024, 3, 2, input_tokens=576)
    print(f"[params] C-Abstractor Honeybee-C-7B reference: {count:,} (formula {formula:,}, timm-built {ref_count:,})")
    assert count == formula == ref_count
    for tokens in (64, 144, 256):  # the budget does not change the parameter count
        assert CAbstractor.param_count(24, 40, 32, 2, 2) == sum(
            p.numel() for p in CAbstractor(24, 40, tokens, hidden=32, depth=2).parameters()
        )


def test_c_abstractor_refuses_a_non_square_budget():
    with pytest.raises(ValueError, match="not a positive perfect square"):
        CAbstractor(C_IN, C_OUT, 12)


# ---------------------------------------------------------------------- LDPv2 (MobileVLM V2)
def test_ldp_parameter_count():
    for cin, cout in ((C_IN, C_OUT), (1024, 2048)):
        with torch.device("meta"):
            count = sum(p.numel() for p in LDPv2(cin, cout, 144).parameters())
        assert count == LDPv2.param_count(cin, cout)
    print(f"[params] LDPv2 1024 -> 2048 (MobileVLM V2 1.7B widths): {LDPv2.param_count(1024, 2048):,}")


def test_ldp_peg_is_a_residual():
    """With the depthwise PEG conv zeroed the output is exactly the pooled MLP features."""
    torch.manual_seed(0)
    ldp = LDPv2(C_IN, C_OUT, 16)
    nn.init.zeros_(ldp.peg.weight)
    nn.init.zeros_(ldp.peg.bias)
    x = torch.randn(2, N, C_IN)
    out = ldp(x, GRID)
    pooled = nn.functional.adaptive_avg_pool2d(ldp.mlp(x).transpose(1, 2).reshape(2, C_OUT, 8, 8), 4)
    assert torch.equal(out, pooled.flatten(2).transpose(1, 2))


# ---------------------------------------------------------------------- average pooling
def test_avgpool_avg_mode_is_the_window_mean():
    x = torch.randn(2, N, C_IN)
    conn = AvgPoolConnector(C_IN, C_OUT, 16)
    windows = x.view(2, 4, 2, 4, 2, C_IN).mean((2, 4)).reshape(2, 16, C_IN)
    assert torch.allclose(conn.pool(x, GRID), windows, atol=1e-6)


def test_avgpool_bilinear_matches_llava_onevision_video_pooling():
    """`pool_first=False, mode="bilinear"` at ceil(27/2)^2 = 196 tokens == projector + `apply_pooling`."""
    from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

    torch.manual_seed(0)
    conn = perturb_(AvgPoolConnector(C_IN, C_OUT, 196, mode="bilinear", pool_first=False))
    fake = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=378, patch_size=14)))
    x = torch.randn(2, 27 * 27, C_IN)
    with torch.no_grad():
        ref = LlavaOnevisionModel.apply_pooling(fake, conn.mlp(x))
        out = conn(x, (27, 27))
    diff = max_diff(out, ref)
    print(f"[parity] bilinear AvgPoolConnector vs LlavaOnevisionModel.apply_pooling max|diff| = {diff:.2e}")
    assert diff <= TOL


# ---------------------------------------------------------------------- common interface, all kinds
def build(kind: str, tokens: int, n_in: int = N) -> nn.Module:
    torch.manual_seed(0)
    if kind == "perceiver":
        return PerceiverResampler(C_IN, C_OUT, tokens, depth=2, num_heads=4, head_dim=8, num_kv_heads=2)
    if kind == "qformer":
        return QFormer(C_IN, C_OUT, tokens, hidden=40, depth=3, num_heads=4, intermediate=64)
    if kind == "c_abstractor":
        return CAbstractor(C_IN, C_OUT, tokens, hidden=40, depth=2, input_tokens=n_in)
    if kind == "ldp":
        return LDPv2(C_IN, C_OUT, tokens)
    if kind == "avgpool":
        return AvgPoolConnector(C_IN, C_OUT, tokens)
    if kind == "avgpool_bilinear":
        return AvgPoolConnector(C_IN, C_OUT, tokens, mode="bilinear", pool_first=False)
    raise KeyError(kind)


KINDS = ["perceiver", "qformer", "c_abstractor", "ldp", "avgpool", "avgpool_bilinear"]
SET_BASED = {"perceiver", "qformer"}


@pytest.mark.parametrize("kind", KINDS)
def test_interface_and_valid_tokens(kind):
    conn = build(kind, 16)
    assert conn.needs_grid == (kind not in SET_BASED)
    valid = type(conn).valid_tokens(GRID)
    if kind in SET_BASED:
        assert valid is None
    else:
        assert valid == [1, 4, 9, 16, 25, 36, 49, 64]
        assert type(conn).valid_tokens((6, 9)) == [s * s for s in range(1, 7)]
    assert conn.__doc__ and type(conn).__module__
    doc = __import__(type(conn).__module__, fromlist=["_"]).__doc__
    assert "Upstream" in doc or "transformers" in doc


@pytest.mark.parametrize("tokens", [4, 16, 64])
@pytest.mark.parametrize("kind", KINDS)
def test_shapes_per_budget(kind, tokens):
    conn = build(kind, tokens).eval()
    with torch.no_grad():
        out = conn(torch.randn(3, N, C_IN), GRID)
    assert out.shape == (3, tokens, C_OUT)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", KINDS)
def test_rectangular_grid(kind):
    conn = build(kind, 9, n_in=6 * 9).eval()
    with torch.no_grad():
        assert conn(torch.randn(2, 6 * 9, C_IN), (6, 9)).shape == (2, 9, C_OUT)


@pytest.mark.parametrize("tokens", [4, 16])
@pytest.mark.parametrize("kind", KINDS)
def test_flops_closed_form_equals_flop_counter(kind, tokens):
    """SDPA runs on the math backend here: torch's counter has no formula for the CPU flash kernel
    (`_scaled_dot_product_flash_attention_for_cpu` counts 0); the math path counts q k^T and attn @ v as bmm,
    the same 4 * H * Sq * Sk * head_dim as its formula for the CUDA flash / efficient kernels."""
    conn = build(kind, tokens).eval()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        conn(torch.randn(1, N, C_IN), GRID)
    counted, closed = counter.get_total_flops(), conn.flops_closed_form(N, GRID)
    print(f"[flops] {kind} tokens {tokens}: closed form {closed:,} counted {counted:,}")
    assert closed == counted


@pytest.mark.parametrize("kind", KINDS)
def test_one_step_backward(kind):
    conn = build(kind, 16).train()
    x = torch.randn(2, N, C_IN, requires_grad=True)
    loss = conn(x, GRID).square().mean()
    loss.backward()
    grads = [p.grad for p in conn.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    opt = torch.optim.SGD(conn.parameters(), lr=0.1)
    opt.step()
    assert math.isfinite(conn(x, GRID).square().mean().item())


@pytest.mark.parametrize("kind", KINDS)
def test_compiles_fullgraph(kind):
    """Each under 10 s on 2 CPU cores (the first pays inductor's start-up), so not marked slow."""
    conn = build(kind, 16).eval()
    x = torch.randn(2, N, C_IN)
    with torch.no_grad():
        eager = conn(x, GRID)
        compiled = torch.compile(conn, fullgraph=True, backend="inductor")(x, GRID)
    diff = max_diff(compiled, eager)
    print(f"[compile] {kind} fullgraph max|diff| vs eager = {diff:.2e}")
    assert diff <= 1e-4
