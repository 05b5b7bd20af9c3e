"""Jobs, batching worker, resource optimizer, monitoring and retention; calls `orfeas.pipeline` and `orfeas.store`."""
