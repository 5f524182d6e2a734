"""Ground floor: errors, the artifact store, device/dtype selection. Imports nothing of ours."""
