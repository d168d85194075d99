#!/usr/bin/env python3
"""Generates chorus's stand-in audio embedding model as an ONNX file (deterministic, byte for byte).

The graph follows the Perch 2.0 I/O contract by default: input `inputs` f32 [batch, 160000] (5 s at 32 kHz), output
`embedding` f32 [batch, 1536], L2-normalised. Inside: 20 ms frames with 50 % overlap (Reshape + Concat), a DFT as one
MatMul with a Hann-windowed cos|sin matrix, power and a 128-band mel filterbank folded into a second MatMul, log,
mean/std pooling over time (the mean centred across bands, so a change of gain does not move the embedding), a seeded
Gaussian projection to `dim`, and L2 normalisation. The ONNX `STFT` op is avoided on purpose: its results deviated
from a reference DFT on pure tones.

Every constant comes from integer arithmetic, Python's `math` (not vectorised numpy transcendental functions, whose
last bits can differ across CPUs) and numpy's PCG64 generator, so the same versions of numpy and onnx write the same
bytes on every machine; `tests/` pins the sha256 of the default output.

    gen_model.py --out standin.onnx                              # the default model (Perch 2.0 contract)
    gen_model.py --out m.onnx --sample-rate 48000 --window-seconds 3 --dim 1024 --input audio --output emb
"""

import argparse
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
N_MELS = 128
FMIN_HZ = 60.0


def hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: float) -> float:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def dft_matrix(frame: int) -> np.ndarray:
    """[frame, 2 * bins] real matrix: Hann-windowed cos | sin, so frames @ M gives re | im of the one-sided DFT."""
    bins = frame // 2 + 1
    cos_table = [math.cos(2.0 * math.pi * r / frame) for r in range(frame)]
    sin_table = [math.sin(2.0 * math.pi * r / frame) for r in range(frame)]
    hann = np.array([0.5 - 0.5 * cos_table[n] for n in range(frame)], dtype=np.float64)
    n = np.arange(frame, dtype=np.int64)[:, None]
    k = np.arange(bins, dtype=np.int64)[None, :]
    idx = (n * k) % frame
    cos_part = np.array(cos_table, dtype=np.float64)[idx] * hann[:, None]
    sin_part = -np.array(sin_table, dtype=np.float64)[idx] * hann[:, None]
    return np.concatenate([cos_part, sin_part], axis=1).astype(np.float32)


def mel_filterbank(frame: int, sample_rate: int) -> np.ndarray:
    """[bins, N_MELS] triangular filters (HTK mel scale), each normalised to unit area."""
    bins = frame // 2 + 1
    lo, hi = hz_to_mel(FMIN_HZ), hz_to_mel(sample_rate / 2.0)
    edges_hz = [mel_to_hz(lo + (hi - lo) * i / (N_MELS + 1)) for i in range(N_MELS + 2)]
    bin_hz = [k * sample_rate / frame for k in range(bins)]
    fb = np.zeros((bins, N_MELS), dtype=np.float64)
    for m in range(N_MELS):
        left, centre, right = edges_hz[m], edges_hz[m + 1], edges_hz[m + 2]
        for k, f in enumerate(bin_hz):
            if left < f < right:
                fb[k, m] = (f - left) / (centre - left) if f <= centre else (right - f) / (right - centre)
        area = fb[:, m].sum()
        if area > 0:
            fb[:, m] /= area
    return fb.astype(np.float32)


