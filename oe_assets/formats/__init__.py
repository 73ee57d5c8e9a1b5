"""Other projects' file formats: the official implementation's output files, exported from and
imported into the artifact store (:mod:`.official`).  No Dagster import."""
