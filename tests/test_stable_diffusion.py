"""The Stable Diffusion experiment on tiny, randomly initialised pipelines built here (no download, no network).

The pipelines are saved with `save_pretrained` into a temporary folder and loaded back through
`load_pipeline_pair`, as a user's local weights would be.
"""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("diffusers", reason="the image experiment needs the optional diffusers package")
pytest.importorskip("transformers", reason="the image experiment needs the optional transformers package")
pytest.importorskip("sklearn", reason="the accuracy needs scikit-learn")

from relreward_cli.errors import UserError  # noqa: E402
from relreward_cli.images.stable_diffusion import (  # noqa: E402
    RECORD_KEYS,
    SLD_MAX,
    LatentRewardNet,
    final_latent_accuracy,
    load_latent_record,
    load_pipeline_pair,
    read_prompts,
    record_latent_steps,
    save_latent_record,
    train_latent_reward,
)

PROMPTS = ["a cat on a mat", "a red car", "two dogs, running", "a quiet lake", "an old house"]
KW = dict(n_steps=4, guidance_scale=7.5, seed=3, height=8, width=8, batch_size=2)


def _tiny_tokenizer():
    """A CLIP tokenizer over the 256 byte symbols (no merges): no vocabulary file to download."""
    from transformers import CLIPTokenizer

    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    symbols = [chr(b) for b in bs] + [chr(256 + n) for n in range(256 - len(bs))]
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32), vocab


def _tiny_pipeline(unet_seed: int):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer, vocab = _tiny_tokenizer()
    torch.manual_seed(0)  # text encoder and VAE shared by both pipelines, UNets differ
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=32, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"]))
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8)
    torch.manual_seed(unet_seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=8, attention_head_dim=2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    for name, unet_seed in (("base", 1), ("expert", 2)):
        _tiny_pipeline(unet_seed).save_pretrained(root / name)
    return root / "base", root / "expert"


@pytest.fixture(scope="module")
def pair(folders):
    return load_pipeline_pair(str(folders[0]), str(folders[1]), "cpu", torch.float32)


@pytest.fixture(scope="module")
def record(pair):
    return record_latent_steps(*pair, PROMPTS, **KW)


def test_record_shapes_trajectory_and_determinism(pair, record):
    P, S = len(PROMPTS), KW["n_steps"]
    assert set(RECORD_KEYS) <= set(record)
    for key in ("x_t", "x_prev_base", "x_prev_expert"):
        assert record[key].shape == (P, S, 4, 8, 8)
    assert record["final_base"].shape == record["final_expert"].shape == (P, 4, 8, 8)
    assert record["timesteps"].tolist() == [751, 501, 251, 1]
    assert torch.equal(record["prompt_index"], torch.arange(P))
    assert torch.equal(record["x_t"][:, 1:], record["x_prev_base"][:, :-1])  # the base trajectory
    assert torch.equal(record["final_base"], record["x_prev_base"][:, -1])
    # one step of the expert from the base's latent differs from the base's, and its own run ends elsewhere
    assert (record["x_prev_expert"] - record["x_prev_base"]).abs().amax() > 1e-4
    assert not torch.allclose(record["final_expert"], record["final_base"])
    # seeded: the same call gives the same tensors; the prompts' noise does not depend on the batching
    again = record_latent_steps(*pair, PROMPTS, **KW)
    assert all(torch.equal(record[k], again[k]) for k in RECORD_KEYS)
    one_by_one = record_latent_steps(*pair, PROMPTS, **{**KW, "batch_size": 1})
    assert torch.allclose(one_by_one["x_prev_expert"], record["x_prev_expert"], rtol=1e-4, atol=1e-4)
    other = record_latent_steps(*pair, PROMPTS[:2], **{**KW, "seed": 4})
    assert not torch.allclose(other["x_t"][:, 0], record["x_t"][:2, 0])


def test_same_pipeline_gives_zero_targets(pair):
    base, _ = pair
    same = record_latent_steps(base, base, PROMPTS[:3], **KW)
    assert torch.equal(same["x_prev_expert"], same["x_prev_base"])
    assert torch.equal(same["final_expert"], same["final_base"])


def test_safe_pipeline_reproduces_safety_guidance(folders):
    from diffusers import StableDiffusionPipelineSafe
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig

    assert SLD_MAX == SafetyConfig.MAX
    base, safe = load_pipeline_pair(str(folders[0]), str(folders[0]), expert_safe=True)
    assert isinstance(safe, StableDiffusionPipelineSafe)
    kw = {**KW, "n_steps": 3}
    sld = record_latent_steps(base, safe, PROMPTS[:2], **kw)  # same weights: only SLD separates them
    assert (sld["x_prev_expert"] - sld["x_prev_base"]).abs().amax() > 1e-4
    assert not torch.allclose(sld["final_expert"], sld["final_base"])
    plain = record_latent_steps(base, safe, PROMPTS[:2], **kw, safety_config=None)
    assert torch.equal(plain["x_prev_expert"], plain["x_prev_base"])


def test_expert_own_run_matches_safe_pipeline_sampler(folders, monkeypatch):
    """`final_expert` is what StableDiffusionPipelineSafe itself samples (its latents before decoding)."""
    base, safe = load_pipeline_pair(str(folders[0]), str(folders[1]), expert_safe=True)
    rec = record_latent_steps(base, safe, PROMPTS[:1], **{**KW, "n_steps": 3})
    seen = {}
    monkeypatch.setattr(safe, "decode_latents", lambda latents: seen.setdefault("z", latents).new_zeros(1, 8, 8, 3)
                        .numpy())
    safe(PROMPTS[0], num_inference_steps=3, guidance_scale=7.5, latents=rec["x_t"][:, 0], output_type="np",
         **SLD_MAX)
    assert torch.allclose(seen["z"], rec["final_expert"], atol=1e-5)


def test_reward_net_shapes_and_double_backward():
    net = LatentRewardNet(4, dim=8, dim_mults=(1, 2))
    x = torch.randn(3, 4, 8, 6, requires_grad=True)
    for t in (torch.tensor([0, 5, 999]), torch.tensor([0.0, 2.5, 999.0]), torch.tensor(7)):
        assert net(x, t).shape == (3,)
    (grad,) = torch.autograd.grad(net(x, torch.tensor([1, 2, 3])).sum(), x, create_graph=True)
    grad.pow(2).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    with pytest.raises(UserError, match="channels"):
        net(torch.randn(2, 3, 8, 8), torch.zeros(2))


def test_training_loss_decreases_and_accuracy(record):
    logs = []
    net, losses = train_latent_reward(record, n_steps=150, batch_size=16, lr=3e-3, seed=0, device="cpu",
                                      on_log=lambda scalars, step: logs.append((step, scalars["loss"])),
                                      dim=16, log_every=50)
    assert len(losses) == 150 and [s for s, _ in logs] == [50, 100, 150]
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])
    _, losses_again = train_latent_reward(record, n_steps=5, batch_size=16, lr=3e-3, seed=0, device="cpu", dim=16)
    assert losses_again == losses[:5]
    metrics = final_latent_accuracy(net, record, seed=0)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["auroc"] <= 1.0
    assert metrics["n_fit_prompts"] + metrics["n_test_prompts"] == len(PROMPTS)
    assert all(map(torch.isfinite, torch.tensor([metrics["mean_reward_base"], metrics["mean_reward_expert"]])))


