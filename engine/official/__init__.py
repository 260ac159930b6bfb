"""The official Avatar Forcing model family (CVPR 2026, arXiv 2601.00664), written anew.

What this family owns, on top of the shared causal core in ``avatarforcing.engine``:

- feature extractors: wav2vec2 audio features (`audio_encoder`, offline; `streaming_audio`,
  live) and the motion encoder of user and portrait frames (`motion_autoencoder`);
- its motion space: 512-d motion latents of the LIA-style motion autoencoder, decoded to 512²
  frames (`motion_autoencoder`, `stylegan_layers`);
- its checkpoint format: the official ``flow_transformer.pth`` / ``motion_autoencoder.pth`` and
  our safetensors export (`checkpoint`), deterministic formula weights of the reference fixtures
  (`formula_weights`) and the fixture runner that reproduces them (`fixture_runner`);
- `model` (the three parts together) and `pipeline` (raw inputs in, motion blocks out).
"""
