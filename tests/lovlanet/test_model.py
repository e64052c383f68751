"""LoVLANet model: the parts against the libraries they come from, variants, errors, training, compile."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import kkattn
import lovlanet
from lovlanet import CheckpointError, LoVLANetConfig, build_model, load_model, parse_variant
from lovlanet.text_encoder import TextEncoder

# A small ViT with the same structure (patch 32, pre-norm, QuickGELU, CLS), so tests run in seconds.
SMALL = dict(visual_kwargs=dict(depth=4, embed_dim=96, num_heads=2), feature_blocks=(1, 2, 3, 4), img_size=128,
             decoder_dim=32, text_kwargs=dict(width=64, layers=1, heads=2))
VIT = "vit_base_patch32_clip_quickgelu_224"


def small_model(variant="full", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random text tower
        return build_model(variant, **{**SMALL, **kw})


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    """A random open_clip ViT-B-32-quickgelu saved the way RemoteCLIP ships: a plain state dict."""
    import open_clip

    torch.manual_seed(1)
    clip = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    path = tmp_path_factory.mktemp("ckpt") / "RemoteCLIP-ViT-B-32.pt"
    torch.save(clip.state_dict(), path)
    return clip, path


# ------------------------------------------------------------------------------------------- text
def test_text_encoder_equals_open_clip_encode_text(clip_checkpoint):
    clip, path = clip_checkpoint
    import open_clip

    text = TextEncoder("ViT-B-32-quickgelu", path).eval()
    prompts = ["a satellite image of building", "a satellite image of road", "water"]
    with torch.no_grad():
        ours = text(prompts)
        ref = clip.encode_text(open_clip.get_tokenizer("ViT-B-32-quickgelu")(prompts), normalize=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(3))
    assert not any(k.startswith("visual") for k in text.state_dict())


def test_text_activation_gelu_is_what_remoteclip_instructions_build(clip_checkpoint):
    """``text_activation="gelu"`` equals open_clip's plain ``ViT-B-32`` loaded with the same weights (RemoteCLIP's
    README), and differs from the QuickGELU default by the small amount the README quotes."""
    clip, path = clip_checkpoint
    import open_clip

    plain = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    plain.load_state_dict(clip.state_dict())
    prompts = ["a satellite image of building", "a satellite image of road"]
    with torch.no_grad():
        gelu = TextEncoder("ViT-B-32", path, activation="gelu").eval()(prompts)
        quick = TextEncoder("ViT-B-32", path, activation="quickgelu").eval()(prompts)
        ref = plain.encode_text(open_clip.get_tokenizer("ViT-B-32")(prompts), normalize=True)
    torch.testing.assert_close(gelu, ref, rtol=0, atol=1e-6)
    assert 1e-4 < (gelu - quick).abs().max() < 1e-2


def test_text_checkpoint_errors_name_the_key_and_file(clip_checkpoint, tmp_path):
    clip, _ = clip_checkpoint
    state = {k: v for k, v in clip.state_dict().items() if not k.startswith("visual.")}  # the text keys are enough
    missing = dict(state)
    missing.pop("ln_final.weight")
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="ln_final.weight"):
        TextEncoder("ViT-B-32-quickgelu", tmp_path / "missing.pt")
    torch.save({**state, "text_extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="text_extra.weight"):
        TextEncoder("ViT-B-32-quickgelu", tmp_path / "extra.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        TextEncoder("ViT-B-32-quickgelu", tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match="nowhere.pt"):
        TextEncoder("ViT-B-32-quickgelu", tmp_path / "nowhere.pt")


def test_frozen_text_embeddings_are_cached_and_unfrozen_are_trained():
    model = small_model()
    assert all(not p.requires_grad for p in model.text_encoder.parameters())
    cached = model.class_embeddings()
    assert cached.shape == (6, 512) and cached.data_ptr() == model.class_embeddings().data_ptr()
    model.set_text_trainable(True)
    x = torch.randn(1, 3, 64, 64)
    model.loss(x, torch.randint(0, 6, (1, 64, 64)))[0].total.backward()
    assert model.text_encoder.clip.token_embedding.weight.grad is not None


def test_random_text_tower_warns():
    with pytest.warns(UserWarning, match="random weights"):
        build_model("baseline", **SMALL)


# ----------------------------------------------------------------------------------------- visual
def _timm_small(path=None):
    import timm

    vit = timm.create_model(VIT, pretrained=False, num_classes=0, img_size=128, dynamic_img_size=True,
                            **SMALL["visual_kwargs"]).eval()
    if path is not None:
        torch.save(vit.state_dict(), path)
    return vit


def test_baseline_blocks_equal_timm_forward_intermediates(tmp_path):
    vit = _timm_small(tmp_path / "vit.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("baseline", visual_checkpoint=tmp_path / "vit.pt", **SMALL).eval()
    x = torch.randn(2, 3, 96, 160)  # non-square, and not the stored 128×128: the pos-embed is resampled
    with torch.no_grad():
        ours = model.encoder(x)
        raw = vit.forward_intermediates(x, indices=[0, 1, 2, 3], intermediates_only=True)
        normed = vit.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)
    for a, b in zip(ours[:3], raw[:3]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[3], normed[0], rtol=0, atol=1e-6)
    assert ours[0].shape == (2, 96, 3, 5)


def test_open_clip_visual_weights_load_through_timm(clip_checkpoint):
    """RemoteCLIP's visual tower (open_clip keys) → timm ViT: same final block as open_clip computes."""
    clip, path = clip_checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("baseline", img_size=224, visual_checkpoint=path).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = model.encoder(x)[3]
        ref = clip.visual.forward_intermediates(x, indices=[11], normalize_intermediates=False,
                                                intermediates_only=True)["image_intermediates"][0]
        # timm applies the final norm (open_clip's ln_post) to F4; open_clip's intermediates are raw.
        ref = clip.visual.ln_post(ref.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_kk_attention_takes_k_v_rows_and_equals_the_reference(tmp_path):
    vit = _timm_small(tmp_path / "vit.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("full", visual_checkpoint=tmp_path / "vit.pt", **SMALL).eval()
    attn = model.encoder.vit.blocks[1].attn
    qkv = vit.blocks[1].attn.qkv
    assert isinstance(attn, kkattn.nn.NeighborhoodKKAttention) and not hasattr(attn, "qkv")
    torch.testing.assert_close(attn.kv.weight, qkv.weight[96:])
    torch.testing.assert_close(attn.kv.bias, qkv.bias[96:])
    grid = (3, 5)
    x = torch.randn(2, 1 + 15, 96, dtype=torch.float64)
    attn64 = attn.double()
    with torch.no_grad():
        out = attn64(x, grid=grid)
        k, v = attn64.kv(x).reshape(2, 16, 2, 2, 48).permute(2, 0, 3, 1, 4)
        ref = kkattn.reference.neighborhood_kk_attention(k, v, 2.0, grid=grid, num_prefix_tokens=1)
        ref = attn64.proj(ref.transpose(1, 2).reshape(2, 16, 96))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_reduce_mlp_removes_the_ffn_and_optionally_the_residual():
    model = small_model("reduce_mlp")
    last = model.encoder.vit.blocks[-1]
    assert not hasattr(last, "mlp") and not hasattr(last, "norm2") and not last.residual
    x = torch.randn(1, 7, 96)
    with torch.no_grad():
        torch.testing.assert_close(last(x, (2, 3)), last.attn(last.norm1(x)))
    kept = small_model("reduce_mlp", last_block_residual=True).encoder.vit.blocks[-1]
    with torch.no_grad():
        torch.testing.assert_close(kept(x, (2, 3)), x + kept.attn(kept.norm1(x)))
    assert all(hasattr(b, "mlp") for b in model.encoder.vit.blocks[:-1])


# --------------------------------------------------------------------------------------- variants
@pytest.mark.parametrize("variant", lovlanet.VARIANTS)
def test_every_variant_builds_and_segments(variant):
    model = small_model(variant).eval()
    for shape in [(64, 64), (96, 160)]:
        with torch.no_grad():
            logits = model(torch.randn(2, 3, *shape))
        assert logits.shape == (2, 6, *shape) and torch.isfinite(logits).all()


def test_the_folded_pyramid_equals_pyramid_then_fusion():
    """The forward folds each pyramid level's last deconvolution into its lateral conv (decoder.lateral_through): the
    same P1 and the same gradients, to float64 rounding, as running the pyramid and then the fusion."""
    model = small_model().double()
    torch.manual_seed(0)
    maps = [torch.randn(2, 96, 3, 5, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    params = list(model.pyramid.parameters()) + list(model.fusion.parameters())
    folded = model.fusion.forward_pyramid(model.pyramid.levels, maps)
    plain = model.fusion(model.pyramid(maps))
    assert folded.shape == plain.shape == (2, 32, 24, 40)
    torch.testing.assert_close(folded, plain, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(plain)
    for a, b in zip(torch.autograd.grad(folded, maps + params, grad), torch.autograd.grad(plain, maps + params, grad)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_parameter_differences_are_exactly_the_removed_parts():
    counts = {v: small_model(v).summary()["visual_encoder"] for v in ("baseline", "kk", "reduce_mlp", "full")}
    dim, depth = 96, 4
    q_proj = dim * dim + dim
    mlp = (dim * 4 * dim + 4 * dim) + (4 * dim * dim + dim) + 2 * dim  # fc1, fc2, and the FFN's LayerNorm
    assert counts["baseline"] - counts["kk"] == depth * q_proj
    assert counts["baseline"] - counts["reduce_mlp"] == mlp
    assert counts["baseline"] - counts["full"] == depth * q_proj + mlp


def test_variant_names_parse_in_any_order():
    assert parse_variant("gauss+kk") == parse_variant("kk+gauss") == {"kk", "gauss"}
    assert parse_variant("full") == {"kk", "gauss", "reduce_mlp"} and parse_variant("baseline") == set()
    assert LoVLANetConfig(variant="reduce_mlp+gauss+kk").variant == "full"
    with pytest.raises(ValueError, match="unknown variant"):
        parse_variant("kk+swin")


def test_learnable_sigma_gets_gradients():
    for variant in ("full", "gauss"):
        model = small_model(variant, learnable_sigma=True)
        model.loss(torch.randn(1, 3, 64, 96), torch.randint(0, 6, (1, 64, 96)))[0].total.backward()
        sigmas = [p for n, p in model.named_parameters() if n.endswith("log_sigma")]
        assert len(sigmas) == 4 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in sigmas)


# ----------------------------------------------------------------------------------------- errors
def test_bad_inputs_get_clear_errors(tmp_path):
    model = small_model()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="multiples of the patch size 32"):
        model(torch.randn(1, 3, 64, 80))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown variant"):
        small_model("kk+nothing")
    with pytest.raises(ValueError, match="sigma"):
        small_model(sigma=0.0)
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="bad.pt"):
        small_model(visual_checkpoint=tmp_path / "bad.pt")
    torch.save({"pos_embed": torch.zeros(1, 5, 96)}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="partial.pt"):
        small_model(visual_checkpoint=tmp_path / "partial.pt")


# ------------------------------------------------------------------------------ config, checkpoints
def test_config_round_trips_through_json_and_checkpoints(tmp_path):
    model = small_model("kk+gauss", class_names=("water", "forest", "field"), learnable_sigma=True).eval()
    config = LoVLANetConfig.from_json(model.config.to_json())
    assert config == model.config
    path = model.save(tmp_path / "model.pt", epoch=3)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind
    assert path.stat().st_mode & 0o044  # readable by others like any new file (mkstemp makes 0600)
    again = load_model(path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
    with pytest.raises(CheckpointError, match="variant"):
        load_model(path, expect=LoVLANetConfig(variant="full", class_names=("water", "forest", "field")))
    with pytest.raises(CheckpointError, match="class_names"):
        load_model(path, expect=LoVLANetConfig(variant="kk+gauss"))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt"):
        load_model(tmp_path / "other.pt")


# ------------------------------------------------------------------------------ training, compile
def test_one_training_step_reduces_the_loss():
    torch.manual_seed(0)
    model = small_model("full")
    images = torch.randn(2, 3, 64, 64)
    target = (images[:, 0] > 0).long() + 2 * (images[:, 1] > 0).long()
    target[:, :4] = 255
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before, _ = model.loss(images, target)
    before.total.backward()
    optimizer.step()
    optimizer.zero_grad()
    after, _ = model.loss(images, target)
    assert torch.isfinite(before.total) and after.total < before.total
    assert before.seg > 0 and before.align > 0


def test_all_ignored_batch_gives_a_finite_loss():
    model = small_model()
    loss, _ = model.loss(torch.randn(1, 3, 64, 64), torch.full((1, 64, 64), 255))
    assert loss.total == 0 and torch.isfinite(loss.total)
    loss.total.backward()


def test_torch_compile_of_the_forward():
    model = small_model("full").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


class _SquareAllocations(TorchDispatchMode):
    """Records every op output whose last two dims are (n, n)."""

    def __init__(self, n):
        super().__init__()
        self.n, self.hits = n, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and tuple(t.shape[-2:]) == (self.n, self.n):
                self.hits.append(str(func))
        return out


@pytest.mark.parametrize("variant", ["baseline", "full", "kk+reduce_mlp"])
def test_inference_materializes_no_token_by_token_matrix(variant):
    model = small_model(variant).eval()
    x = torch.randn(1, 3, 32 * 12, 32 * 12)  # 144 tokens + CLS
    tracker = _SquareAllocations(145)
    with torch.no_grad(), tracker:
        model(x)
    assert tracker.hits == []


def test_table6_summary_differences_at_1024_are_exact():
    from lovlanet.summary import table, to_markdown

    rows = {r["variant"]: r for r in table(1024)}
    q_proj, mlp = 768 * 768 + 768, (768 * 3072 + 3072) + (3072 * 768 + 768)
    assert rows["baseline"]["visual_encoder"] == 88_204_800  # timm's ViT-B/32 at 1024, no head
    assert rows["kk"]["delta_vs_baseline"] == -12 * q_proj
    assert rows["reduce_mlp"]["delta_vs_baseline"] == -(mlp + 2 * 768)  # the MLP and its LayerNorm
    assert rows["full"]["total"] == rows["kk+reduce_mlp"]["total"]
    assert rows["baseline"]["text_encoder"] == 63_428_097
    assert "| Full |" in to_markdown(list(rows.values()), 1024)
