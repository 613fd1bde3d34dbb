"""Getting a pool: URL lists in (`ingest`), `thresher download`, and adopting pools made elsewhere
(`importing`: `import-metadata`, `import-pool`)."""
