#!/usr/bin/env bash
# Run the numeric test files under every oneDNN ISA cap this CPU allows, so that a suite developed on one CPU is
# checked against the kernels of older ones (and, with the default, the newest this CPU has). For each cap the
# matching ATen kernel level is set too (ATEN_CPU_CAPABILITY), so PyTorch's own vectorised kernels follow.
#
#   bash scripts/check_isas.sh                 # every cap this CPU supports, the numeric test files
#   bash scripts/check_isas.sh tests/test_x.py # other test files
#
# Prints one line per cap (passed / FAILED, with pytest's summary) and exits non-zero if any cap failed.
set -uo pipefail
cd "$(dirname "$0")/.."

files=("$@")
if [ ${#files[@]} -eq 0 ]; then
    files=(tests/test_parity.py tests/test_oracle.py tests/test_outputs.py tests/test_optimize.py
           tests/test_quantize.py tests/test_export.py tests/test_export_int8.py tests/test_family.py)
fi

flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { [[ " $flags " == *" $1 "* ]]; }

# cap | ATen level | the CPU flags it needs
caps=()
has sse4_1 && caps+=("SSE41|default")  # a CPU without AVX2: oneDNN's SSE4.1 kernels, ATen's unvectorised default
has avx2 && caps+=("AVX2|avx2")
has avx512f && has avx512bw && has avx512vl && has avx512dq && caps+=("AVX512_CORE|avx512")
has avx512_vnni && caps+=("AVX512_CORE_VNNI|avx512")
has avx512_bf16 && caps+=("AVX512_CORE_BF16|avx512")
has amx_bf16 && has amx_int8 && caps+=("AVX512_CORE_AMX|avx512")
caps+=("default|default")

status=0
summary=()
for entry in "${caps[@]}"; do
    cap=${entry%%|*}
    aten=${entry##*|}
    log=$(mktemp)
    if [ "$cap" = default ]; then
        env -u ONEDNN_MAX_CPU_ISA -u ATEN_CPU_CAPABILITY python -m pytest -q -p no:cacheprovider "${files[@]}" >"$log" 2>&1
    else
        ONEDNN_MAX_CPU_ISA=$cap ATEN_CPU_CAPABILITY=$aten python -m pytest -q -p no:cacheprovider "${files[@]}" >"$log" 2>&1
    fi
    rc=$?
    result=$(grep -E '[0-9]+ (passed|failed|error)' "$log" | tail -1 | tr -d '=' | xargs)
    if [ $rc -eq 0 ]; then
        summary+=("$cap: passed ($result)")
    else
        summary+=("$cap: FAILED ($result); log kept in $log")
        status=1
        continue
    fi
    rm -f "$log"
done
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%s\n' "${summary[@]}"
exit $status
