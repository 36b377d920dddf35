"""Workspace images: environment manifests, the offline base, and content-hashed builds.

$ labdock images build python        # builds labdock/python:<hash12> once, then skips
"""
