"""`vmctl compare`: the same workload as a plain container and inside a microVM, side by side.

sandboxes.py (runc) / engines.py (docker, podman) / microvm.py: the contenders behind one interface;
start_time.py, footprint.py, isolation.py (+ templates/probes/isolation.sh), perf.py: the measurements;
results.py: the row model; report.py: terminal, JSON, CSV and HTML views; run.py: the orchestration.
"""
