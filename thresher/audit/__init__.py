"""Layer 4, audit: `thresher audit verify|trace|explain|report|recheck` (`audit`) and the HTML report
(`report`); their `--plan` cost models (`cost`)."""
