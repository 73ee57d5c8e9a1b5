"""oe_assets: second-order effects of transformer neurons, as a Dagster asset graph."""

__version__ = "0.1.0"
