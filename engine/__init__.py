"""avatarforcing.engine"""
