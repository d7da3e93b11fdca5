#!/usr/bin/env bash
# Tenth session, fourth device call (issue 16): call 2's one failing gpu test after the fix (the FLOP formula of
# vtlab::residual_addmm_, which torch.utils.flop_counter could not see into), and the residual-stream gpu tests.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
date -u > $OUT/env.txt
timeout 100 python3 -m pytest -q -m gpu tests/test_gpu.py::test_bench_on_cuda_records_flops_equal_to_the_closed_form \
    tests/test_fastpaths.py -p no:cacheprovider 2>&1 | tail -15 | tee $OUT/pytest_gpu.log
echo "call wall ${SECONDS}s" >> $OUT/env.txt
