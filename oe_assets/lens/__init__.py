"""The math of oe_assets: plain torch / numpy, importable without Dagster."""

from .adapters import ModelAdapter, get_adapter, register_adapter
from .hooks import HookNeverFired, HookRegistry
from .second_order import SecondOrderLens, second_order_effects
from .slow_path import slow_path_contributions, slow_second_order_effects

__all__ = [
    "HookNeverFired", "HookRegistry", "ModelAdapter", "SecondOrderLens", "get_adapter",
    "register_adapter", "second_order_effects", "slow_path_contributions", "slow_second_order_effects",
]
