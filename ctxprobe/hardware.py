"""Published peak figures of the cards ctxprobe reports utilisation against (no torch import)."""

H100_SXM_BF16_TFLOPS = 989.0  # dense bf16, no sparsity

# Dense bf16 peaks (no sparsity) by a fragment of torch.cuda.get_device_name(), most specific
# first. A card not listed (and any CPU) has no known peak: MFU is then left out, not computed
# against another card's peak.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", H100_SXM_BF16_TFLOPS),
    ("H200", 989.0),
    ("A100", 312.0),
)


def bf16_peak_tflops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a CUDA card by its name; None for a CPU or a card not listed."""
    for fragment, peak in BF16_PEAK_TFLOPS:
        if device_name and fragment in device_name:
            return peak
    return None
