"""The `provisioner` command line: one module per noun, errors translated once in main.py."""
