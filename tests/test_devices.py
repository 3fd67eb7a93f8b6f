"""Batch sizes for a device: the CPU default, and the memory probe under a simulated memory limit."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lstm_adv import devices
from lstm_adv.attacks import L1Attack, L1Settings, PgdAttack, PgdSettings
from lstm_adv.domain.errors import DeviceMemoryError
from tests.attack_models import TinyLSTM

CPU = torch.device("cpu")


class FakeMemory:
    """A device that holds batches of at most ``capacity`` samples: larger ones raise OutOfMemoryError."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tried: list[int] = []
        self.raised: set[int] = set()

    def run(self, size: int) -> None:
        """Allocate a batch of ``size`` samples."""
        self.tried.append(size)
        if size > self.capacity:
            self.raised.add(size)
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: a batch of {size}")

    def fits(self, size: int) -> bool:
        """The same as a ``try_batch``."""
        try:
            self.run(size)
        except torch.cuda.OutOfMemoryError:
            return False
        return True


@pytest.fixture(autouse=True)
def _fresh_probes() -> None:
    devices.forget_probes()


@given(capacity=st.integers(1, 5000), limit=st.integers(1, 6000), start=st.integers(1, 700))
def test_largest_batch_is_the_largest_size_that_fits_and_never_one_that_raised(
    capacity: int, limit: int, start: int
) -> None:
    """Under a simulated memory limit the search returns the largest size ≤ limit that fits, and only
    tries sizes up to the limit."""
    memory = FakeMemory(capacity)
    size = devices.largest_batch(memory.fits, start=start, limit=limit)
    assert size == min(capacity, limit)
    assert size not in memory.raised
    assert max(memory.tried) <= limit


@given(capacity=st.integers(1, 60_000), tolerance=st.sampled_from([1 / 16, 1 / 4]))
def test_a_tolerance_stops_early_below_the_largest_size_but_never_above(capacity: int, tolerance: float) -> None:
    """With a relative tolerance the answer fits and lies within tolerance · answer (at least 1) of the largest."""
    memory = FakeMemory(capacity)
    size = devices.largest_batch(memory.fits, start=1024, limit=devices.MAX_BATCH_SIZE, tolerance=tolerance)
    assert 1 <= size <= capacity
    assert capacity - size <= max(1, tolerance * size)


def test_the_probe_catches_out_of_memory_errors_and_returns_a_size_that_ran() -> None:
    """probe_batch_size turns OutOfMemoryError into "does not fit" and answers with a size that ran."""
    memory = FakeMemory(3000)
    size = devices.probe_batch_size("work", memory.run, CPU, limit=10_000, tolerance=0.0)
    assert size == 3000
    assert memory.raised
    assert size not in memory.raised


def test_the_probe_runs_once_per_process_and_a_larger_limit_continues_from_what_it_learned() -> None:
    """A second probe of the same work asks nothing; a larger limit only tries sizes above the one that fitted."""
    memory = FakeMemory(100_000)
    assert devices.probe_batch_size("work", memory.run, CPU, limit=2048) == 2048
    assert memory.tried == [1024, 2048]
    assert devices.probe_batch_size("work", memory.run, CPU, limit=512) == 512
    assert devices.probe_batch_size("work", memory.run, CPU, limit=2048) == 2048
    assert memory.tried == [1024, 2048]
    assert devices.probe_batch_size("work", memory.run, CPU, limit=8192) == 8192
    assert memory.tried == [1024, 2048, 4096, 8192]
    assert devices.probe_batch_size("other work", memory.run, CPU, limit=1024) == 1024
    assert memory.tried[-1] == 1024


def test_work_that_fits_in_no_batch_is_a_clear_error() -> None:
    """When not even one sample fits, the probe says so and what to do."""
    memory = FakeMemory(0)
    with pytest.raises(DeviceMemoryError) as info:
        devices.probe_batch_size("work", memory.run, CPU, limit=64)
    assert str(info.value) == (
        "not even a batch of 1 sample fits in 80% of the free memory of cpu; "
        "free memory on the device (other processes) or use --device cpu"
    )
    assert isinstance(info.value, MemoryError)