def test_record_roundtrip_and_bad_files(record, tmp_path):
    path = save_latent_record(record, tmp_path / "sub" / "record.pt")
    loaded = load_latent_record(path)
    assert all(torch.equal(loaded[k], record[k]) for k in RECORD_KEYS)
    with pytest.raises(UserError, match="does not exist"):
        load_latent_record(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a record")
    with pytest.raises(UserError, match="record it again"):
        load_latent_record(tmp_path / "junk.pt")


def test_missing_models_and_diffusers_give_user_errors(folders, tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"relreward\[images\]"):
        load_pipeline_pair(str(tmp_path / "nowhere"), str(folders[1]))
    with pytest.raises(UserError, match="model_index.json"):
        load_pipeline_pair(str(folders[0]), str(tmp_path))
    with pytest.raises(UserError, match="without network"):
        load_pipeline_pair(str(folders[0]), "no-such-org/no-such-model")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'relreward\[images\]'"):
        load_pipeline_pair(str(folders[0]), str(folders[1]))


def test_read_prompts(tmp_path):
    txt = tmp_path / "prompts.txt"
    txt.write_text("a cat\n\n  a dog  \n", encoding="utf-8")
    assert read_prompts(txt) == ["a cat", "a dog"]
    csv_file = tmp_path / "i2p.csv"
    csv_file.write_text('prompt,categories,hard\n"a man, angry",violence,1\n"line one\nline two",hate,0\n',
                        encoding="utf-8-sig")  # as spreadsheet programs write it, with a byte-order mark
    assert read_prompts(csv_file) == ["a man, angry", "line one\nline two"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(UserError, match="no prompts"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "bad.csv").write_text("text\nhello\n")
    with pytest.raises(UserError, match="`prompt` column"):
        read_prompts(tmp_path / "bad.csv")
    with pytest.raises(UserError, match="does not exist"):
        read_prompts(tmp_path / "none.txt")


def test_pipeline_command_records_and_extracts_offline(folders, tmp_path, cli):
    """`relreward pipeline env=stable_diffusion` on the tiny local pipelines: the record is made once and reused, the
    reward is scored on held-out prompts, and train-diffusion has nothing to train."""
    import json

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join([*PROMPTS, "a bowl of fruit", "a snowy street", "a tall tree"]) + "\n")
    base, expert = folders
    args = ["pipeline", "env=stable_diffusion", f"env.base_pipeline={base}", f"env.expert_pipeline={expert}",
            "env.expert_safe=false", f"env.prompts={prompts}", "env.record.n_steps=3", "env.record.height=8",
            "env.record.width=8", "env.record.batch_size=2", "extract.n_steps=30", "extract.batch_size=8",
            "extract.log_every=10", "reward.dim=8", "reward.dim_mults=[1,2]", f"run_root={tmp_path / 'runs'}",
            f"data_dir={tmp_path / 'data'}", "logger.mode=disabled", "threads=1"]
    proc = cli(args, tmp_path, check=True)
    summary = json.loads((tmp_path / "runs" / "pipeline" / "stable_diffusion-s0" / "metrics.json").read_text())
    assert 0.0 <= summary["heldout/accuracy"] <= 1.0 and 0.0 <= summary["heldout/auroc"] <= 1.0
    assert summary["heldout/n_test_prompts"] == 1  # 2 held-out prompts (20% of 8, at least 2): one to fit, one to test
    assert "Held-out prompts" in proc.stdout
    record = tmp_path / "data" / "relreward" / "stable_diffusion" / "default"
    assert (record / "train.pt").is_file() and (record / "test.pt").is_file()
    stamp = (record / "train.pt").stat().st_mtime_ns
    cli(args, tmp_path, check=True)
    assert (record / "train.pt").stat().st_mtime_ns == stamp  # same settings: the record is reused
    changed = cli([*args, "env.record.n_steps=2"], tmp_path)
    assert changed.returncode == 2 and "overwrite=true" in changed.stderr
