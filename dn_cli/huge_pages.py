"""Large CPU tensors on transparent huge pages: importing this before torch turns them on.

A CPU forward's feature maps are tens of megabytes (76 MB for 16 channels of four 544² tiles).
glibc maps every allocation that large afresh and unmaps it when freed, so each batch faulted
its maps in again 4 KB at a time — over a third of the model's time on the 2-core machine of
docs/benchmarks.md. torch maps them on 2 MB pages where ``THP_MEM_ALLOC_ENABLE`` is set when it
first allocates: 512 times fewer faults, nothing kept that is freed (keeping freed blocks in the
heap instead was tried: glibc's aligned allocations leave holes too small to reuse, and the
process grew by a batch's maps every batch). The ``dn`` command imports this first; a Python
program may set the variable itself before importing torch. A user's own setting is kept.
"""

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
