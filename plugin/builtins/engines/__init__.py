"""Built-in engine plugins: ``default_avatar`` (the embedded avatar, engine ``default``) and
``official_engine`` (the Avatar Forcing model, engine ``official``)."""