def test_auto_on_a_cpu_is_the_default_without_probing() -> None:
    """Off CUDA "auto" is CPU_BATCH_SIZE (at most the limit) and runs nothing."""
    memory = FakeMemory(1)
    assert devices.auto_batch_size("work", memory.run, CPU) == devices.CPU_BATCH_SIZE == 256
    assert devices.auto_batch_size("work", memory.run, CPU, limit=10) == 10
    assert memory.tried == []


@pytest.mark.parametrize(
    "make",
    [
        lambda model: L1Attack(model, L1Settings(method="adam", max_iterations=50, search_steps=3)),
        lambda model: PgdAttack(model, PgdSettings(eps=0.1, iterations=40)),
    ],
    ids=["l1", "pgd"],
)
def test_an_attack_sized_under_a_simulated_memory_limit_gets_the_largest_batch_that_ran(
    make: Callable[[torch.nn.Module], L1Attack | PgdAttack],
) -> None:
    """The attack's own memory trial (a short attack of random samples) under a simulated limit: the probe
    returns the largest size whose trial ran."""
    attack = make(TinyLSTM(hidden=4))
    ran: list[int] = []

    def limited(size: int) -> None:
        if size > 40:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        attack._memory_trial(size)
        ran.append(size)

    size = devices.probe_batch_size(attack._memory_key(), limited, CPU, start=8, limit=100, tolerance=0.0)
    assert size == 40
    assert size in ran


def test_the_memory_trial_leaves_pgd_random_starts_unchanged() -> None:
    """Sizing batches runs PGD with its own generator: the attack's starts (and so its δ) stay the same."""
    model = TinyLSTM(hidden=4)
    x, y = torch.rand(6, 48, 19), torch.randint(0, 2, (6,))
    settings = PgdSettings(eps=0.1, iterations=3, random_start=True)
    expected = PgdAttack(model, settings).perturb(x, y)
    attack = PgdAttack(model, settings)
    attack.perturb(x[:1], y[:1])  # the generator now exists
    attack = PgdAttack(model, settings)
    attack._memory_trial(5)
    assert torch.equal(attack.perturb(x, y), expected)


def test_attacks_of_other_methods_or_models_are_sized_separately() -> None:
    """The probe's key names the attack's kind, method, kernels and the model's parameter shapes."""
    small, large = TinyLSTM(hidden=4), TinyLSTM(hidden=8)
    keys = {
        L1Attack(small, L1Settings(method="ista"))._memory_key(),
        L1Attack(small, L1Settings(method="adam"))._memory_key(),
        L1Attack(large, L1Settings(method="ista"))._memory_key(),
        L1Attack(small, L1Settings(method="ista"), cudnn=False)._memory_key(),
        PgdAttack(small)._memory_key(),
    }
    assert len(keys) == 5
    assert L1Attack(small, L1Settings(method="ista"))._memory_key() in keys


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_cuda_probes_once_and_the_attack_runs_at_that_size() -> None:
    """On CUDA "auto" probes the real memory once per process; the chosen batch runs the attack."""
    model = TinyLSTM(hidden=32).cuda()
    settings = L1Settings(max_iterations=5, search_steps=1)
    attack = L1Attack(model, settings, device="cuda", batch_size="auto", max_batch_size=4096)
    assert 1 <= attack.batch_size <= 4096
    again = L1Attack(model, settings, device="cuda", batch_size="auto", max_batch_size=4096)
    assert again.batch_size == attack.batch_size
    x = torch.rand(attack.batch_size, 48, 19)
    result = attack.run(x, torch.zeros(len(x), dtype=torch.int64))
    assert result.n == len(x)
