"""Peak dense bf16 tensor throughput and memory bandwidth of the GPUs memlab reports MFU and
decoding floors for (vendor data sheets)."""

from __future__ import annotations

# Matched in order against torch.cuda.get_device_name(); FLOP/s without sparsity.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM and HBM3 boards
    ("GH200", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """The peak for ``device_name``, or None for a GPU not in the table (MFU is then not reported)."""
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


# Bytes/s of device memory, matched in order like PEAK_BF16_FLOPS.
MEMORY_BANDWIDTH = (
    ("H100 PCIe", 2.0e12),
    ("H100 NVL", 3.9e12),
    ("H100", 3.35e12),
    ("GH200", 4.0e12),
    ("H200", 4.8e12),
    ("A100", 2.0e12),
)


def memory_bandwidth(device_name: str) -> float | None:
    """The memory bandwidth of ``device_name`` in bytes/s, or None for a GPU not in the table."""
    for key, bandwidth in MEMORY_BANDWIDTH:
        if key in device_name:
            return bandwidth
    return None
