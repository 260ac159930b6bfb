"""avatarforcing.integrations"""
