"""The lab's image: reuse IMAGES/NAME/current when it exists, else build it with
`provisioner image build KICKSTART --name NAME` (the images helper's builder)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from provisioner.errors import ConfigError
from provisioner.lab.lab import Lab
from provisioner.lab.labconfig import LabOptions, lab_env

BUILD_TIMEOUT = 1200.0


def image_ready(options: LabOptions, name: str | None = None) -> bool:
    return (options.images_dir / (name or options.image) / "current").exists()


def builder_available(lab: Lab) -> bool:
    return lab.cli("image", "build", "--help", inside=False, check=False).returncode == 0


def ensure_image(lab: Lab, options: LabOptions, *, say: Callable[[str], None] = print,
                 force: bool = False, variables: tuple[str, ...] = ()) -> float:
    """Build the lab image unless it exists (or `force`); returns the seconds spent."""
    if image_ready(options) and not force:
        say(f"lab: reusing image {options.image} from {options.images_dir}")
        return 0.0
    if not builder_available(lab):
        raise ConfigError("lab: no image and no image builder (`provisioner image build`)")
    say(f"lab: building image {options.image} from {options.kickstart} (first time: fetches "
        "the kernel, a few minutes)")
    began = time.monotonic()
    args = ["image", "build", options.kickstart, "--name", options.image]
    for var in variables:
        args += ["--var", var]
    log = options.root / "image-build.log"
    with log.open("w") as out:
        result = subprocess.run(lab.argv(*args), stdout=out, stderr=subprocess.STDOUT,
                                timeout=BUILD_TIMEOUT, check=False, env=lab_env())
    if result.returncode != 0:
        raise ConfigError(f"lab: image build failed ({result.returncode}); log {log}:\n"
                          f"{log.read_text()[-3000:]}")
    spent = time.monotonic() - began
    say(f"lab: image {options.image} built in {spent:.0f} s")
    return spent
