"""Data-path kernels: small functions over buffers, each with a NumPy/pure-Python reference.

The fast path of each kernel is tested equal to its reference (tests/test_kernels.py).
"""
from .checksum import crc32c, crc32c_reference, crc_trailer, split_trailer
from .boxcopy import copy_region, copy_region_reference
from .buffers import ThreadScratch, aligned_empty
from .fingerprint import combine as combine_fingerprints
from .fingerprint import fingerprint_box, fingerprint_reference
from .chunkcodec import (BLOCK_BYTES, decode_chunk, decode_chunk_reference, encode_chunk,
                         encode_chunk_reference)

__all__ = ["crc32c", "crc32c_reference", "crc_trailer", "split_trailer", "copy_region",
           "copy_region_reference", "encode_chunk", "encode_chunk_reference", "decode_chunk",
           "decode_chunk_reference", "BLOCK_BYTES", "aligned_empty", "fingerprint_box",
           "fingerprint_reference", "combine_fingerprints", "ThreadScratch"]
