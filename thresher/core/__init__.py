"""Layer 0, core: what every layer shares. Errors, typed configs, Arrow schemas, the `Pool` layout,
storage, locks and provenance (`runtime`), open_clip loading (`models`), image decoding with its pixel
limit (`decode`), the private-address rules (`netsafety`), plot text (`plotting`), what `--plan`'s cost
models are written in (`cost`). Imports nothing of Thresher's above it."""

__version__ = "0.1.0"
