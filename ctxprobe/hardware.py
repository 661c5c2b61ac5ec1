"""Published peak figures of the cards ctxprobe reports utilisation against (no torch import)."""

H100_SXM_BF16_TFLOPS = 989.0  # dense bf16, no sparsity
