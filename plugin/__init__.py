"""avatarforcing.plugin"""
