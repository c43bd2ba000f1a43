import numpy as np
import torch

from neurorecon.foundation import tiny_random_foundation


def test_tiny_foundation_shapes_and_round_trips():
    fm = tiny_random_foundation(image_size=32)
    tokens = fm.text_tokens(["a red ball", "two cars"])
    assert tokens.shape == (2, 32, 64) and fm.text_shape == (32, 64)
    assert fm.empty_tokens(3).shape == (3, 32, 64)
    emb = fm.text_embeds(["a red ball"])
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(1))
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    assert fm.image_embeds(images).shape == (3, fm.embed_dim)
    z = fm.encode_images(images)
    assert z.shape == (3, fm.latent_channels, fm.latent_size, fm.latent_size) == (3, 4, 16, 16)
    out = fm.decode_latents(z)
    assert out.shape == (3, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    eps = fm.unet(z, torch.tensor([10, 20, 30]), encoder_hidden_states=tokens[:1].expand(3, -1, -1)).sample
    assert eps.shape == z.shape
    eps = fm.unclip_unet(z, torch.tensor([10, 20, 30]), encoder_hidden_states=tokens[:1].expand(3, -1, -1),
                         class_labels=fm.unclip_class_labels(fm.image_embeds(images, normalize=False), 100)).sample
    assert eps.shape == z.shape
    imgs = fm.sample(tokens, num_steps=2, scheduler="dpm++", image_embeds=fm.image_embeds(images[:2], normalize=False))
    assert imgs.shape == (2, 3, 32, 32) and 0 <= imgs.min() and imgs.max() <= 1
    for kind in ("ddim", "dpm++", "ddpm"):
        sched = fm.make_scheduler(kind)
        assert sched.config.num_train_timesteps == 1000 and sched.config.beta_schedule == "scaled_linear"
    ids = fm.lm_tokenizer("what colour is the ball? <image>", return_tensors="pt", return_token_type_ids=False)
    assert fm.lm_tokenizer.convert_tokens_to_ids("<image>") in ids["input_ids"][0].tolist()
    assert fm.lm(**ids).logits.shape[-1] == len(fm.lm_tokenizer)
