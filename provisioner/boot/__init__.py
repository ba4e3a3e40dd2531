"""The HTTP boot plane: kernels, images and overlays sent with sendfile, and rendered scripts.

No authentication and no secrets (DESIGN.md section 6): everything here is safe to give to any
machine on the provisioning network.
"""
