"""Built-in plugins. Each module is registered through an entry point in avatarforcing's
``pyproject.toml`` (group ``avatarforcing``), exactly like an external plugin."""
