"""Device energy model and objectives.

Energy of one inference on the device: ``compute_w`` while its worker computes,
``idle_w`` while it waits, ``tx_w`` while its radio sends and ``rx_w`` while it
receives (link-busy time of each direction, overlapping the rest).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import LopInferError

__all__ = ["DeviceProfile", "DEVICE_PROFILES", "device_energy", "Objective", "score"]


@dataclass(frozen=True)
class DeviceProfile:
    """Power draw of a device in watts (defaults: a Jetson Xavier NX-class board)."""

    name: str = "jetson-xavier-nx"
    compute_w: float = 14.0
    idle_w: float = 5.0
    tx_w: float = 2.5  # radio transmit, on top of the rest
    rx_w: float = 1.5  # radio receive, on top of the rest

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


DEVICE_PROFILES = {
    "jetson-xavier-nx": DeviceProfile(),
    "jetson-orin-nano": DeviceProfile("jetson-orin-nano", compute_w=10.0, idle_w=4.0),
    "raspberry-pi-5": DeviceProfile("raspberry-pi-5", compute_w=7.0, idle_w=2.7, tx_w=1.0, rx_w=0.8),
    "phone": DeviceProfile("phone", compute_w=4.0, idle_w=0.8, tx_w=1.2, rx_w=0.9),
}


def device_energy(latency_s: float, busy_s: float, up_s: float, down_s: float,
                  profile: DeviceProfile) -> float:
    """Joules the device spends on one inference."""
    idle = max(0.0, latency_s - busy_s)
    return (profile.compute_w * busy_s + profile.idle_w * idle
            + profile.tx_w * up_s + profile.rx_w * down_s)


@dataclass(frozen=True)
class Objective:
    """What a planner minimises: "latency", "energy", or energy under ``deadline_s``."""

    kind: str = "latency"
    deadline_s: float | None = None
    profile: DeviceProfile = DeviceProfile()

    @classmethod
    def parse(cls, value: str | Objective, profile: DeviceProfile | None = None) -> Objective:
        if isinstance(value, Objective):
            return value
        if value not in ("latency", "energy"):
            raise LopInferError(f"objective must be 'latency' or 'energy', not {value!r}")
        return cls(value, None, profile or DeviceProfile())


def score(objective: Objective, latency_s: float, energy_j: float) -> tuple[float, float]:
    """Sort key: smaller is better (deadline misses sort after every plan meeting it)."""
    if objective.kind == "latency":
        return (latency_s, energy_j)
    missed = objective.deadline_s is not None and latency_s > objective.deadline_s
    return (float(missed), energy_j if not missed else latency_s)
