"""Model FLOPs of a training step and the peak throughput of known cards: model FLOPs utilisation
(MFU) for `benchmarks/train_speed.py` and the cost table, from this one count.

The count is the usual dense-Transformer one (Kaplan et al. 2020, PaLM App. B): per token and
layer 24 d^2 (QKV, output, 4d MLP) + 4 T d (scores and weighted sum), the LM head 2 d V, and a
training step is 3x the forward (backward = 2x). On a sequence of T tokens the decoder reads the
T - 1 that predict a next one (the last predicts nothing, so it is not decoded); a latent model adds
one encoder pass over all T without the LM head. A CVAE's example counts its source too (the
condition's pass, BART's encoder and cross-attention: `forward_flops`), and its MFU divides by the
target tokens the loss predicts. Latent heads (O(d p) per layer and sentence) are left out, so MFU
is a slight underestimate for DELLA.
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


def forward_flops(kind: str, n_layer: int, d: int, vocab: int, sequence: float, source: float = 0,
                  latent: bool = False) -> float:
    """Forward FLOPs of one example: `sequence` tokens on the decoder, `source` the condition's tokens
    of a CVAE (0: a sentence); `latent`: with a latent model's extra encoder passes. Latent heads
    are left out.

    gpt2: the decoder over sequence - 1 positions (the last token predicts nothing; a CVAE's
    sequence is source </s> target </s>); a latent model adds the posterior's bidirectional pass over
    the sequence and, for a CVAE, the condition's over the source. bart (a CVAE; `sequence` is the
    decoder's </s> <s> target </s>): the encoder over the source plus the decoder over sequence - 1
    positions (self- and cross-attention, 28 d^2 per token and layer, and 4 d^2 per source token and
    layer for the cross-attention keys and values) and its head; a latent model adds the
    posterior's encoder pass over source + sequence (its condition reuses the source's pass)."""
    def encoder(seq: float) -> float:  # a bidirectional pass without the LM head
        return seq * forward_flops_per_token(n_layer, d, vocab, seq)[0]

    decoded = sequence - 1
    if kind == "gpt2":
        plain = decoded * sum(forward_flops_per_token(n_layer, d, vocab, decoded))
        extra = encoder(sequence) + (encoder(source) if source else 0)
    elif kind == "bart":
        decoder = decoded * n_layer * (28 * d * d + 4 * decoded * d + 4 * source * d) + source * n_layer * 4 * d * d
        plain = encoder(source) + decoder + decoded * 2 * d * vocab
        extra = encoder(source + sequence)
    else:
        raise ValueError(f"kind {kind!r}: expected gpt2 or bart")
    return plain + (extra if latent else 0)


def train_flops_per_sequence(n_layer: int, d: int, vocab: int, seq: float, encoder: bool) -> float:
    """Forward + backward FLOPs of a GPT-2 training step on one sentence of seq tokens; `encoder`:
    a latent model's."""
    return 3 * forward_flops("gpt2", n_layer, d, vocab, seq, latent=encoder)


def vae_lm_floor(n_layer: int, d: int, vocab: int, seq: float) -> float:
    """The least step-time ratio of a latent model to the LM: their FLOPs on one sequence."""
    return (train_flops_per_sequence(n_layer, d, vocab, seq, encoder=True)
            / train_flops_per_sequence(n_layer, d, vocab, seq, encoder=False))


def cvae_floor(kind: str, n_layer: int, d: int, vocab: int, source: int, target: int) -> float:
    """The least step-time ratio of a latent CVAE to its plain backbone on (source, target) token
    lengths (forward_flops' terms): gpt2's decoder sequence is source + target, bart's the target."""
    sequence = source + target if kind == "gpt2" else target
    return (forward_flops(kind, n_layer, d, vocab, sequence, source, latent=True)
            / forward_flops(kind, n_layer, d, vocab, sequence, source, latent=False))


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
