"""Serving avatar sessions to remote clients: the wire protocol (`protocol`), one session on a
replica (`session`) and the Ray Serve application (`app`) behind ``avatarforcing serve``."""
