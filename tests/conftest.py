"""Test setup: 8 host CPU devices (set before JAX is imported) so pmap and mesh
sharding run for real, and paths to the shared real data."""
import os
import pathlib

# Tests check numbers, not speed: XLA's CPU backend optimisations off make compiles ~4x faster.
# LMJAX_TEST_ON_DEVICE=1 (lmjax/bench/accelerator.sh) runs them on the GPU/TPU JAX finds instead.
ON_DEVICE = os.environ.get("LMJAX_TEST_ON_DEVICE") == "1"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           + ("" if ON_DEVICE else " --xla_backend_optimization_level=0")).strip()
if not ON_DEVICE:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  if not SHARED_DATA.is_dir():
    pytest.fail(f"shared data not found at {SHARED_DATA} (the repo's ../shared/data); CI always has it")
  return SHARED_DATA
