"""avatarforcing: a real-time interactive head avatar (Avatar Forcing) for video calls and streams.

The import package mirrors the repository's top-level folders, which this folder links to:

- ``avatarforcing.engine`` (``engine/``): compute — the shared causal core and one folder per
  model family; imports nothing from ``plugin`` or ``integrations``.
- ``avatarforcing.integrations`` (``integrations/``): adapters to the outside world (devices,
  screens, OBS, files); know nothing of models.
- ``avatarforcing.plugin`` (``plugin/``): the plugin API (``avatarforcing.plugin.api``), the
  built-in plugins and the application that wires sources → features → engine → renderer → sinks.
- ``avatarforcing.schemas`` (``schemas/``): neutral contracts every layer may import (the motion
  space, the media rates); no model code, no I/O.

docs/architecture.md has the map and the layer rules.
"""
