"""Model FLOPs of a training step and the peak throughput of known cards: model FLOPs utilisation
(MFU) for `benchmarks/train_speed.py` and the cost table, from this one count.

The count is the usual dense-Transformer one (Kaplan et al. 2020, PaLM App. B): per token and
layer 24 d^2 (QKV, output, 4d MLP) + 4 T d (scores and weighted sum), the LM head 2 d V, and a
training step is 3x the forward (backward = 2x). On a sequence of T tokens the decoder reads the
T - 1 that predict a next one (the last predicts nothing, so it is not decoded); a latent model adds
one encoder pass over all T without the LM head. Its latent heads (O(d p) per layer and sentence)
are left out, so MFU is a slight underestimate for DELLA.
"""

from __future__ import annotations

# Dense peak TFLOP/s (NVIDIA datasheets, SXM parts): bf16 tensor cores; tf32 tensor cores (what
# fp32 matmuls run at when torch allows TF32); fp32 without TF32 (CUDA cores).
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0},
    "H100": {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}
# Cards sold under the same name with lower clocks or power (the A100 PCIe keeps the SXM's peaks).
OTHER_PEAK_VARIANTS = {"H100": ("PCIE", "NVL"), "H200": ("NVL",)}


def forward_flops_per_token(n_layer: int, d: int, vocab: int, seq: float) -> tuple[float, float]:
    """(body, head) forward FLOPs per token of one GPT-2 pass over sequences of length seq."""
    return n_layer * (24 * d * d + 4 * seq * d), 2 * d * vocab


def train_flops_per_sequence(n_layer: int, d: int, vocab: int, seq: float, encoder: bool) -> float:
    """Forward + backward FLOPs of a training step on one sequence of seq tokens: the decoder over
    its seq - 1 predicting positions; `encoder`: a latent model's extra pass over all seq."""
    decoder_body, head = forward_flops_per_token(n_layer, d, vocab, seq - 1)
    encoder_body, _ = forward_flops_per_token(n_layer, d, vocab, seq)
    return 3 * ((seq - 1) * (decoder_body + head) + (seq * encoder_body if encoder else 0))


def vae_lm_floor(n_layer: int, d: int, vocab: int, seq: float) -> float:
    """The least step-time ratio of a latent model to the LM: their FLOPs on one sequence."""
    return (train_flops_per_sequence(n_layer, d, vocab, seq, encoder=True)
            / train_flops_per_sequence(n_layer, d, vocab, seq, encoder=False))


def cvae_floor(kind: str, n_layer: int, d: int, vocab: int, source: int, target: int) -> float:
    """The least step-time ratio of a latent CVAE to its plain backbone on (source, target) token
    lengths: the FLOPs of the plain model's pass plus the latent model's extra encoder passes, over
    the plain model's. gpt2: the plain pass is the decoder over source + target (less the last
    token, which predicts nothing); the CVAE adds the posterior's bidirectional pass over source +
    target and the condition's over the source. bart: the plain pass is the encoder over the source
    plus the decoder over the target less its last token (self- and cross-attention, 28 d^2 per
    token and layer, and 4 d^2 per source token and layer for the cross-attention keys and values);
    the CVAE adds the posterior's encoder pass over source + target (its condition reuses the
    source's encoder pass). Latent heads are left out."""
    def encoder(seq: int) -> float:  # a bidirectional pass without the LM head
        return seq * forward_flops_per_token(n_layer, d, vocab, seq)[0]

    both = source + target
    if kind == "gpt2":
        plain = (both - 1) * sum(forward_flops_per_token(n_layer, d, vocab, both - 1))
        return (plain + encoder(both) + encoder(source)) / plain
    if kind != "bart":
        raise ValueError(f"kind {kind!r}: expected gpt2 or bart")
    decoded = target - 1
    decoder = decoded * n_layer * (28 * d * d + 4 * decoded * d + 4 * source * d) + source * n_layer * 4 * d * d
    plain = encoder(source) + decoder + decoded * 2 * d * vocab
    return (plain + encoder(both)) / plain


def peak_tflops(device_name: str | None, precision: str) -> tuple[float | None, str]:
    """(dense peak, "") of a known card, or (None, why). precision: bf16 | tf32 | fp32."""
    if not device_name:
        return None, "not trained on a GPU: no peak FLOP rate to compare with"
    name = device_name.upper()
    for card, peaks in PEAK_TFLOPS.items():
        if card in name:
            other = [v for v in OTHER_PEAK_VARIANTS.get(card, ()) if v in name]
            if other:
                return None, (f"{device_name!r}: the {card} {other[0]} has another peak than the SXM card of "
                              "della.flops.PEAK_TFLOPS, which does not list it")
            return peaks[precision], ""
    return None, f"{device_name!r} is not in della.flops.PEAK_TFLOPS ({', '.join(PEAK_TFLOPS)})"


def matmul_precision(precision: str, allow_tf32: bool) -> str:
    """The peak column a run's matmuls use: bf16, or fp32 at tf32 when torch allows TF32."""
    if precision == "bf16":
        return "bf16"
    return "tf32" if allow_tf32 else "fp32"
