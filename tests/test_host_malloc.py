"""host_malloc.keep_freed_memory: glibc serves a step-sized block from its heap, not a fresh mmap."""
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, sys
from lmjax import host_malloc

class Mallinfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in
              ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def mapped_blocks_while_holding(nbytes):
  p = libc.malloc(nbytes)
  held = libc.mallinfo2().hblks
  libc.free(p)
  return held - libc.mallinfo2().hblks

size = 64 << 20    # above glibc's largest dynamic mmap threshold (32 MiB): mapped by default
before = mapped_blocks_while_holding(size)
done = host_malloc.keep_freed_memory()
after = mapped_blocks_while_holding(size)
big = mapped_blocks_while_holding(host_malloc.KEEP_BELOW + (1 << 20))
print(before, done, after, big)
"""


def test_step_sized_blocks_come_from_the_heap_after_keep_freed_memory():
  try:
    import ctypes
    ctypes.CDLL(None).gnu_get_libc_version
  except AttributeError:
    pytest.skip("not glibc: keep_freed_memory does nothing here")
  out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
  # 64 MiB: its own mapping by default, from the heap after the call; above KEEP_BELOW: mapped still.
  assert out == ["1", "True", "0", "1"], out
