"""Jobs, batching worker, batch sizing, monitoring and retention; calls `orfeas.pipeline` and `orfeas.store`."""
