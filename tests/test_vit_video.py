"""MAE-ST's video ViT and its MAE pretraining against an independent reference.

No MAE-ST package exists, so the reference is written here from timm parts (``timm.layers.Mlp``, plain attention with
separate q / k / v linears), following facebookresearch/mae_st ``models_vit.py``, ``util/video_vit.py`` and
``models_mae.py`` with ``sep_pos_embed=True, cls_embed=True``: its modules carry MAE-ST's exact parameter names, so
their random state dicts are checkpoints in MAE-ST's layout. ViT-B's names and shapes are checked on the meta device;
the numerics at a small width in fp32.
"""

from __future__ import annotations

import pytest
import torch
from timm.layers import Mlp
from torch import nn

import hieralab
from hieralab.errors import CheckpointError
from hieralab.models.checkpoint import load_checkpoint
from hieralab.models.contract import check_backbone


# ---------------------------------------------------------------- the reference (MAE-ST's forward, timm parts)
class RefAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        h = self.heads
        q, k, v = (f(x).reshape(B, N, h, C // h).permute(0, 2, 1, 3) for f in (self.q, self.k, self.v))
        attn = ((q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class RefBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(in_features=dim, hidden_features=4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefPatchEmbed(nn.Module):
    def __init__(self, dim, patch, t_patch, chans=3):
        super().__init__()
        self.proj = nn.Conv3d(chans, dim, kernel_size=(t_patch, patch, patch), stride=(t_patch, patch, patch))

    def forward(self, x):
        return torch.einsum("ncts->ntsc", self.proj(x).flatten(3))  # [N, T, H*W, C]


def sep_pos(spatial, temporal, cls):
    T, L = temporal.shape[1], spatial.shape[1]
    pos = spatial.repeat(1, T, 1) + torch.repeat_interleave(temporal, L, dim=1)
    return torch.cat([cls, pos], dim=1)


class RefViT(nn.Module):
    """models_vit.VisionTransformer(sep_pos_embed=True, cls_embed=True)."""

    def __init__(self, frames, size, patch, t_patch, dim, depth, heads, classes):
        super().__init__()
        T, S = frames // t_patch, size // patch
        self.patch_embed = RefPatchEmbed(dim, patch, t_patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed_spatial = nn.Parameter(torch.zeros(1, S * S, dim))
        self.pos_embed_temporal = nn.Parameter(torch.zeros(1, T, dim))
        self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(RefBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def tokens(self, x):
        x = self.patch_embed(x)
        N, T, L, C = x.shape
        x = torch.cat([self.cls_token.expand(N, -1, -1), x.reshape(N, T * L, C)], dim=1)
        x = x + sep_pos(self.pos_embed_spatial, self.pos_embed_temporal, self.pos_embed_class)
        for blk in self.blocks:
            x = blk(x)
        return x  # [N, 1 + T*L, C]

    def forward(self, x):
        return self.head(self.norm(self.tokens(x)[:, 1:].mean(dim=1)))  # dropout: eval


class RefMAE(nn.Module):
    """models_mae.MaskedAutoencoderViT(sep_pos_embed=True, cls_embed=True, norm_pix_loss=True), masking from given
    noise."""

    def __init__(self, frames, size, patch, t_patch, dim, depth, heads, ddim, ddepth, dheads, pred_t_dim):
        super().__init__()
        T, S = frames // t_patch, size // patch
        self.T, self.S, self.patch, self.pred_t_dim = T, S, patch, pred_t_dim
        self.u = t_patch * pred_t_dim // frames
        self.patch_embed = RefPatchEmbed(dim, patch, t_patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_cls_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.pos_embed_spatial = nn.Parameter(torch.zeros(1, S * S, dim))
        self.pos_embed_temporal = nn.Parameter(torch.zeros(1, T, dim))
        self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(RefBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.decoder_pos_embed_spatial = nn.Parameter(torch.zeros(1, S * S, ddim))
        self.decoder_pos_embed_temporal = nn.Parameter(torch.zeros(1, T, ddim))
        self.decoder_pos_embed_class = nn.Parameter(torch.zeros(1, 1, ddim))
        self.decoder_blocks = nn.ModuleList(RefBlock(ddim, dheads) for _ in range(ddepth))
        self.decoder_norm = nn.LayerNorm(ddim, eps=1e-6)
        self.decoder_pred = nn.Linear(ddim, self.u * patch ** 2 * 3)

    def forward(self, imgs, noise, mask_ratio):
        x = self.patch_embed(imgs)
        N, T, L, C = x.shape
        x = x.reshape(N, T * L, C)
        keep = int(T * L * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, C))
        mask = torch.ones(N, T * L)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        pos = (self.pos_embed_spatial.repeat(1, T, 1)
               + torch.repeat_interleave(self.pos_embed_temporal, L, dim=1)).expand(N, -1, -1)
        pos = torch.gather(pos, 1, ids_keep.unsqueeze(-1).repeat(1, 1, C))
        x = torch.cat([self.cls_token.expand(N, -1, -1), x], 1) + torch.cat(
            [self.pos_embed_class.expand(N, -1, -1), pos], 1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)[:, 1:]
        # decoder
        x = self.decoder_embed(x)
        D = x.shape[-1]
        x = torch.cat([x, self.mask_token.repeat(N, T * L - x.shape[1], 1)], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).repeat(1, 1, D))
        x = torch.cat([self.decoder_cls_token.expand(N, -1, -1), x], dim=1)
        x = x + sep_pos(self.decoder_pos_embed_spatial, self.decoder_pos_embed_temporal,
                        self.decoder_pos_embed_class)
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        # loss (norm_pix_loss)
        frames = torch.index_select(imgs, 2, torch.linspace(0, imgs.shape[2] - 1, self.pred_t_dim).long())
        p, u = self.patch, self.u
        t, h = frames.shape[2] // u, frames.shape[3] // p
        target = torch.einsum("nctuhpwq->nthwupqc", frames.reshape(N, 3, t, u, h, p, h, p))
        target = target.reshape(N, t * h * h, u * p * p * 3)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum(), pred, mask


def random_state(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in ``module``'s names and shapes (norm weights near 1, the rest small)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        noise = torch.randn(v.shape, generator=g)
        out[k] = 1 + 0.1 * noise if ("norm" in k and k.endswith("weight")) else 0.2 * noise
    return out


# toy: 8 frames of 32 px, 2x8x8 tubelets -> 4x4x4 tokens, width 32
TOY = dict(frames=8, size=32, patch=8, t_patch=2, dim=32, depth=2, heads=4)
OURS = dict(input_size=(8, 32, 32), patch_size=8, t_patch_size=2, embed_dim=32, depth=2, num_heads=4)


def assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- names and shapes at ViT-B
def meta_state(module_fn):
    with torch.device("meta"):
        return {k: v for k, v in module_fn().state_dict().items()}


def test_vit_b_takes_mae_st_names_and_shapes():
    """MAE-ST's ViT-B (fine-tuned: with the head; pretrained: with the decoder) in its own names and shapes fits ours
    with no tensor missing or left over."""
    from hieralab.models import registry

    ref = meta_state(lambda: RefViT(16, 224, 16, 2, 768, 12, 12, 400))
    assert ref["patch_embed.proj.weight"].shape == (768, 3, 2, 16, 16)
    assert ref["pos_embed_spatial"].shape == (1, 196, 768) and ref["pos_embed_temporal"].shape == (1, 8, 768)
    assert ref["pos_embed_class"].shape == (1, 1, 768) and ref["blocks.11.attn.q.weight"].shape == (768, 768)
    with torch.device("meta"):
        ours = registry.build("vit_base_patch16_video")
        mae = registry.build("mae_vit_base_patch16_video")
    _, converted = ours.convert_checkpoint(ref)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.state_dict().items()}

    ref_mae = meta_state(lambda: RefMAE(16, 224, 16, 2, 768, 12, 12, 512, 4, 16, 8))
    assert ref_mae["decoder_pred.weight"].shape == (768, 512)  # 1 frame x 16 x 16 x 3 per token
    _, converted = mae.convert_checkpoint(ref_mae)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in mae.state_dict().items()}
    _, encoder = ours.convert_checkpoint(ref_mae)  # the pretraining checkpoint's encoder into the classifier
    assert set(ours.state_dict()) - set(encoder) == {"head.weight", "head.bias"} and set(encoder) <= set(
        ours.state_dict())


def test_registered_sizes():
    from hieralab.models import registry

    counts = {}
    for size in ("base", "large", "huge"):
        with torch.device("meta"):
            m = registry.build(f"vit_{size}_patch16_video")
        counts[size] = round(sum(p.numel() for p in m.parameters()) / 1e6, 1)
        assert m.grid_size == (8, 14, 14) and m.patch_embed.proj.kernel_size == (2, 16, 16)
    assert counts == {"base": 86.7, "large": 304.5, "huge": 632.4}


# ---------------------------------------------------------------- numerics
@pytest.fixture(scope="module")
def clip():
    return torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(3))


def test_classifier_and_features_match_mae_st(clip):
    ref = RefViT(**TOY, classes=7).eval()
    sd = random_state(ref)
    ref.load_state_dict(sd)
    ours = hieralab.create_model("vit_mini_patch4_video", **OURS, num_classes=7).eval()
    assert load_checkpoint(ours, {"model": sd}) == []  # every tensor of ours came from the checkpoint
    with torch.no_grad():
        assert_close(ours(clip), ref(clip))
        tokens = ref.tokens(clip)
        assert_close(ours.forward_features(clip), tokens)
        (last,) = ours.forward_intermediates(clip, [-1], intermediates_only=True)  # [B, C, T', H', W']
        assert last.shape == (2, 32, 4, 4, 4)
        assert_close(last.flatten(2).transpose(1, 2), tokens[:, 1:])


def test_mae_loss_matches_mae_st_with_the_same_noise(clip):
    ref = RefMAE(**TOY, ddim=16, ddepth=2, dheads=2, pred_t_dim=4)
    sd = random_state(ref, seed=1)
    ref.load_state_dict(sd)
    ours = hieralab.create_model("mae_vit_mini_patch4_video", **OURS, decoder_embed_dim=16, decoder_depth=2,
                                 decoder_num_heads=2, pred_t_dim=4)
    load_checkpoint(ours, {"model": sd})  # strict for an MAE: a missing or extra tensor is an error
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(5))
    keep = int(64 * (1 - 0.9))
    visible = torch.zeros(2, 64, dtype=torch.bool).scatter_(1, noise.argsort(1)[:, :keep], True)
    with torch.no_grad():
        loss, pred, mask = ref(clip, noise, 0.9)
        out = ours(clip, visible)
    assert torch.equal(~out.visible_patches, mask.bool())
    assert_close(out.pred, pred)
    assert_close(out.loss, loss)
    assert out.target.shape == pred.shape == (2, 64, 1 * 8 * 8 * 3)


def test_pretraining_encoder_loads_into_the_classifier(clip):
    """An MAE-ST pretraining checkpoint (decoder included) into the video ViT: the encoder's tensors, the head left
    new; and our own pretraining's encoder (export_encoder) runs as the MAE's encoder did."""
    ref = RefMAE(**TOY, ddim=16, ddepth=2, dheads=2, pred_t_dim=4)
    sd = random_state(ref, seed=2)
    vit = hieralab.create_model("vit_mini_patch4_video", **OURS, num_classes=5)
    assert sorted(load_checkpoint(vit, {"model": sd})) == ["head.bias", "head.weight"]
    mae = hieralab.create_model("mae_vit_mini_patch4_video", **OURS, decoder_embed_dim=16, decoder_depth=2,
                                decoder_num_heads=2, pred_t_dim=4)
    load_checkpoint(mae, {"model": sd})
    exported = mae.export_encoder("vit_mini_patch4_video")
    for k, v in vit.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(exported.state_dict()[k], v), k


def test_catalog_weights_load_through_the_conversion(tmp_path, monkeypatch, clip):
    """MAE-ST's published pretraining files are catalog entries of the video ViTs; a file in MAE-ST's layout given
    for an entry (served from disk here: nothing downloads) loads through the model's own conversion."""
    from hieralab import weights
    from hieralab.weights import catalog

    for size in ("large", "huge"):
        assert catalog.lookup(f"vit_{size}_patch16_video").url == (
            f"https://dl.fbaipublicfiles.com/video-mae/pretrain/mae_pretrain_vit_{size}_k400.pth")
    ref = RefMAE(**TOY, ddim=16, ddepth=2, dheads=2, pred_t_dim=4)
    sd = random_state(ref, seed=4)
    torch.save({"model": sd, "epoch": 3}, tmp_path / "mae_st.pth")
    entry = catalog.register(catalog.Weights("vit_mini_patch4_video", "t_mae_st", "mae", "test data", "MIT",
                                             url="https://weights.example.org/mae_st.pth", model_args=OURS))
    try:
        monkeypatch.setattr(weights, "fetch", lambda e: tmp_path / "mae_st.pth" if e is entry else None)
        model = hieralab.create_model("vit_mini_patch4_video.t_mae_st", pretrained=True)
    finally:
        catalog.unregister(entry.name)
    assert torch.equal(model.blocks[1].attn.qkv.weight, torch.cat([sd[f"blocks.1.attn.{n}.weight"] for n in "qkv"]))
    assert torch.equal(model.fc_norm.weight, sd["norm.weight"]) and torch.equal(model.pos_embed_class,
                                                                                 sd["pos_embed_class"])


def test_save_pretrained_round_trip(tmp_path, clip):
    model = hieralab.create_model("vit_mini_patch4_video").eval()
    model.save_pretrained(tmp_path / "m")
    again = hieralab.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(again(clip), model(clip))


# ---------------------------------------------------------------- refusals, one line each
def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_a_checkpoint_of_another_model_is_refused_in_one_line():
    vit = hieralab.create_model("vit_mini_patch4_video")
    hiera = hieralab.create_model("hiera_mini_8x32")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(vit, hiera.state_dict())
    assert "a Hiera" in one_line(e)
    image = hieralab.create_model("vit_mini_patch4_32")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(vit, image.state_dict())
    assert "an image model" in one_line(e)
    vit_b = {k: torch.zeros(v.shape) for k, v in meta_state(lambda: RefViT(16, 224, 16, 2, 768, 12, 12, 400)).items()}
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(vit, {"model": vit_b})
    assert "width 768, depth 12" in one_line(e) and "create vit_base_patch16_video instead" in one_line(e)
    patch14 = {k: torch.zeros(v.shape) for k, v in meta_state(lambda: RefViT(16, 224, 14, 2, 768, 12, 12, 4)).items()}
    with pytest.raises(CheckpointError) as e:  # MAE-ST's mae_vit_huge_patch14 factory builds 14 px patches
        load_checkpoint(vit, {"model": patch14})
    assert "create vit_base_patch16_video with t_patch_size=2, patch_size=14 instead" in one_line(e)
    with pytest.raises(CheckpointError) as e:  # a classifier's checkpoint is not an MAE's
        load_checkpoint(hieralab.create_model("mae_vit_mini_patch4_video"), vit.state_dict())
    one_line(e)


def test_a_clip_of_the_wrong_length_is_refused_in_one_line():
    vit = hieralab.create_model("vit_mini_patch4_video")
    with pytest.raises(ValueError) as e:
        vit(torch.randn(1, 3, 7, 32, 32))
    assert "T=7 -> a multiple of 2" in one_line(e)
    with pytest.raises(ValueError) as e:
        vit(torch.randn(1, 3, 32, 32))
    assert "[B, C, T, H, W] clips" in one_line(e)


def test_other_frame_counts_and_sizes_resample_the_tables():
    vit = hieralab.create_model("vit_mini_patch4_video").eval()
    with torch.no_grad():
        assert vit(torch.randn(1, 3, 16, 48, 48)).shape == (1, 10)
    longer = hieralab.create_model("vit_mini_patch4_video", input_size=(16, 32, 32))
    assert load_checkpoint(longer, vit.state_dict()) == []
    assert longer.pos_embed_temporal.shape == (1, 8, 64)


# ---------------------------------------------------------------- the backbone contract and the action task
def test_keeps_the_backbone_contract_and_trains_every_parameter(clip):
    model = hieralab.create_model("vit_mini_patch4_video", num_classes=3, drop_path_rate=0.1)
    check_backbone(model)
    assert model.ndim == 3 and not model.hierarchical and model.size_multiple == 4
    x = torch.randn(2, 3, 8, 32, 32)
    torch.manual_seed(1)
    out = model(x)
    out.logsumexp(-1).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == {n for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(1)
    model(x).logsumexp(-1).mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4)
    assert {"pos_embed_spatial", "pos_embed_temporal", "pos_embed_class", "cls_token"} <= model.no_weight_decay()
    assert model.layer_id("pos_embed_temporal") == 0 and model.layer_id("fc_norm.weight") == model.num_layers - 1
    features = hieralab.create_model("vit_mini_patch4_video", features_only=True, out_indices=1)
    (m,) = features(x)
    assert m.shape == (2, 64, 4, 8, 8) and features.feature_info.reduction() == [4]


def test_is_an_action_encoder_through_its_one_map():
    from hieralab.models.action import ActionDetector

    model = ActionDetector(encoder="vit_mini_patch4_video", num_classes=4, feature="stage1").eval()
    assert model.stages == [3] and model.strides == [4]  # the last block's map, at the tubelet stride
    boxes = [torch.tensor([[2.0, 2.0, 20.0, 30.0]]), torch.tensor([[0.0, 0.0, 31.0, 31.0], [8.0, 4.0, 16, 12]])]
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 32, 32), boxes).shape == (3, 4)
    with pytest.raises(ValueError, match=r"plain ViT with one map.*feature=last \(the default\) or stage1"):
        ActionDetector(encoder="vit_mini_patch4_video", feature="stage3")


# ---------------------------------------------------------------- the commands, end to end at toy size
@pytest.mark.slow  # about 15 s of CPU (a minute on a loaded machine)
@pytest.mark.skipif(not (__import__("hieralab.data.fashion_mnist", fromlist=["ROOT"]).ROOT
                         / "train-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST is not installed")
def test_pretrain_then_action_through_the_command_line(tmp_path):
    """``hieralab pretrain model=mae_vit_mini_patch4_video`` on a folder of MP4s, then ``hieralab action`` on the
    video ViT started from that run's encoder."""
    from hieralab.cli import main
    from hieralab.data.fmnist_actions import ensure_actions

    clips = ensure_actions(tmp_path / "clips", train=8, val=4, seed=0)
    toy = ["model_args.embed_dim=32", "model_args.num_heads=2", "data.img_size=32", "data.num_workers=0",
           "optim.batch_size=4", "max_steps=2"]
    assert main(["pretrain", "model=mae_vit_mini_patch4_video", f"data.source={clips / 'videos'}", *toy,
                 "recon_images=1", f"out_dir={tmp_path / 'mae'}"]) == 0
    assert (tmp_path / "mae" / "encoder" / "config.json").exists()
    assert main(["action", "model=vit_mini_patch4_video", "feature=stage1", f"init={tmp_path / 'mae'}",
                 f"data.actions_root={clips}", "data.actions_train=8", "data.actions_val=4", "pictures=0", *toy,
                 f"out_dir={tmp_path / 'action'}"]) == 0
    metrics = (tmp_path / "action" / "metrics.json").read_text()
    assert '"frame_mAP"' in metrics
