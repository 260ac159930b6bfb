"""The two pluggy markers of the `avatarforcing` project.

Plugin authors use `hookimpl` (re-exported as `avatarforcing.plugin.hookimpl`); `hookspec` marks
the specifications in `avatarforcing.plugin.api.hookspecs` and nothing else.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "avatarforcing"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
