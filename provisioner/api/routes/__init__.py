"""Route modules: admin plane (nodes.py, config.py) and node plane (node.py)."""
