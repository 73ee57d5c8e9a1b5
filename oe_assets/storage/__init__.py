"""The storage layout, one owner, no Dagster: where artifacts live and how they are staged and
committed atomically (:mod:`.layout`), HDF5 files with checked attributes and one handle class
(:mod:`.hdf5`), Parquet tables and HTML reports with checksums (:mod:`.tables`).  The Dagster
resource over it is :class:`oe_assets.resources.store.ArtifactStore`; the official import / export
(:mod:`oe_assets.formats.official`) and the recovery of killed runs (:mod:`oe_assets.recovery`) use
it directly."""
