"""`thresher subset`: exactly N samples of a recipe's kept set, as shards or a uid file;
`export-metadata` (`export`)."""
