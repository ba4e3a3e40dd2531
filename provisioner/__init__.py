"""provisioner: a bare-metal provisioning appliance for HPC clusters."""

__version__ = "0.1.0"
