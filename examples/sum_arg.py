#!/usr/bin/env python3
"""Python twin of examples/sum_arg: reads argument `data` (mapped per mmap_mode) fully.

    orchestrator run -m data=@big.bin x=1..4 -- python3 examples/sum_arg.py
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import orchestrator_worker as ow  # noqa: E402

data = ow.open_arg("data")
total = 0
for start in range(0, len(data), 1 << 20):
    total += sum(data[start:start + (1 << 20)])
print(f"job {ow.job_context()['num']}: {len(data)} bytes, sum {total}")
