"""The embedded avatar: a small model of the same architecture that ships inside the package.

It runs in real time on 2 CPU cores and needs nothing downloaded (the live engine ``default``).
What this family owns, on top of the shared causal core in ``avatarforcing.engine``:

- feature extractors: log-mel audio features (`audio_features`); the user's face parameters come
  from the face-parameter adapter (``avatarforcing.integrations.face_params``), which writes the
  shared motion-space schema;
- its motion space: 13 interpretable face parameters (the schema, ``avatarforcing.schemas``) and
  the procedural face drawn from them (`drawing`);
- its checkpoint: ``default_avatar.safetensors`` + ``default_avatar.json`` (`model`);
- its training data: synthetic conversations (`speech`, `conversation`, `synthetic_dataset`).
"""
