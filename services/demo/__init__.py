"""Parts of the demo that `harness up` runs beside the Harness (not services of the mesh)."""
