"""Randomized conformance cases: every op and layer against its PyTorch twin and an fp64
reference, on shapes drawn from a printed seed. The GPU suite (tests/gpu) runs hundreds of
cases per family; tests/kernels/test_conformance_interpreted.py runs a few tiny ones of the
same families under Triton's interpreter on the CPU."""
