"""``build.sh`` for a device that builds its own engines with ``trtexec``.

Engines do not move across GPUs or TensorRT versions, so the edge bundle
carries the FP16 ONNX and a script that builds on the device. The script
builds the same ONNX twice, with and without 2:4 sparse kernels, so the two
engines differ only in that, and exports for each what `sparsecc bench
--backend tensorrt` reads back:

- ``BUILD/{sparse,dense}.build.log``: the builder log (sparsity lines);
- ``BUILD/{sparse,dense}.layers.json``: ``--exportLayerInfo`` (needs
  ``--profilingVerbosity=detailed``);
- ``BUILD/{sparse,dense}.profile.json``: ``--exportProfile``, per-layer times;
- ``BUILD/{sparse,dense}.times.json``: ``--exportTimes``, per-iteration times;
- ``BUILD/{sparse,dense}.outputs.json``: outputs on the golden inputs,
  checked by ``compare.py``.

TensorRT 10 builds with ``--fp16`` (weak typing); TensorRT 11 removed every
precision flag and builds the types the ONNX graph has, which are FP16
already. The major version comes from ``--trt`` or trtexec's banner.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

__all__ = ["Profile", "shape_spec", "profile_shapes", "trtexec_build_args", "build_script", "FLAGS_BY_MAJOR",
           "SUPPORTED_MAJORS"]

SUPPORTED_MAJORS = (10, 11)
# Extra build flags per TensorRT major version.
FLAGS_BY_MAJOR: dict[int, tuple[str, ...]] = {10: ("--fp16",), 11: ()}

# input name -> (min, opt, max) shapes
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def shape_spec(shapes: Mapping[str, Sequence[int]]) -> str:
    """``{"x": (1, 3)}`` -> ``"x:1x3"`` (trtexec's shape syntax; a 0-d tensor is ``x:scalar``)."""
    parts = []
    for name, shape in shapes.items():
        dims = "x".join(str(int(d)) for d in shape) if len(shape) else "scalar"
        parts.append(f"{name}:{dims}")
    return ",".join(parts)


def profile_shapes(
    inputs: Sequence[Any],
    ranges: Mapping[str, tuple[int, int | None]],
    example: Mapping[str, Sequence[int]],
    unbounded_factor: int = 8,
) -> Profile:
    """One optimisation profile: min and max from each named dim's range, opt from the example inputs.

    ``inputs``: `TensorSpec`-like objects (``name``, ``shape`` with named
    dynamic dims); ``ranges``: dim name -> (lower, upper or None); a dim with
    no upper bound gets ``unbounded_factor`` times its example size.
    """
    out: Profile = {}
    for spec in inputs:
        ex = tuple(int(d) for d in example[spec.name])
        lo, hi = [], []
        for d, e in zip(spec.shape, ex):
            if isinstance(d, int):
                lo.append(d)
                hi.append(d)
                continue
            low, up = ranges.get(str(d), (e, e))
            low = max(int(low), 1)
            up = int(up) if up is not None else max(e * unbounded_factor, e)
            lo.append(min(low, e))
            hi.append(max(up, e))
        out[spec.name] = (tuple(lo), ex, tuple(hi))
    return out


def trtexec_build_args(onnx_file: str, profile: Profile, major: int, sparse: bool, prefix: str,
                       golden_inputs: Mapping[str, str] | None = None,
                       golden_shapes: Mapping[str, Sequence[int]] | None = None,
                       shape_vars: bool = False) -> list[str]:
    """The trtexec arguments (without the program) for one engine, paths relative to the build folder.

    ``shape_vars`` writes the profile as ``$MIN_SHAPES`` / ``$OPT_SHAPES`` /
    ``$MAX_SHAPES`` (build.sh sets them, overridable from the environment).
    """
    if major not in SUPPORTED_MAJORS:
        raise ValueError(f"TensorRT {major} is not supported; supported: {', '.join(map(str, SUPPORTED_MAJORS))}")
    args = [f"--onnx={onnx_file}", f"--saveEngine={prefix}.plan"]
    args += list(FLAGS_BY_MAJOR[major])
    args += [f"--sparsity={'enable' if sparse else 'disable'}", "--profilingVerbosity=detailed",
             "--timingCacheFile=timing.cache"]
    if any(lo != hi for lo, _, hi in profile.values()):
        if shape_vars:
            args += ["--minShapes=$MIN_SHAPES", "--optShapes=$OPT_SHAPES", "--maxShapes=$MAX_SHAPES"]
        else:
            args += [f"--minShapes={shape_spec({k: v[0] for k, v in profile.items()})}",
                     f"--optShapes={shape_spec({k: v[1] for k, v in profile.items()})}",
                     f"--maxShapes={shape_spec({k: v[2] for k, v in profile.items()})}"]
    args += [f"--exportLayerInfo={prefix}.layers.json", f"--exportProfile={prefix}.profile.json",
             f"--exportTimes={prefix}.times.json", "--separateProfileRun"]
    if golden_inputs:
        args.append("--loadInputs=" + ",".join(f"{k}:{v}" for k, v in golden_inputs.items()))
        if golden_shapes and any(lo != hi for lo, _, hi in profile.values()):
            args.append(f"--shapes={shape_spec(golden_shapes)}")
        args.append(f"--exportOutput={prefix}.outputs.json")
    return args


_HEADER = """\
#!/usr/bin/env bash
# Build TensorRT engines for {model} on this device (written by sparsecc {version}).
#
#   ./build.sh [--trt 10|11] [--out DIR] [--trtexec PATH]
#
# Builds {onnx} twice: with 2:4 sparse kernels (sparse.plan) and without
# (dense.plan), same FP16 weights. Each build writes its log, layer info,
# per-layer profile, per-iteration times and its outputs on the golden inputs
# into DIR (default: ./build), then compare.py checks those outputs against
# golden.npz. Afterwards, wherever sparsecc is installed:
#
#   sparsecc bench <bundle> --backend tensorrt --out trt.json
#
# prints which layers ran 2:4 sparse, which TensorRT timed dense faster, and
# the dense/sparse latency ratio. Engines are specific to this GPU and
# TensorRT version: build them here, do not copy them elsewhere.
#
# The optimisation profile (trtexec shape syntax) can be overridden, e.g. to
# tune for the batch and sequence length the device will serve:
#   OPT_SHAPES={opt_example} ./build.sh
set -euo pipefail

MIN_SHAPES="${{MIN_SHAPES:-{min_shapes}}}"
OPT_SHAPES="${{OPT_SHAPES:-{opt_shapes}}}"
MAX_SHAPES="${{MAX_SHAPES:-{max_shapes}}}"

HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
OUT="$HERE/build"
TRT_MAJOR=""
TRTEXEC="${{TRTEXEC:-trtexec}}"
PYTHON="${{PYTHON:-python3}}"

usage() {{ sed -n '2,21p' "${{BASH_SOURCE[0]}}" | sed 's/^# \\{{0,1\\}}//'; }}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --trt) TRT_MAJOR="${{2:?--trt needs 10 or 11}}"; shift 2 ;;
    --out) OUT="${{2:?--out needs a folder}}"; shift 2 ;;
    --trtexec) TRTEXEC="${{2:?--trtexec needs a path}}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

if ! command -v "$TRTEXEC" >/dev/null 2>&1; then
  echo "build.sh: trtexec not found; put it on PATH or pass --trtexec /usr/src/tensorrt/bin/trtexec" >&2
  exit 1
fi

if [[ -z "$TRT_MAJOR" ]]; then
  # trtexec's banner: "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] ..." (10.3.0).
  code="$("$TRTEXEC" --help 2>&1 | grep -o 'TensorRT v[0-9]*' | head -n 1 | tr -dc '0-9' || true)"
  if [[ -n "$code" ]]; then
    if (( code >= 100000 )); then TRT_MAJOR=$(( code / 10000 )); else TRT_MAJOR=$(( code / 1000 )); fi
  fi
fi
case "$TRT_MAJOR" in
  10|11) ;;
  "") echo "build.sh: could not read the TensorRT version from '$TRTEXEC --help'; pass --trt 10 or --trt 11" >&2; exit 1 ;;
  *) echo "build.sh: TensorRT $TRT_MAJOR is not supported (10 or 11)" >&2; exit 1 ;;
esac

mkdir -p "$OUT"
cd "$OUT"
echo "building with TensorRT $TRT_MAJOR into $OUT"
"""


def _quote(arg: str) -> str:
    """Double-quoted, so ``$HERE`` expands; anything else shell-active is refused."""
    rest = arg.replace("$HERE/", "")
    for var in ("$MIN_SHAPES", "$OPT_SHAPES", "$MAX_SHAPES"):
        rest = rest.replace(var, "")
    if any(c in rest for c in '"$`\\!'):
        raise ValueError(f"cannot put {arg!r} in build.sh: it holds a shell-active character")
    return f'"{arg}"'


def _command(args: Sequence[str]) -> str:
    return '"$TRTEXEC" \\\n    ' + " \\\n    ".join(_quote(a) for a in args)


def build_script(model: str, version: str, onnx_file: str, profile: Profile,
                 golden_inputs: Mapping[str, str], golden_shapes: Mapping[str, Sequence[int]]) -> str:
    """The bundle's ``build.sh``: one branch per supported TensorRT major version."""
    onnx_path = f"$HERE/{onnx_file}"
    inputs = {k: f"$HERE/{v}" for k, v in golden_inputs.items()}
    specs = [shape_spec({k: v[i] for k, v in profile.items()}) for i in range(3)]
    text = _HEADER.format(model=model or "this model", version=version, onnx=onnx_file, min_shapes=specs[0],
                          opt_shapes=specs[1], max_shapes=specs[2], opt_example=specs[1])
    text += "\nbuild() {  # build <sparse|dense>\n  case \"$TRT_MAJOR\" in\n"
    for major in SUPPORTED_MAJORS:
        text += f"    {major})\n"
        for variant in ("sparse", "dense"):
            args = trtexec_build_args(onnx_path, profile, major, variant == "sparse", variant, inputs, golden_shapes,
                                      shape_vars=True)
            cmd = _command(args).replace("\n", "\n    ")
            text += f"      if [[ \"$1\" == {variant} ]]; then\n        {cmd} \\\n        2>&1 | tee {variant}.build.log\n      fi\n"
        text += "      ;;\n"
    text += "  esac\n}\n\n"
    text += ('build sparse\nbuild dense\n\n'
             'echo "sparsity lines from the builder:"\n'
             "grep -h '(Sparsity)' sparse.build.log || echo '  none: was the log cut?'\n\n"
             'for v in sparse dense; do\n'
             '  "$PYTHON" "$HERE/compare.py" "$HERE/golden.npz" "$v.outputs.json" --label "$v"\n'
             'done\n'
             'echo "done: engines and reports in $OUT"\n')
    return text
