"""minirlhf: RLHF from scratch. The package holds the model, the RLHF core and the plumbing; the top-level scripts
are the algorithms."""

import os

# MKL's strict reproducible mode: a matmul gives the same digits whatever the number of threads (Intel MKL's
# "conditional numerical reproducibility", strict for gemm). With model.LayerNorm, a CPU run is then the same on
# one thread as on two, so the thread count can follow the free cores (training.set_cpu_threads). MKL reads the
# variable at its first call, after `import torch`; a value the user set wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