def build(sample_rate: int, window_seconds: float, dim: int, input_name: str, output_name: str, seed: int):
    samples = round(sample_rate * window_seconds)
    if abs(samples - sample_rate * window_seconds) > 1e-9:
        sys.exit(f"window of {window_seconds} s at {sample_rate} Hz is not a whole number of samples")
    frame = round(sample_rate * 0.02)
    if frame % 2:
        frame += 1
    hop = frame // 2
    if samples % hop:
        sys.exit(f"window of {samples} samples is not a multiple of the {hop}-sample hop")
    hops = samples // hop
    bins = frame // 2 + 1

    dft = dft_matrix(frame)
    fb = mel_filterbank(frame, sample_rate)
    power_to_mel = np.concatenate([fb, fb], axis=0)  # re² + im² folded into the mel MatMul
    rng = np.random.Generator(np.random.PCG64(seed))
    projection = (rng.standard_normal((2 * N_MELS, dim)) / math.sqrt(2 * N_MELS)).astype(np.float32)

    def const(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    inits = [
        const("hops_shape", np.array([0, hops, hop], dtype=np.int64)),
        const("zero", np.array([0], dtype=np.int64)),
        const("one", np.array([1], dtype=np.int64)),
        const("last", np.array([hops - 1], dtype=np.int64)),
        const("end", np.array([hops], dtype=np.int64)),
        const("axis1", np.array([1], dtype=np.int64)),
        const("dft", dft),
        const("power_to_mel", power_to_mel),
        const("log_floor", np.array(1e-6, dtype=np.float32)),
        const("var_floor", np.array(1e-6, dtype=np.float32)),
        const("projection", projection),
        const("norm_floor", np.array(1e-12, dtype=np.float32)),
    ]
    node = helper.make_node
    nodes = [
        # framing: [B, N] -> [B, hops, hop] -> concat(first hops-1, last hops-1) -> [B, hops-1, frame]
        node("Reshape", [input_name, "hops_shape"], ["halves"]),
        node("Slice", ["halves", "zero", "last", "axis1"], ["first"]),
        node("Slice", ["halves", "one", "end", "axis1"], ["second"]),
        node("Concat", ["first", "second"], ["frames"], axis=2),
        node("MatMul", ["frames", "dft"], ["spectrum"]),
        node("Mul", ["spectrum", "spectrum"], ["squares"]),
        node("MatMul", ["squares", "power_to_mel"], ["mel"]),
        node("Add", ["mel", "log_floor"], ["mel_floored"]),
        node("Log", ["mel_floored"], ["log_mel"]),
        # pooling over time
        node("ReduceMean", ["log_mel"], ["mean"], axes=[1], keepdims=0),
        node("Mul", ["log_mel", "log_mel"], ["log_mel_sq"]),
        node("ReduceMean", ["log_mel_sq"], ["mean_sq"], axes=[1], keepdims=0),
        node("Mul", ["mean", "mean"], ["mean_squared"]),
        node("Sub", ["mean_sq", "mean_squared"], ["variance"]),
        node("Max", ["variance", "var_floor"], ["variance_floored"]),
        node("Sqrt", ["variance_floored"], ["std"]),
        node("ReduceMean", ["mean"], ["band_mean"], axes=[1], keepdims=1),
        node("Sub", ["mean", "band_mean"], ["mean_centred"]),
        node("Concat", ["mean_centred", "std"], ["features"], axis=1),
        node("MatMul", ["features", "projection"], ["projected"]),
        node("ReduceL2", ["projected"], ["norm"], axes=[1], keepdims=1),
        node("Max", ["norm", "norm_floor"], ["norm_floored"]),
        node("Div", ["projected", "norm_floored"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "chorus_standin",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", samples])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", dim])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="chorus gen_model.py",
        producer_version="1",
        doc_string=(
            f"chorus stand-in embedding: log-mel ({N_MELS} bands, {frame}-sample frames, {hop} hop) mean/std pooled, "
            f"projected to {dim} dims, L2-normalised; {samples} samples at {sample_rate} Hz; seed {seed}; "
            f"{bins} DFT bins"
        ),
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where to write the .onnx file")
    parser.add_argument("--sample-rate", type=int, default=32000, help="model sample rate in Hz (default 32000)")
    parser.add_argument("--window-seconds", type=float, default=5.0, help="window length in seconds (default 5)")
    parser.add_argument("--dim", type=int, default=1536, help="embedding dimension (default 1536)")
    parser.add_argument("--input", default="inputs", help="input tensor name (default inputs)")
    parser.add_argument("--output", default="embedding", help="output tensor name (default embedding)")
    parser.add_argument("--seed", type=int, default=20260501, help="projection seed (default 20260501)")
    args = parser.parse_args()
    model = build(args.sample_rate, args.window_seconds, args.dim, args.input, args.output, args.seed)
    tmp = args.out + ".part"
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
