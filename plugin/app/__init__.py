"""The application: the ``avatarforcing`` CLI and what its commands run.

`cli` and `commands/` (one module a command), `config` (TOML + ``--set``), `session/` (the
live and offline session runtime), `render`, `data_prepare`, `doctor`, `weights` and `paths`
(where the official weights live), `model_loading`, `engine_bench`. It wires sources → features
→ engine → renderer → sinks from what plugins provide (``avatarforcing.plugin.host``).
"""
