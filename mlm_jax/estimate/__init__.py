"""Estimates of a config's step on hardware this machine does not have.

XLA compiles for a device from a description of it (JAX's topology API: deviceless
ahead-of-time compilation), so the compiled step's memory and its optimized HLO are known
before a device is rented. `hlo` reads that HLO, `roofline` sums a per-kernel roofline over
it, `chips` holds the TPU datasheet figures and `tpu` compiles the train and eval steps for
a Cloud TPU slice. Commands: experiments/gpu_estimate.py (an H100), experiments/tpu_estimate.py.
"""
