"""glibc's malloc told to keep freed memory: XLA:CPU's steps then stop paying the kernel for it.

XLA:CPU allocates each execution's buffers (activations, gradients, temporaries: megabytes)
with malloc and frees them when the step ends. glibc serves a block that large with a fresh
`mmap` and returns it with `munmap`, or trims the heap's free top back to the kernel, so every
step faults its memory in again, page by page, zero-filled by the kernel. Raising the mmap
threshold and the trim threshold keeps those pages in the process for the next step.

Measured (`lmjax bench train --steps N` run with and without the call, 2 cores of an AMD EPYC):
- shakespeare_char (0.8M params, 768 tokens a step): 50.9 -> 35.1 ms a step; system time
  9.2 -> 0.8 s of the 21.5 -> 17.4 s process; peak RSS 568 -> 593 MiB.
- gpt_tiny and bert_tiny (steps of 200-450 ms): unchanged (449 / 452 ms, 226 / 227 ms).
- PyTorch in the same process gains from it too: `bench train --vs-torch` runs both sides with
  it, so gpt_tiny's ratio there went 1.02x -> 0.93x (torch 4,342 -> 4,793 tokens/s, lmjax the same).

The CLI calls `keep_freed_memory()` once, before JAX allocates anything. Where the C library
is not glibc (macOS, musl), or the host runs its steps on an accelerator, it changes nothing
that matters: the device allocator holds the step's buffers there.
"""
from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1   # <malloc.h>: free heap top kept up to this many bytes
M_MMAP_THRESHOLD = -3   # <malloc.h>: blocks at least this large get their own mmap
KEEP_BELOW = 1 << 30    # 1 GiB: larger blocks still get their own mapping, and go back when freed


def keep_freed_memory() -> bool:
  """Set glibc's mmap and trim thresholds to KEEP_BELOW; False (and nothing done) off glibc."""
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version      # only glibc has it
  except (OSError, AttributeError):
    return False
  return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BELOW))
