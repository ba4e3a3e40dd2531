"""`python -m provisioner` runs the same CLI as the `provisioner` console script."""

from provisioner.cli.main import main

if __name__ == "__main__":
    main()
