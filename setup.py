"""Imitating continual learners: teachers (learners/), imitators (imitator/), entry points (launch/)."""

import setuptools

setuptools.setup(
    name="imitating-learners",
    version="0.1.0",
    description="Meta-learn imitators of hidden continual-learning teachers, in JAX.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["learners*", "imitator*", "launch*"]),
    include_package_data=True,
    install_requires=[
        "jax>=0.7,<0.12",
        "flax>=0.11,<0.14",
        "optax>=0.2.5,<0.4",
        "orbax-checkpoint>=0.11,<0.14",
        "tensorflow-datasets>=4.9.8,<5",
        "array-record>=0.7",
        "absl-py>=2.1",
        "ml-collections>=1.0",
        "numpy>=1.26,<3",
        "matplotlib>=3.8",
        "scikit-learn>=1.4",
        "mnist1d>=0.0.2",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "chex>=0.1.88"],
        "bench": ["torch>=2.5"],
        "tensorboard": ["tensorboardX>=2.6"],
    },
)
